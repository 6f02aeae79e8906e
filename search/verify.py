"""Verification: time the finalists on the device with the profiling harness, each paired
with the parent (interleaved bursts, see `profiling.timing`), over several rounds, and keep
each finalist's median. A finalist's measured latency is on the predictor's scale: its
ratio to the parent x the parent's latency when the predictor's profile was calibrated,
whatever file the timings are recorded in. So predictions, budget and measurements share
one scale, measured speedups are ratios taken side by side, and both are robust to the
machine drifting since; the raw timings and the parent's drift are kept beside them."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.profiling.dataset import ProfileWriter
from latprune.profiling.devices import Device
from latprune.profiling.run import Profiler
from latprune.profiling.timing import STEPS, stat_column
from latprune.workload import Workload

ROUNDS = 3


def measure_all(config, device: Device, workload: Workload, archs: list[Architecture], record: str | Path,
                progress=None, rounds: int = ROUNDS, baseline: dict[str, float] | None = None,
                ) -> tuple[dict[str, dict], dict]:
    """Per finalist id, its first measured row with each metric (and its raw figure and
    ratio) replaced by the median over `rounds`; and the parent's figures: `measured` on the
    scale of `baseline` (the parent's latency in the predictor's profile; by default the
    record's own first reference row), `raw` now, and `drift`. Every timing is appended to
    `record` with role 'verify' (on the record's scale, as every row there)."""
    profiler = Profiler(config, device, workload, ProfileWriter(record), keep_onnx=True)
    timings: dict[str, list[dict]] = {a.id: [] for a in archs}
    try:
        for _ in range(rounds):
            for arch in archs:
                row = profiler.measure(arch, "verify")
                if row["status"] != "ok":
                    raise LatpruneError(f"verification of {arch.describe()} failed: {row['error']}")
                profiler.writer.append(row)
                timings[arch.id].append(row)
                progress and progress(row)
    finally:
        profiler.close()
        for arch in [*archs, profiler.space.largest()]:  # graphs were kept across rounds; none are kept after
            shutil.rmtree(profiler.folder(arch), ignore_errors=True)

    def median(rows: list[dict], column: str) -> float:
        return statistics.median(r[column] for r in rows)

    scale = dict(baseline or profiler.baseline)
    measured = {}
    for arch in archs:
        rows = timings[arch.id]
        merged = {**rows[0], **{c: median(rows, c) for m in STEPS for c in (stat_column(m, "raw_ms"),
                                                                              stat_column(m, "ratio"))}}
        for m in STEPS:
            merged[m] = merged[stat_column(m, "ratio")] * scale[m]
        merged["e2e_ms"] = workload.e2e_ms(merged["prefill_ms"], merged["decode_ms"])
        measured[arch.id] = merged
    every = [r for rows in timings.values() for r in rows]
    parent = {"measured": scale, "raw": {}, "drift": {}}
    parent["measured"]["e2e_ms"] = workload.e2e_ms(parent["measured"]["prefill_ms"], parent["measured"]["decode_ms"])
    for m in STEPS:
        parent["raw"][m] = median(every, stat_column(m, "reference_ms"))
        parent["drift"][m] = parent["raw"][m] / parent["measured"][m]
    return measured, parent
