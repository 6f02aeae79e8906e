"""Re-time a profile's architectures, so `latprune fit` scores against medians of repeats.

One timing per architecture is itself noisy on a shared VM (benchmarks/label_noise.py), so a
prediction "more than 10% off" may be the label's fault. This script times again, `--passes`
more times, *every* usable architecture of the profile whose latency is at least `--above` x
the parent's (not only those a predictor misses, so the medians favour no one), paired with
the parent and on the profile's own scale and workload, exactly as `latprune profile` times a sample. The
timings are appended to the profile itself as `retest` rows: predictors do not train on them,
and `fit` scores its band table against each architecture's median over all its timings.
Resumable: an architecture that already has `--passes` retest rows is not timed again.

    python benchmarks/retime_profile.py --profile benchmarks/data/cpu-160.parquet --above 0.3

`--spread S` re-times only the architectures whose timings so far disagree by more than S
(largest / smallest - 1): a tie-break by more timings, chosen by the labels alone (never by
a predictor's error), so that their median is not the mean of two that disagree.

    python benchmarks/retime_profile.py --above 0.3 --spread 0.04 --passes 3
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import statistics

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import load_config
from latprune.profiling.dataset import TRAINING_ROLES, ProfileWriter, baseline, read_profile, timed_rows, usable_rows
from latprune.profiling.devices import get_device
from latprune.profiling.run import Profiler
from latprune.workload import Workload


def plan(frame: pd.DataFrame, metric: str, above: float, passes: int, spread: float = 0.0) -> list[Architecture]:
    """The architectures still to re-time, each as often as it lacks retest rows, shuffled;
    with `spread` > 0 only those whose timings so far disagree by more than it."""
    rows, _ = usable_rows(frame)
    scale = baseline(frame, workload=rows.workload.iloc[0])
    if scale is None:
        raise LatpruneError("it has no reference row to scale re-timings by")
    chosen = rows[rows[metric] >= above * scale[metric]].drop_duplicates("arch_id")
    if spread > 0:
        values = timed_rows(frame).groupby("arch_id")[metric].agg(["min", "max"])
        disagree = values.index[values["max"] > (1 + spread) * values["min"]]
        chosen = chosen[chosen.arch_id.isin(disagree)]
    done = frame[frame.role == "retest"].arch_id.value_counts()
    todo = [Architecture.from_json(r.arch_json) for r in chosen.itertuples()
            for _ in range(passes - int(done.get(r.arch_id, 0)))]
    return [todo[i] for i in np.random.default_rng(0).permutation(len(todo))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="benchmarks/data/cpu-160.parquet")
    ap.add_argument("--devices-file", help="devices TOML naming the profile's device, if not built in")
    ap.add_argument("--metric", default="decode_ms", choices=("prefill_ms", "decode_ms"))
    ap.add_argument("--above", type=float, default=0.3, help="re-time architectures from this share of the parent up")
    ap.add_argument("--passes", type=int, default=1, help="retest rows wanted per architecture")
    ap.add_argument("--spread", type=float, default=0.0,
                    help="only architectures whose timings disagree by more than this (0: every one)")
    args = ap.parse_args()
    _common.require_files(ap, args.profile)
    if args.passes < 1 or not 0 <= args.above <= 1 or args.spread < 0:
        ap.error("--passes must be at least 1, --above between 0 and 1 and --spread at least 0")
    try:
        frame = read_profile(args.profile)
        todo = plan(frame, args.metric, args.above, args.passes, args.spread)
        first = frame[frame.role == "reference"].iloc[0]
        device, workload = get_device(first.device, args.devices_file), Workload.from_key(first.workload)
    except LatpruneError as exc:
        ap.error(f"--profile {args.profile}: {exc}")
    writer = ProfileWriter(args.profile)
    changes = []
    try:
        prof = Profiler(load_config("default"), device, workload, writer)
        if prof.key["model_hash"] != first.model_hash:
            ap.error(f"{args.profile} is not a profile of the default model")
        try:
            for arch in tqdm(todo, desc="retest", unit="timing"):
                row = prof.measure(arch, "retest")
                if row["status"] != "ok":
                    print(f"{arch.describe()}: {row['error']}", flush=True)
                    continue
                writer.append(row)
                before = frame[(frame.arch_id == arch.id) & frame.role.isin(TRAINING_ROLES)][args.metric]
                changes.append(row[args.metric] / float(before.iloc[0]) - 1)
        finally:
            prof.close()
    finally:
        writer.close()
    if changes:
        rel = np.abs(changes)
        print(f"{len(changes)} re-timings appended; against the profile's first timing: median change "
              f"{statistics.median(changes):+.1%}, {np.mean(rel <= 0.10):.1%} within ±10%, largest {max(rel):.1%}")


if __name__ == "__main__":
    main()
