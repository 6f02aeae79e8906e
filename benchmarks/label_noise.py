"""How repeatable are the profile's labels, and how close does the predictor get to that limit?

The predictor learning curve scores predictions against one measurement per architecture.
On a shared VM that measurement is itself noisy, so a share "within ±10%" below 100% may be
the labels' fault, not the predictor's. This benchmark re-measures the learning curve's
held-out architectures (same seeded split) in `--passes` further passes, each pass in a new
shuffled order, each measurement in a fresh session, paired with the parent and recorded on
the profile's own scale (its baseline), exactly as `latprune profile` records a sample. It
reports, per metric and latency band:

- test-retest: how often two measurements of the same architecture agree within ±10%
  (every pair of the 1 + passes measurements): the ceiling for any predictor scored
  against single measurements;
- the XGBoost predictor fitted on the other rows, scored against the profile's single
  measurement (what the learning curve reports) and against the median of all
  measurements (a less noisy label).
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import itertools
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import load_config
from latprune.predictors.accuracy import accuracy
from latprune.predictors.features import features
from latprune.predictors.predictor import _parent_space
from latprune.predictors.surrogates import SURROGATES
from latprune.profiling.dataset import STEPS, ProfileWriter, read_profile, usable_rows
from latprune.profiling.devices import get_device
from latprune.profiling.run import Profiler
from latprune.workload import Workload


def agree(values: list[float], tol: float = 0.10) -> list[bool]:
    """For every pair of measurements: does one lie within ±tol of the other (either way round)?"""
    return [max(a, b) / min(a, b) - 1 <= tol for a, b in itertools.combinations(values, 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="benchmarks/data/cpu-160.parquet")
    ap.add_argument("--holdout", type=int, default=30)
    ap.add_argument("--passes", type=int, default=2, help="re-measurements of every held-out architecture")
    args = ap.parse_args()
    _common.require_files(ap, args.profile)
    if args.passes < 1:
        ap.error("--passes must be at least 1")

    try:
        rows, _ = usable_rows(read_profile(args.profile))
    except LatpruneError as exc:
        ap.error(f"--profile: {exc}")
    if not 1 <= args.holdout <= len(rows) - 10:
        ap.error(f"--holdout must be between 1 and {len(rows) - 10} (the profile has {len(rows)} usable rows, and "
                 "at least 10 are needed to fit)")
    perm = np.random.default_rng(0).permutation(len(rows))  # the learning curve's split
    hold, pool = perm[: args.holdout], perm[args.holdout:]
    archs = [Architecture.from_json(j) for j in rows.iloc[hold].arch_json]
    measured: dict[str, list[list[float]]] = {m: [[float(v)] for v in rows.iloc[hold][m]] for m in STEPS}
    drifts: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "profile.parquet"
        shutil.copy(args.profile, copy)  # measured on the profile's own scale; the profile is left alone
        prof = Profiler(load_config("default"), get_device(rows.iloc[0].device), Workload(),
                        ProfileWriter(copy))
        if prof.key["model_hash"] != rows.iloc[0].model_hash or prof.baseline is None:
            ap.error(f"{args.profile} is not a profile of the default model with a reference row")
        try:
            for p in range(args.passes):
                for i in np.random.default_rng(100 + p).permutation(len(archs)):
                    row = prof.measure(archs[i], "retest")
                    assert row["status"] == "ok", row["error"]
                    drifts.append(row["drift"])
                    for m in STEPS:
                        measured[m][i].append(row[m])
                    print(p, archs[i].describe(), *(f"{m} {measured[m][i][0]:.3f} -> {row[m]:.3f}" for m in STEPS),
                          f"drift {row['drift']:.3f}", flush=True)
        finally:
            prof.close()

    space, _ = _parent_space(rows.iloc[0].parent_config_json)
    f = features(space, rows, rows.iloc[0]["dtype"])
    lines = [f"Profile: `{args.profile}`; the learning curve's {len(hold)} held-out architectures, each measured "
             f"once in the profile and {args.passes} more times here (fresh session, paired with the parent, on the "
             f"profile's scale). Reference drift from the profile's baseline during the re-measurements: "
             f"{min(drifts):.3f} to {max(drifts):.3f}. XGBoost fitted on the other {len(pool)} rows.", "",
             "| metric | latency / parent | archs | measurements agreeing within ±10% (pairs) | median spread "
             "| prediction within ±10% of the profile's measurement | ... of the median measurement "
             "| MAPE vs median measurement |", "|---|---|---|---|---|---|---|---|"]
    for m in STEPS:
        y = rows[m].to_numpy(float)
        pred = SURROGATES["xgboost"](m).fit(f.iloc[pool], y[pool]).predict_all(f.iloc[hold])
        first = np.array([v[0] for v in measured[m]])
        med = np.array([statistics.median(v) for v in measured[m]])
        rel = first / rows[m].max()
        for lo, hi in (*_common.BANDS, _common.ALL):
            sel = np.flatnonzero((rel >= lo) & (rel < hi))
            if not len(sel):
                continue
            pairs = [ok for i in sel for ok in agree(measured[m][i])]
            spreads = [_common.spread(measured[m][i]) for i in sel]
            single, robust = accuracy(first[sel], pred[sel]), accuracy(med[sel], pred[sel])
            lines.append(f"| {m} | {_common.band_label(lo, hi)} | {len(sel)} | {np.mean(pairs):.1%} ({len(pairs)}) | "
                         f"{statistics.median(spreads):.1%} | {single['within_10pct']:.1%} | "
                         f"{robust['within_10pct']:.1%} | {robust['mape']:.2%} |")
    lines += ["", "Per architecture (profile's measurement, then the re-measurements; ms):", "",
              "| architecture | prefill_ms | decode_ms |", "|---|---|---|"]
    for i, a in enumerate(archs):
        lines.append(f"| {a.describe()} | " + " | ".join(", ".join(f"{v:.3g}" for v in measured[m][i])
                                                          for m in STEPS) + " |")
    print(_common.write_markdown("label_noise", "Label noise: test-retest of profiled latencies", "\n".join(lines)))


if __name__ == "__main__":
    main()
