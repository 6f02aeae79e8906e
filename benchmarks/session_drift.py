"""Does one device keep its relative speeds from one session to the next?

Paired timing divides out how fast the host runs while a profile is recorded (each row is
its ratio to the parent x the profile's baseline), but not a change in how the host runs
large models against small ones. This fits XGBoost from scratch on every architecture of
the `--train` profiles (one session; each put on the first one's scale) and scores the
`--heldout` profiles (another session, on the same scale): a ceiling for any predictor
fitted on that session's rows, read the way `benchmarks/transfer.py` reads its held-out
sets. It also lists the architectures both sessions timed, side by side.

    python benchmarks/session_drift.py \\
        --train benchmarks/data/cpu-1t-transfer3.parquet benchmarks/data/cpu-1t-transfer2-today.parquet \\
                benchmarks/data/cpu-1t-heldout-fresh3.parquet \\
        --heldout benchmarks/data/cpu-1t-heldout-fresh2.parquet --name session_drift-1t
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json

import pandas as pd
from transfer import on_scale, scores

from latprune.models import config_from_dict
from latprune.predictors.features import features
from latprune.predictors.predictor import METRICS
from latprune.predictors.surrogates import XGBoostSurrogate
from latprune.profiling.dataset import baseline, read_profile, reference_rows
from latprune.space import SearchSpace

SHAPE = ["layers", "heads", "kv_groups", "mlp", "hidden"]


def on_one_scale(paths: list[str], scale: dict[str, float]) -> pd.DataFrame:
    """Every architecture of the profiles at `paths` (the first profile's row where several
    hold it), each metric as its median paired ratio x `scale`."""
    frames = [on_scale(read_profile(p), scale, set()) for p in paths]
    return pd.concat(frames, ignore_index=True).drop_duplicates("arch_id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", nargs="+", required=True, help="profiles of one session (the first sets the scale)")
    ap.add_argument("--heldout", nargs="+", required=True, help="profiles of the same device from another session")
    ap.add_argument("--name", default="session_drift", help="results file: benchmarks/results/NAME.md")
    args = ap.parse_args()
    _common.require_files(ap, *args.train, *args.heldout)
    first = read_profile(args.train[0])
    scale = baseline(first)
    train, held = on_one_scale(args.train, scale), on_one_scale(args.heldout, scale)
    space = SearchSpace.from_config(config_from_dict(json.loads(reference_rows(first).parent_config_json.iloc[0])))
    dtype = first.dtype.iloc[0]
    lines = [f"XGBoost from scratch on {len(train)} architectures of {', '.join(f'`{p}`' for p in args.train)}, "
             f"scored on {len(held)} of {', '.join(f'`{p}`' for p in args.heldout)} (all on the first profile's "
             "scale).", "", "| metric | within ±10% at ≥30% of parent (n) | within ±10% (all) | MAPE | Spearman ρ |",
             "|---|---|---|---|---|"]
    for m in METRICS:
        fit = XGBoostSurrogate(m).fit(features(space, train, dtype), train[m].to_numpy(float))
        pred = fit.predict_all(features(space, held, dtype))
        s = scores(held[m].to_numpy(float), pred, pred, scale[m])
        lines.append(f"| {m} | {s['within_10_above_30']:.1%} ({s['n_above_30']}) | {s['within_10pct']:.1%} | "
                     f"{s['mape']:.2%} | {s['spearman']:.3f} |")
    both = train.merge(held, on="arch_id", suffixes=("_train", "_heldout"))
    lines += ["", "Architectures timed in both sessions (decode_ms on the same scale):", "",
              "| layers | heads | kv | mlp | hidden | train session | held-out session | held-out / train |",
              "|---|---|---|---|---|---|---|---|"]
    for r in both.sort_values("decode_ms_train").itertuples():
        shape = " | ".join(str(int(getattr(r, f"{k}_train"))) for k in SHAPE)
        lines.append(f"| {shape} | {r.decode_ms_train:.2f} | {r.decode_ms_heldout:.2f} | "
                     f"{r.decode_ms_heldout / r.decode_ms_train:.3f} |")
    title = f"Session drift of one device (`{first.device.iloc[0]}`)"
    print(_common.write_markdown(args.name, title, "\n".join(lines)))


if __name__ == "__main__":
    main()
