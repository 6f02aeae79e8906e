"""Vectorised prediction throughput: architectures per second for a fitted predictor.

Needs a predictor directory (default out/predictors/cpu from 'latprune fit profiles/cpu.parquet').
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import time

import numpy as np

from latprune.predictors.features import arch_columns
from latprune.predictors.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--predictor", default="out/predictors/cpu")
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    predictor = Predictor.load(args.predictor)
    rng = np.random.default_rng(0)
    cols = arch_columns([predictor.space.sample(rng) for _ in range(args.n)])
    workload = predictor.default_workload()
    predictor.predict_columns(cols.head(100), workload)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict_columns(cols, workload)
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))
    body = (f"Predictor: `{args.predictor}` ({predictor.kind}, {len(predictor.surrogates)} metrics, "
            f"{predictor.surrogates['decode_ms'].members if predictor.kind == 'xgboost' else 1} ensemble members "
            f"each; upper bounds included).\n\n"
            f"| architectures | median of 3 runs | best | architectures / s (median) |\n|---|---|---|---|\n"
            f"| {args.n:,} | {median:.3f} s | {best:.3f} s | **{args.n / median:,.0f}** |")
    print(body)
    print(f"wrote {_common.write_markdown('predictor_speed', 'Predictor throughput', body)}")


if __name__ == "__main__":
    main()
