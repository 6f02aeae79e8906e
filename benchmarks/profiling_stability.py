"""Run-to-run stability and throughput of the profiling harness on this machine.

Five architectures (stratified, seeded) are measured three times each in one run,
round-robin (A B C D E A B C D E ...), exactly as `latprune profile` measures a sample:
paired with the parent (interleaved bursts) and recorded as ratio x the baseline. Spread of
a metric for one architecture = (max - min) / median of its three recorded values; we
report the median spread over the five, and the same for the raw (unpaired) medians of the
same timings for comparison. Throughput counts the first round (export + timing,
including the reference bursts), i.e. what a fresh `latprune profile` sample costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from latprune.models import load_config
from latprune.profiling.dataset import ProfileWriter
from latprune.profiling.devices import get_device
from latprune.profiling.run import Profiler
from latprune.profiling.sampling import profile_plan
from latprune.workload import Workload

import _common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override device timing fields, e.g. bursts=9 threads=1 (to compare policies)")
    args = ap.parse_args()
    device = get_device(args.device)
    for item in args.set:
        field, value = item.split("=", 1)
        device = dataclasses.replace(device, **{field: type(getattr(device, field))(value)})
    with tempfile.TemporaryDirectory() as tmp:
        prof = Profiler(load_config("default"), device, Workload(), ProfileWriter(Path(tmp) / "p.parquet"),
                        keep_onnx=True)
        archs = profile_plan(prof.space, args.archs, seed=7)
        runs = {a.id: [] for a in archs}
        first_round = []
        for r in range(args.rounds):
            for a in archs:
                row = prof.measure(a, "stability")
                assert row["status"] == "ok", row["error"]
                runs[a.id].append(row)
                if r == 0:
                    first_round.append(row)
                print(r, a.describe(), round(row["prefill_ms"], 2), round(row["decode_ms"], 3),
                      f"drift {row['drift']:.3f}", flush=True)
        prof.close()
        for a in [*archs, prof.space.largest()]:
            shutil.rmtree(prof.folder(a), ignore_errors=True)

    policy = {k: getattr(device, k) for k in ("warmup", "bursts", "max_bursts", "ratio_tolerance", "min_repeats",
                                              "min_time_s", "max_repeats")}
    lines = [f"Device `{args.device}` ({device.intra_threads} threads; timing {policy}), "
             f"workload {Workload().to_dict()}; "
             f"{args.archs} architectures x {args.rounds} rounds, round-robin.", "",
             "| architecture | params | prefill ms (3 runs) | spread | raw spread | decode ms (3 runs) | spread | "
             "raw spread |", "|---|---|---|---|---|---|---|---|"]
    spreads = {f"{m}{kind}": [] for m in ("prefill", "decode") for kind in ("_ms", "_raw_ms")}

    def spread(values: list[float]) -> float:
        return (max(values) - min(values)) / statistics.median(values)

    for a in archs:
        rows = runs[a.id]
        cells = []
        for metric in ("prefill", "decode"):
            values = [r[f"{metric}_ms"] for r in rows]
            for kind in ("_ms", "_raw_ms"):
                spreads[metric + kind].append(spread([r[metric + kind] for r in rows]))
            cells += [", ".join(f"{v:.2f}" for v in values), f"{spreads[metric + '_ms'][-1]:.1%}",
                      f"{spreads[metric + '_raw_ms'][-1]:.1%}"]
        lines.append(f"| {a.describe()} | {prof.space.num_params(a):,} | " + " | ".join(cells) + " |")
    drifts = [r["drift"] for rows in runs.values() for r in rows]
    export = sum(r["export_s"] for r in first_round)
    timing = sum(r["timing_s"] for r in first_round)
    total = export + timing
    lines += ["", "| metric | median run-to-run spread | target |", "|---|---|---|"]
    for metric, values in spreads.items():
        med = statistics.median(values)
        if metric.endswith("_raw_ms"):
            lines.append(f"| {metric} (raw, unpaired; for comparison) | {med:.1%} | |")
        else:
            lines.append(f"| {metric} (recorded: paired ratio x baseline) | **{med:.1%}** | "
                         f"≤3% {'met' if med <= 0.03 else 'NOT met'} |")
    lines += ["", f"Reference drift from the baseline during the run: {min(drifts):.3f} to {max(drifts):.3f} "
                  "(parent latency now / at calibration, worst metric)."]
    lines += ["", f"Throughput (first round, fresh samples): **{len(first_round) / total * 60:.1f} samples/min**; "
                  f"export {export / total:.0%} of the time, timing {timing / total:.0%} "
                  f"({total / len(first_round):.1f} s per sample)."]
    print(_common.write_markdown("profiling_stability", "Profiling stability and throughput", "\n".join(lines)))


if __name__ == "__main__":
    main()
