"""Verification: time the finalists on the device with the profiling harness, interleaved
with the parent over several rounds (P A B C P A B C ...), and keep each architecture's
median over the rounds, so measured speedups are ratios taken in one run and robust to a
passing burst of load. Exports are made once and reused across rounds."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.profiling.dataset import ProfileWriter
from latprune.profiling.devices import Device
from latprune.profiling.run import Profiler
from latprune.workload import METRICS as TIMED
from latprune.workload import Workload

ROUNDS = 3


def measure_all(config, device: Device, workload: Workload, archs: list[Architecture], record: str | Path,
                progress=None, rounds: int = ROUNDS) -> tuple[dict[str, dict], dict]:
    """Per finalist id, its first measured row with each metric replaced by the median over
    `rounds`; and the same for the parent (with its individual timings under
    'parent_timings'). Every timing is also appended to `record` with role 'verify'."""
    profiler = Profiler(config, device, workload, ProfileWriter(record), keep_onnx=True)
    parent = profiler.space.largest()
    order = [parent, *archs]
    timings: dict[str, list[dict]] = {a.id: [] for a in order}
    try:
        for _ in range(rounds):
            for arch in order:
                row = profiler.measure(arch, "verify")
                if row["status"] != "ok":
                    raise LatpruneError(f"verification of {arch.describe()} failed: {row['error']}")
                profiler.writer.append(row)
                timings[arch.id].append(row)
                progress and progress(row)
    finally:
        for arch in order:
            shutil.rmtree(profiler.onnx_root / f"{arch.id}-{device.dtype}", ignore_errors=True)

    def merged(arch: Architecture) -> dict:
        rows = timings[arch.id]
        return {**rows[0], **{m: statistics.median(r[m] for r in rows) for m in TIMED}}

    parent_row = {**merged(parent), "parent_timings": [{m: r[m] for m in TIMED} for r in timings[parent.id]]}
    return {a.id: merged(a) for a in archs}, parent_row
