"""Predictor accuracy against the number of training samples, on held-out architectures.

A fixed, seeded set of profiled architectures is held out; each surrogate kind is fitted on
growing random subsets of the rest (3 draws each) and scored on the held-out set.
Kinds: XGBoost on the roofline residual (latprune's default), the roofline alone, and a
small torch MLP ensemble.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latprune.predictors.accuracy import accuracy  # noqa: E402
from latprune.predictors.features import features  # noqa: E402
from latprune.predictors.predictor import _parent_space, _split_folds  # noqa: E402
from latprune.predictors.surrogates import SURROGATES  # noqa: E402
from latprune.profiling.dataset import (
    read_profile,  # noqa: E402
    usable_rows,  # noqa: E402
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="benchmarks/data/cpu-160.parquet")
    ap.add_argument("--holdout", type=int, default=30)
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()
    _common.require_files(ap, args.profile)

    rows, counts = usable_rows(read_profile(args.profile))
    space, _ = _parent_space(rows.iloc[0].parent_config_json)
    f = features(space, rows, rows.iloc[0]["dtype"])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rows))
    hold, pool = perm[: args.holdout], perm[args.holdout:]
    sizes = [s for s in (10, 20, 40, 80, 120) if s < len(pool)] + [len(pool)]
    kinds = list(SURROGATES)
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for metric in ("prefill_ms", "decode_ms"):
        y = rows[metric].to_numpy(float)
        for kind in kinds:
            for size in sizes:
                scores = []
                for draw in range(args.draws if size < len(pool) else 1):
                    train = np.random.default_rng(draw).choice(pool, size, replace=False)
                    model = SURROGATES[kind](metric).fit(f.iloc[train], y[train])
                    scores.append(accuracy(y[hold], model.predict_all(f.iloc[hold])))
                results[(metric, kind, size)] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
                print(metric, kind, size, results[(metric, kind, size)], flush=True)

    lines = [f"Profile: `{args.profile}` ({counts['used']} usable rows; {counts['failed']} failed and "
             f"{counts['drift_flagged']} drift-flagged excluded). Held-out: {len(hold)} architectures never used "
             f"for training. Scores are means over {args.draws} random training subsets (1 for 'all').", ""]
    lines += ["| metric | model | train rows | within ±5% | within ±10% | MAPE | Spearman ρ |",
              "|---|---|---|---|---|---|---|"]
    for (metric, kind, size), a in results.items():
        lines.append(f"| {metric} | {kind} | {size} | {a['within_5pct']:.1%} | {a['within_10pct']:.1%} | "
                     f"{a['mape']:.2%} | {a['spearman']:.3f} |")
    lines += ["", "Where the errors are: 5-fold cross-validated XGBoost predictions over all usable rows, by the "
                  "architecture's measured latency relative to the parent's.", "",
              "| metric | latency / parent | rows | within ±10% | MAPE |", "|---|---|---|---|---|"]
    for metric in ("prefill_ms", "decode_ms"):
        y = rows[metric].to_numpy(float)
        oof = np.empty(len(y))
        for fold in _split_folds(len(y), 5, np.random.default_rng(1)):
            rest = np.setdiff1d(np.arange(len(y)), fold)
            oof[fold] = SURROGATES["xgboost"](metric).fit(f.iloc[rest], y[rest]).predict_all(f.iloc[fold])
        err = np.abs(oof / y - 1)
        rel = y / y.max()
        for lo, hi in (*_common.BANDS, _common.ALL):
            m = (rel >= lo) & (rel < hi)
            if m.any():
                lines.append(f"| {metric} | {_common.band_label(lo, hi)} | {int(m.sum())} | "
                             f"{(err[m] <= 0.1).mean():.1%} | {err[m].mean():.2%} |")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("prefill_ms", "decode_ms")):
        for kind in kinds:
            ax.plot(sizes, [100 * results[(metric, kind, s)]["within_10pct"] for s in sizes], "o-", label=kind)
        ax.set(title=f"{metric}: held-out within ±10%", xlabel="training architectures", ylabel="% of held-out",
               ylim=(0, 102))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _common.RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(_common.RESULTS / "predictor_learning_curve.png", dpi=110)
    lines += ["", "![learning curve](predictor_learning_curve.png)"]
    print(_common.write_markdown("predictor_learning_curve", "Predictor learning curve", "\n".join(lines)))


if __name__ == "__main__":
    main()
