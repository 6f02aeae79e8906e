"""How much does one k-fold split move a predictor's accuracy? `latprune fit` scores one
seeded split; this fits the same profile with `--seeds` seeds (each its own held-out split
and fold assignment, and its own boosting seeds) and reports the distribution of the band
table's figures (5-fold CV, against each architecture's median timing), per metric and band.

    python benchmarks/cv_splits.py --profile benchmarks/data/cpu-160.parquet --seeds 20
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse

import numpy as np
from tqdm.auto import tqdm

from latprune.predictors.predictor import Predictor
from latprune.profiling.dataset import read_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="benchmarks/data/cpu-160.parquet")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    _common.require_files(ap, args.profile)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2")
    frame = read_profile(args.profile)
    within: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for seed in tqdm(range(args.seeds), desc="fits", unit="seed"):
        bands = Predictor.fit(frame, seed=seed).meta["accuracy_by_band"]
        for metric, table in bands.items():
            for band, acc in table.items():
                within.setdefault((metric, band), []).append(acc["within_10pct"])
                counts[(metric, band)] = acc["n"]
    lines = [f"`latprune fit` on `{args.profile}` with seeds 0-{args.seeds - 1}: each seed its own held-out split, "
             "fold assignment and boosting seeds. Share of architectures within ±10% (5-fold CV, against each "
             "architecture's median timing); n is the CV rows in the band (it varies by a row or two with the "
             "held-out split).", "",
             "| metric | latency / parent's | n | seed 0 | mean | min | max | seeds at ≥99% |",
             "|---|---|---|---|---|---|---|---|"]
    for (metric, band), values in within.items():
        v = np.array(values)
        lines.append(f"| {metric} | {band} | {counts[(metric, band)]} | {v[0]:.1%} | {v.mean():.1%} | {v.min():.1%} | "
                     f"{v.max():.1%} | {int((v >= 0.99).sum())} of {len(v)} |")
    print(_common.write_markdown("cv_splits", "Predictor accuracy across CV splits", "\n".join(lines)))


if __name__ == "__main__":
    main()
