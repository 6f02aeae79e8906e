"""A new device from few measurements: transferred predictor vs XGBoost from scratch.

The target profile is recorded with `latprune profile --plan transfer` (the rows in plan
order, so its first n rows are what a user who asked for n samples would have); the
held-out profiles are separate plans on the same device (space-filling, and one aimed at
the budgets, so that enough held-out rows lie at >= 30% of the parent). For n in --sizes,
both predictors are fitted on the target profile's first n sample rows plus the parent's
reference timing, and scored on the held-out architectures (none of them trained on):
share within ±10% at >= 30% of the parent's latency (where budgets are), overall, Spearman
rho, and how often the upper bound covers the measured latency. Held-out latencies are
put on the target profile's scale (each architecture's median paired ratio, over its sample
and re-test timings, x the target's baseline).

    python benchmarks/transfer.py --source out/predictors/cpu-160 \\
        --target benchmarks/data/cpu-1t-transfer.parquet \\
        --heldout benchmarks/data/cpu-1t-heldout.parquet benchmarks/data/cpu-1t-heldout-aimed.parquet

A workload as the target (the 2-thread CPU with a 512-token prompt; the source was fitted at
128), written to its own results file:

    python benchmarks/transfer.py --target benchmarks/data/cpu-p512-transfer.parquet \\
        --heldout benchmarks/data/cpu-p512-heldout.parquet --name transfer-prompt512
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse

import numpy as np
import pandas as pd

from latprune.predictors.accuracy import accuracy
from latprune.predictors.features import features
from latprune.predictors.predictor import METRICS, Predictor
from latprune.predictors.surrogates import XGBoostSurrogate
from latprune.predictors.transfer import load_sources
from latprune.profiling.dataset import baseline, read_profile, reference_rows, stat_column, timed_rows, usable_rows


def on_scale(heldout: pd.DataFrame, scale: dict[str, float], exclude: set[str]) -> pd.DataFrame:
    """Held-out sample rows not in `exclude`, each metric as its architecture's median paired
    ratio (over its sample and re-test timings, as `fit` labels its rows) x `scale`."""
    rows, _ = usable_rows(heldout)
    rows = rows[~rows.arch_id.isin(exclude)].drop_duplicates("arch_id").copy()
    medians = timed_rows(heldout).groupby("arch_id")[[stat_column(m, "ratio") for m in METRICS]].median()
    for m in METRICS:
        rows[m] = rows.arch_id.map(medians[stat_column(m, "ratio")]) * scale[m]
    return rows


def scores(actual: np.ndarray, median: np.ndarray, upper: np.ndarray, parent_ms: float) -> dict[str, float]:
    big = actual >= 0.3 * parent_ms
    overall = {k: v for k, v in accuracy(actual, median).items() if k != "n"}
    return {"within_10_above_30": accuracy(actual[big], median[big])["within_10pct"], "n_above_30": int(big.sum()),
            **overall, "upper_covers": float(np.mean(actual <= upper))}


def evaluate(source, target: pd.DataFrame, heldout: pd.DataFrame, sizes: list[int]) -> list[dict]:
    """One row per (metric, method, n)."""
    scale = baseline(target)
    out = []
    for n in sizes:
        train = _common.first_rows(target, n)
        test = on_scale(heldout, scale, set(train.arch_id))
        transferred = Predictor.fit(train, "transfer", sources=source)
        space = transferred.space
        f_train, f_test = features(space, train, transferred.dtype), features(space, test, transferred.dtype)
        for m in METRICS:
            y = test[m].to_numpy(float)
            median, upper = transferred.surrogates[m].predict(f_test)
            out.append({"metric": m, "method": "transfer", "n": n, **scores(y, median, upper, scale[m])})
            train_y = train[m].to_numpy(float)
            scratch = XGBoostSurrogate(m).fit(f_train, train_y)
            median, upper = scratch.predict(f_test)
            out.append({"metric": m, "method": "XGBoost from scratch", "n": n, **scores(y, median, upper, scale[m])})
            print(out[-2], out[-1], sep="\n", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", nargs="+", default=["out/predictors/cpu-160"])
    ap.add_argument("--target", default="benchmarks/data/cpu-1t-transfer.parquet")
    ap.add_argument("--heldout", nargs="+", default=["benchmarks/data/cpu-1t-heldout.parquet"],
                    help="profiles of the target device never trained on (concatenated)")
    ap.add_argument("--sizes", default="5,10,20,40")
    ap.add_argument("--name", default="transfer", help="results file: benchmarks/results/NAME.md and NAME.png")
    args = ap.parse_args()
    _common.require_files(ap, args.target, *args.heldout)
    source = load_sources(args.source)
    target = read_profile(args.target)
    heldout = pd.concat([read_profile(p) for p in args.heldout], ignore_index=True)
    available = len(usable_rows(target)[0])
    sizes = [n for n in map(int, args.sizes.split(",")) if n <= available]
    rows = evaluate(source, target, heldout, sizes)
    write_results(pd.DataFrame(rows), args, target, heldout)


def write_results(table: pd.DataFrame, args, target: pd.DataFrame, heldout: pd.DataFrame) -> None:
    device = target.device.iloc[0]
    parent = reference_rows(target).iloc[0]
    lines = [f"Target device `{device}` (workload prompt {int(parent.prompt)}), source predictor(s) "
             f"{', '.join(f'`{s}`' for s in args.source)}. Training rows: the first n of `{args.target}` "
             f"(profiled with `--plan transfer`) plus the parent's reference timing; held out: "
             f"{len(on_scale(heldout, baseline(target), set()))} architectures of "
             f"{' and '.join(f'`{p}`' for p in args.heldout)} (`--plan spread`, with or without `--aim`), minus any "
             "trained on.", "",
             "| metric | method | n | within ±10% at ≥30% of parent (n) | within ±10% (all) | MAPE | Spearman ρ | "
             "upper bound covers |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.metric} | {r.method} | {r.n} | {r.within_10_above_30:.1%} ({r.n_above_30}) | "
                     f"{r.within_10pct:.1%} | {r.mape:.2%} | {r.spearman:.3f} | {r.upper_covers:.0%} |")
    lines += ["", f"![learning curves]({args.name}.png)"]
    plot(table, args.name)
    title = f"Transfer: a new device or workload from few measurements (`{device}`, prompt {int(parent.prompt)})"
    print(_common.write_markdown(args.name, title, "\n".join(lines)))


def plot(table: pd.DataFrame, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for method, group in table[table.metric == metric].groupby("method"):
            ax.plot(group.n, group.within_10_above_30, marker="o", label=method)
        ax.axhline(0.95, color="grey", linestyle="--", label="95% bar")
        ax.set_xscale("log")
        ax.set_xticks(sorted(table.n.unique()), [str(n) for n in sorted(table.n.unique())])
        ax.set_xlabel("target rows")
        ax.set_title(f"{metric}: within ±10% at ≥30% of the parent")
        ax.legend()
    fig.tight_layout()
    fig.savefig(_common.RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
