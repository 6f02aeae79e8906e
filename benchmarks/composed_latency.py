"""Per-layer latency from uniform profiles: composed predictions vs measured heterogeneous models.

The predictor is fitted on uniform architectures only; the heterogeneous models were profiled
on the same device with `latprune profile --plan per-layer` (role `per-layer`, never trained
on). Composition (`Predictor.predict`): the share-weighted mean of the uniform models shaped
like each layer. The naive alternative it is compared with: the uniform model with every
layer at the architecture's mean widths (rounded to legal values). Measured latencies are
put on the predictor's scale (each row's paired ratio x the predictor's baseline).

    latprune profile --device cpu --plan per-layer --samples 20 --out benchmarks/data/cpu-per-layer.parquet
    python benchmarks/composed_latency.py --predictor out/predictors/cpu-160 --first-rows 40 \\
        --profile benchmarks/data/cpu-per-layer.parquet
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse

import numpy as np
import pandas as pd

from latprune.architecture import Architecture
from latprune.predictors.accuracy import accuracy_by_band, format_band_table
from latprune.predictors.predictor import METRICS, Predictor
from latprune.profiling.dataset import HETERO_ROLE, read_profile, stat_column


def mean_width(space, arch: Architecture) -> Architecture:
    """The uniform architecture nearest to `arch`'s mean widths."""
    kv = int(round(np.mean(arch.kv_groups)))
    q = min(space.max_q_per_kv, max(1, int(round(np.mean(arch.heads) / kv))))
    mlp = min(space.choices()["mlp"], key=lambda m: abs(m - np.mean(arch.mlp)))
    return Architecture.uniform(list(arch.layers), kv * q, kv, mlp, arch.hidden)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", nargs="+", default=["out/predictors/cpu-160"],
                    help="one or more predictors of the device, each scored on its own")
    ap.add_argument("--profile", default="benchmarks/data/cpu-per-layer.parquet")
    ap.add_argument("--first-rows", type=int, nargs="*", default=[40],
                    help="also score predictors fitted here on the first N sample rows of --uniform-profile (what "
                         "a profile of N samples costs)")
    ap.add_argument("--uniform-profile", default="benchmarks/data/cpu-160.parquet")
    args = ap.parse_args()
    _common.require_files(ap, args.profile, args.uniform_profile)
    frame = read_profile(args.profile)
    rows = frame[(frame.role == HETERO_ROLE) & (frame.status == "ok") & ~frame.drift_flag.astype(bool)]
    archs = [Architecture.from_json(j) for j in rows.arch_json]
    lines = [f"{len(rows)} heterogeneous architectures of `{args.profile}` measured on device "
             f"`{rows.device.iloc[0]}`, against predictors fitted on uniform architectures only.", ""]
    for folder in args.predictor:
        lines += score(Predictor.load(folder), folder, rows, archs)
    uniform = read_profile(args.uniform_profile)
    for n in args.first_rows:
        fitted = Predictor.fit(_common.first_rows(uniform, n), "xgboost")
        lines += score(fitted, f"the first {n} samples of {args.uniform_profile}", rows, archs)
    print(_common.write_markdown("composed_latency", "Per-layer latency composed from uniform predictions",
                                 "\n".join(lines)))


def score(predictor: Predictor, folder: str, rows: pd.DataFrame, archs: list[Architecture]) -> list[str]:
    """Band tables of the composed and the mean-width predictions of `predictor`."""
    workload = predictor.default_workload()
    scale = predictor.baseline(workload)
    trained = predictor.meta.get("rows", {}).get("used", "?")
    lines = [f"## Predictor: {folder} ({trained} profile rows)", ""]
    composed = predictor.predict(archs, workload)
    naive = predictor.predict([mean_width(predictor.space, a) for a in archs], workload)
    for name, pred in (("composed", composed), ("mean widths", naive)):
        table = {m: accuracy_by_band((rows[stat_column(m, "ratio")] * scale[m]).to_numpy(), pred[m].to_numpy(),
                                     scale[m]) for m in METRICS}
        lines += [f"### {name}", "", format_band_table(table, f"{name}, against the measured heterogeneous models"),
                  ""]
    return lines


if __name__ == "__main__":
    main()
