"""Budget-directed refinement: measure on the device where the decision is made.

The search rounds leave a pool of evaluated candidates. Those whose predicted median lies in
`BAND` of the limit (the budget less the user's margin) are the ones worth a measurement:
their predicted interval straddles the budget, and they would spend it. The best of them
(calibration perplexity) is timed on the device, paired with the parent; the row joins the
profile, the predictor is refitted on it, and the next candidate is chosen with the refitted
predictor. It stops once `opts.finalists` candidates have *landed* (measured within `BAND`
of the limit; its top leaves headroom for verification's noise), when no candidate is left
in the band, or when the allowance (`opts.device_measurements`) is spent.

The device and the refit are passed in as functions, so the logic is the same for every
device and testable with a scripted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from latprune.architecture import Architecture
from latprune.predictors.predictor import Predictor
from latprune.workload import Workload

from .options import SearchOptions

BAND = (0.95, 0.99)  # predicted median / limit worth a measurement; measured / limit that has landed


@dataclass
class Refinement:
    """Measured latency (`metric`, on the predictor's scale) per architecture id, in the
    order measured, and the predictor refitted on those rows."""

    measured: dict[str, float] = field(default_factory=dict)
    predictor: Predictor | None = None
    refits: int = 0

    def landed(self, limit: float) -> list[str]:
        """Ids measured within BAND of `limit`, in the order measured."""
        return [i for i, ms in self.measured.items() if BAND[0] * limit <= ms <= BAND[1] * limit]

    def under(self, limit: float) -> list[str]:
        """Ids measured under `limit` with BAND's headroom, in the order measured."""
        return [i for i, ms in self.measured.items() if ms <= BAND[1] * limit]


def next_candidate(pool: pd.DataFrame, predictor: Predictor, workload: Workload, opts: SearchOptions,
                   done: set[str]) -> Architecture | None:
    """The best-perplexity unmeasured candidate of `pool` whose predicted median lies in
    BAND x the limit, or None."""
    rest = pool[~pool.arch_id.isin(done)]
    if rest.empty:
        return None
    archs = [Architecture.from_json(j) for j in rest.arch_json]
    median = predictor.predict(archs, workload)[opts.metric].to_numpy()
    inside = (median >= BAND[0] * opts.limit_ms) & (median <= BAND[1] * opts.limit_ms)
    picked = rest[inside].sort_values("perplexity", kind="stable")
    return None if picked.empty else Architecture.from_json(picked.arch_json.iloc[0])


def refine(pool: pd.DataFrame, predictor: Predictor, workload: Workload, opts: SearchOptions, *,
           measure: Callable[[Architecture], float], refit: Callable[[], Predictor | None],
           on_measured: Callable[[Architecture, float], None] | None = None) -> Refinement:
    """Measure near-budget candidates of `pool` (columns arch_id, arch_json, perplexity) one
    at a time with `measure` (-> latency of `opts.metric` on the predictor's scale), refitting
    after each with `refit` (None: keep the predictor)."""
    result = Refinement(predictor=predictor)
    while len(result.measured) < opts.device_measurements:
        if len(result.landed(opts.limit_ms)) >= opts.finalists:
            break
        arch = next_candidate(pool, result.predictor, workload, opts, set(result.measured))
        if arch is None:
            break
        result.measured[arch.id] = measure(arch)
        on_measured and on_measured(arch, result.measured[arch.id])
        if (refitted := refit()) is not None:
            result.predictor, result.refits = refitted, result.refits + 1
    return result
