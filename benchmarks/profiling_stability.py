"""Run-to-run stability and throughput of the profiling harness on this machine.

Five architectures (stratified, seeded) are measured three times each, round-robin
(A B C D E A B C D E ...), exactly as `latprune profile` measures a sample: paired with the
parent (interleaved bursts) and recorded as ratio x the baseline. Spread of a metric for one
architecture = (max - min) / median of its three recorded values; an experiment's figure is
the median spread over the five, beside the same for the raw (unpaired) medians of the same
timings. A shared VM's noise changes from one quarter-hour to the next, so the whole
experiment is repeated (`--repeats`, each with a fresh profiler and baseline) and every
repeat is reported, not the best one. Throughput counts the first round of the first repeat
(export + timing, including the reference bursts), i.e. what a fresh `latprune profile`
sample costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from latprune.architecture import Architecture
from latprune.models import load_config
from latprune.profiling.dataset import ProfileWriter
from latprune.profiling.devices import Device, get_device
from latprune.profiling.run import Profiler
from latprune.profiling.sampling import profile_plan
from latprune.profiling.timing import STEPS, stat_column
from latprune.workload import Workload

import _common

TARGET = 0.03
POLICY = ("threads", "warmup", "bursts", "max_bursts", "ratio_tolerance", "min_repeats", "min_time_s", "max_repeats")


def with_overrides(ap: argparse.ArgumentParser, device: Device, items: list[str]) -> Device:
    """The device with FIELD=VALUE timing overrides applied (argparse error for a bad one)."""
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in POLICY:
            ap.error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(POLICY)}")
        try:
            device = dataclasses.replace(device, **{field: type(getattr(device, field))(value)})
        except ValueError:
            ap.error(f"--set {item!r}: {value!r} is not a valid {type(getattr(device, field)).__name__}")
    return device


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def experiment(device: Device, archs: list[Architecture], rounds: int, folder: Path) -> dict[str, list[dict]]:
    """Rows of every architecture over `rounds` round-robin rounds, with a fresh profiler."""
    prof = Profiler(load_config("default"), device, Workload(), ProfileWriter(folder / "p.parquet"), keep_onnx=True)
    runs: dict[str, list[dict]] = {a.id: [] for a in archs}
    try:
        for r in range(rounds):
            for a in archs:
                row = prof.measure(a, "stability")
                assert row["status"] == "ok", row["error"]
                runs[a.id].append(row)
                print(r, a.describe(), round(row["prefill_ms"], 2), round(row["decode_ms"], 3),
                      f"drift {row['drift']:.3f}", flush=True)
    finally:
        prof.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="independent repeats of the whole experiment")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override device timing fields, e.g. bursts=9 threads=1 (to compare policies)")
    args = ap.parse_args()
    device = with_overrides(ap, get_device(args.device), args.set)
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Profiler(load_config("default"), device, Workload(), ProfileWriter(Path(tmp) / "unused.parquet"))
        space = cache.space
        archs = profile_plan(space, args.archs, seed=7)
        try:
            for k in range(args.repeats):
                folder = Path(tmp) / str(k)
                folder.mkdir()
                repeats.append(experiment(device, archs, args.rounds, folder))
        finally:  # the graphs were kept across rounds and repeats; none are kept after
            for a in [*archs, space.largest()]:
                shutil.rmtree(cache.folder(a), ignore_errors=True)

    kinds = [(m, kind) for m in STEPS for kind in (m, stat_column(m, "raw_ms"))]
    # spreads[k][column] = per-architecture spreads in repeat k
    spreads = [{col: [spread([r[col] for r in runs[a.id]]) for a in archs] for _, col in kinds} for runs in repeats]

    policy = {k: getattr(device, k) for k in POLICY}
    lines = [f"Device `{args.device}` ({device.intra_threads} threads; timing {policy}), workload "
             f"{Workload().to_dict()}; {args.archs} architectures x {args.rounds} rounds, round-robin; the whole "
             f"experiment repeated {args.repeats} times (fresh profiler and baseline each time).", "",
             "Median run-to-run spread over the architectures, per repeat (recorded = paired ratio x baseline; "
             "raw = unpaired medians of the same timings):", "",
             "| repeat | prefill recorded | prefill raw | decode recorded | decode raw | reference drift |",
             "|---|---|---|---|---|---|"]
    for k, (runs, s) in enumerate(zip(repeats, spreads)):
        drifts = [r["drift"] for rows in runs.values() for r in rows]
        cells = [f"{statistics.median(s[col]):.1%}" for _, col in kinds]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + f" | {min(drifts):.3f} to {max(drifts):.3f} |")
    lines += ["", "Per architecture, recorded spread in each repeat:", "",
              "| architecture | params | prefill ms (first repeat) | prefill spread | decode ms (first repeat) | "
              "decode spread |", "|---|---|---|---|---|---|"]
    for i, a in enumerate(archs):
        cells = []
        for m in STEPS:
            cells += [", ".join(f"{r[m]:.2f}" for r in repeats[0][a.id]), ", ".join(f"{s[m][i]:.1%}" for s in spreads)]
        lines.append(f"| {a.describe()} | {space.num_params(a):,} | " + " | ".join(cells) + " |")
    lines += ["", f"| metric | median over repeats of the median spread | repeats with ≤{TARGET:.0%} |",
              "|---|---|---|"]
    for m in STEPS:
        per_repeat = [statistics.median(s[m]) for s in spreads]
        met = sum(v <= TARGET for v in per_repeat)
        lines.append(f"| {m} (recorded) | **{statistics.median(per_repeat):.1%}** (range {min(per_repeat):.1%}-"
                     f"{max(per_repeat):.1%}) | {met} of {len(per_repeat)} |")
    first_round = [rows[0] for rows in repeats[0].values()]
    export = sum(r["export_s"] for r in first_round)
    timing = sum(r["timing_s"] for r in first_round)
    total = export + timing
    lines += ["", f"Throughput (first round of the first repeat, fresh samples): **{len(first_round) / total * 60:.1f} "
                  f"samples/min**; export {export / total:.0%} of the time, timing {timing / total:.0%} "
                  f"({total / len(first_round):.1f} s per sample)."]
    print(_common.write_markdown("profiling_stability", "Profiling stability and throughput", "\n".join(lines)))


if __name__ == "__main__":
    main()
