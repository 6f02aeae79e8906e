"""Run-to-run stability and throughput of the profiling harness on this machine.

Five architectures (stratified, seeded) are measured three times each in one run,
round-robin (A B C D E A B C D E ...), so that slow drift of the machine hits every
architecture alike. Spread of a metric for one architecture = (max - min) / median of its
three medians; we report the median spread over the five. Throughput counts the first
round (export + timing), i.e. what a fresh `latprune profile` sample costs.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    device = get_device(args.device)
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
                print(r, a.describe(), round(row["prefill_ms"], 2), round(row["decode_ms"], 3), flush=True)
        for a in archs:
            shutil.rmtree(prof.onnx_root / f"{a.id}-{device.dtype}", ignore_errors=True)

    lines = [f"Device `{args.device}` ({device.intra_threads} threads), workload {Workload().to_dict()}; "
             f"{args.archs} architectures x {args.rounds} rounds, round-robin.", "",
             "| architecture | params | prefill ms (3 runs) | prefill spread | decode ms (3 runs) | decode spread |",
             "|---|---|---|---|---|---|"]
    spreads = {"prefill_ms": [], "decode_ms": []}
    for a in archs:
        rows = runs[a.id]
        cells = []
        for metric in ("prefill_ms", "decode_ms"):
            values = [r[metric] for r in rows]
            spread = (max(values) - min(values)) / statistics.median(values)
            spreads[metric].append(spread)
            cells += [", ".join(f"{v:.2f}" for v in values), f"{spread:.1%}"]
        lines.append(f"| {a.describe()} | {prof.space.num_params(a):,} | " + " | ".join(cells) + " |")
    export = sum(r["export_s"] for r in first_round)
    timing = sum(r["timing_s"] for r in first_round)
    total = export + timing
    lines += ["", "| metric | median run-to-run spread | target |", "|---|---|---|"]
    for metric, values in spreads.items():
        med = statistics.median(values)
        lines.append(f"| {metric} | **{med:.1%}** | ≤3% {'met' if med <= 0.03 else 'NOT met'} |")
    lines += ["", f"Throughput (first round, fresh samples): **{len(first_round) / total * 60:.1f} samples/min**; "
                  f"export {export / total:.0%} of the time, timing {timing / total:.0%} "
                  f"({total / len(first_round):.1f} s per sample)."]
    print(_common.write_markdown("profiling_stability", "Profiling stability and throughput", "\n".join(lines)))


if __name__ == "__main__":
    main()
