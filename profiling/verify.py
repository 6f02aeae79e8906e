"""Verification: time chosen architectures on the device with the profiling harness, each
paired with the parent (interleaved bursts, see `timing`), over several rounds, and keep each
one's median. A measured latency is on the predictor's scale: its ratio to the parent x the
parent's latency when the predictor's profile was calibrated, whatever file the timings are
recorded in. So predictions, budget and measurements share one scale, measured speedups are
ratios taken side by side, and both are robust to the machine drifting since; the raw
timings and the parent's drift are kept beside them.

A `DeviceSession` holds one profiler (the parent's graph exported and loaded once) and the
record's lock for a whole search: its refinement timings and its verification."""

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


class DeviceSession:
    """Paired timings of architectures of one parent on one device, each appended to
    `record` (a profile file, locked while the session is open; one calibrated on another
    machine is refused unless `check_host` is off). `scale`: the parent's latency per step on
    the predictor's scale (`baseline`), by default the record's own."""

    def __init__(self, config, device: Device, workload: Workload, record: str | Path, *,
                 baseline: dict[str, float] | None = None, check_host: bool = True):
        self.workload = workload
        self.writer = ProfileWriter(record)
        try:
            self.profiler = Profiler(config, device, workload, self.writer, discard_graphs=False, check_host=check_host)
        except BaseException:
            self.writer.close()
            raise
        self._baseline = baseline

    @property
    def scale(self) -> dict[str, float]:
        if self._baseline is None and self.profiler.baseline is None:
            self.profiler.reference()
        return dict(self._baseline or self.profiler.baseline)

    def time(self, arch: Architecture, role: str) -> dict[str, Any]:
        """One paired timing of `arch`, recorded with `role`; raises when it fails."""
        row = self.profiler.measure(arch, role)
        if row["status"] != "ok":
            raise LatpruneError(f"timing {arch.describe()} on {self.profiler.device.name} failed: {row['error']}")
        self.writer.append(row)
        return row

    def on_scale(self, row: dict[str, Any], metric: str) -> float:
        """`metric` of a timed row on the predictor's scale (ratio to the parent x scale)."""
        if metric == "e2e_ms":
            return self.workload.e2e_ms(self.on_scale(row, "prefill_ms"), self.on_scale(row, "decode_ms"))
        return row[stat_column(metric, "ratio")] * self.scale[metric]

    def close(self) -> None:
        try:
            self.profiler.close()
        finally:
            self.writer.close()

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_finalists(session: DeviceSession, archs: list[Architecture], *, progress: Callable | None = None,
                      rounds: int = ROUNDS) -> Verification:
    """Time `archs` paired with the parent over `rounds` (role 'verify'); medians on the
    session's scale."""
    timings: dict[str, list[dict]] = {a.id: [] for a in archs}
    for _ in range(rounds):
        for arch in archs:
            timings[arch.id].append(session.time(arch, "verify"))
            progress and progress(timings[arch.id][-1])

    def median(rows: list[dict], column: str) -> float:
        return statistics.median(r[column] for r in rows)

    scale, workload = session.scale, session.workload
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
