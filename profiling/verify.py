"""Verification: time chosen architectures on the device with the profiling harness, each
paired with the parent (interleaved bursts, see `timing`), over several rounds, and keep each
one's median. A measured latency is on the predictor's scale: its ratio to the parent x the
parent's latency when the predictor's profile was calibrated, whatever file the timings are
recorded in. So predictions, budget and measurements share one scale, measured speedups are
ratios taken side by side, and both are robust to the machine drifting since; the raw
timings and the parent's drift are kept beside them."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.workload import Workload

from .dataset import STEPS, ProfileWriter, stat_column
from .devices import Device
from .run import Profiler

ROUNDS = 3


@dataclass
class Verification:
    """`measured`: per architecture id, its first timed row with each metric (and its raw
    figure and ratio) replaced by the median over the rounds. `parent`: the parent's figures,
    `measured` on the predictor's scale, `raw` now, and `drift` (raw / measured)."""

    finalists: list[Architecture]
    measured: dict[str, dict[str, Any]]
    parent: dict[str, dict[str, float]]


def _timed_rounds(config, device: Device, workload: Workload, archs: list[Architecture], record: str | Path, *,
                  rounds: int, progress: Callable | None) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Every timing of every architecture (appended to `record` with role 'verify'), and
    the record's own baseline."""
    timings: dict[str, list[dict]] = {a.id: [] for a in archs}
    with ProfileWriter(record) as writer:
        profiler = Profiler(config, device, workload, writer, discard_graphs=False)  # graphs reused across rounds
        try:
            for _ in range(rounds):
                for arch in archs:
                    row = profiler.measure(arch, "verify")
                    if row["status"] != "ok":
                        raise LatpruneError(f"verification of {arch.describe()} failed: {row['error']}")
                    writer.append(row)
                    timings[arch.id].append(row)
                    progress and progress(row)
        finally:
            profiler.close()
    return timings, profiler.baseline


def measure_finalists(config, device: Device, workload: Workload, archs: list[Architecture], record: str | Path, *,
                      progress: Callable | None = None, rounds: int = ROUNDS,
                      baseline: dict[str, float] | None = None) -> Verification:
    """Time `archs` paired with the parent over `rounds`, on the scale of `baseline` (the
    parent's latency in the predictor's profile; by default the record's own)."""
    timings, own = _timed_rounds(config, device, workload, archs, record, rounds=rounds, progress=progress)

    def median(rows: list[dict], column: str) -> float:
        return statistics.median(r[column] for r in rows)

    scale = dict(baseline or own)
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
    parent: dict[str, dict[str, float]] = {"measured": scale, "raw": {}, "drift": {}}
    parent["measured"]["e2e_ms"] = workload.e2e_ms(scale["prefill_ms"], scale["decode_ms"])
    for m in STEPS:
        parent["raw"][m] = median(every, stat_column(m, "reference_ms"))
        parent["drift"][m] = parent["raw"][m] / parent["measured"][m]
    return Verification(list(archs), measured, parent)
