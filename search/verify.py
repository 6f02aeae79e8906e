"""Verification: time finalists on the device with the profiling harness, the parent before
and after them (A B ... A), so measured speedups are ratios taken in one run."""

from __future__ import annotations

from pathlib import Path

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.profiling.dataset import ProfileWriter
from latprune.profiling.devices import Device
from latprune.profiling.run import Profiler
from latprune.workload import Workload

TIMED = ("prefill_ms", "decode_ms", "e2e_ms")


def measure_all(config, device: Device, workload: Workload, archs: list[Architecture], record: str | Path,
                progress=None) -> tuple[dict[str, dict], dict]:
    """Measured rows per finalist id, and the parent's row with each metric averaged over its
    two timings. Rows are also appended to the `record` profile with role 'verify'."""
    profiler = Profiler(config, device, workload, ProfileWriter(record))

    def measure(arch: Architecture) -> dict:
        row = profiler.measure(arch, "verify")
        if row["status"] != "ok":
            raise LatpruneError(f"verification of {arch.describe()} failed: {row['error']}")
        profiler.writer.append(row)
        progress and progress(row)
        return row

    parent = profiler.space.largest()
    before = measure(parent)
    rows = {a.id: measure(a) for a in archs}
    after = measure(parent)
    merged = {**before, **{m: (before[m] + after[m]) / 2 for m in TIMED},
              "parent_timings": [{m: r[m] for m in TIMED} for r in (before, after)]}
    return rows, merged
