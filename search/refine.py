"""Budget-directed refinement: measure on the device where the decision is made.

The search rounds leave a pool of evaluated candidates. Those whose predicted median lies in
`BAND` of the limit (the budget less the user's margin) are the ones worth a measurement:
their predicted interval straddles the budget, and they would spend it (one given a short
distillation counts up to the limit: the distillation ranked it). The best of them
(`by_rank`: perplexity after a short distillation, then zero-shot) is timed on the device,
paired with the parent; the row joins the profile, the predictor is refitted on it, and the
next candidate is chosen with the refitted predictor. When no candidate is left in the band,
a band round (the search's own strategy, the predicted median held inside BAND) looks for
more; when it finds none, a round strictly between the predictions of the candidates
measured nearest under and over BAND (`bracket`; one side open when only the other was
measured) does: the depth between two measured depths of layer dropping, whose steps are
coarser than BAND, or the next one down (up) from a depth the predictor put in the band and
the device over (under) it. It stops once `opts.finalists`
candidates have *landed* (measured within `BAND` of the limit; its top leaves headroom for
verification's noise), when even those rounds find none, or when the allowance
(`opts.device_measurements`) is spent. Candidates the profile already
holds refinement timings of (an interrupted or earlier search) count as measured without
spending the allowance, so a rerun continues where it stopped.

The device and the refit are passed in as functions, so the logic is the same for every
device and testable with a scripted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.compress.ranked import WINDOW
from latprune.errors import LatpruneError
from latprune.predictors.predictor import Predictor
from latprune.profiling.dataset import HETERO_ROLE
from latprune.profiling.verify import DeviceSession
from latprune.text import calibration_windows
from latprune.workload import Workload

from .evaluate import SEARCH_WINDOWS
from .options import SearchOptions

if TYPE_CHECKING:
    from .workflow import Prepared

BAND = (0.95, 0.99)  # predicted median / limit worth a measurement; measured / limit that has landed
REACH = 1.05  # predicted median / limit up to which a round looks above a candidate measured under BAND


@dataclass
class Refinement:
    """Measured latency (`metric`, on the predictor's scale) per architecture id, in the
    order measured, and the predictor refitted on those rows."""

    measured: dict[str, float] = field(default_factory=dict)
    predictor: Predictor | None = None
    refits: int = 0
    band_rounds: int = 0  # searches in the budget band (or between measurements around it), run when needed
    pool: pd.DataFrame | None = None  # the candidates, with those the band rounds found
    reused: int = 0  # of `measured`, timed by an earlier search (rows already in the profile)

    @property
    def spent(self) -> int:
        """Device timings this refinement took."""
        return len(self.measured) - self.reused

    def landed(self, limit: float) -> list[str]:
        """Ids measured within BAND of `limit`, in the order measured."""
        return [i for i, ms in self.measured.items() if BAND[0] * limit <= ms <= BAND[1] * limit]

    def under(self, limit: float) -> list[str]:
        """Ids measured under `limit` with BAND's headroom, in the order measured."""
        return [i for i, ms in self.measured.items() if ms <= BAND[1] * limit]


def by_rank(cands: pd.DataFrame) -> pd.DataFrame:
    """Candidates best first: those given a short distillation by their perplexity after it
    (column `recovered_perplexity`, when present), then the others by zero-shot calibration
    perplexity."""
    keys = ["recovered_perplexity", "perplexity"] if "recovered_perplexity" in cands else ["perplexity"]
    return cands.sort_values(keys, kind="stable", na_position="last")


def next_candidate(pool: pd.DataFrame, predictor: Predictor, workload: Workload, opts: SearchOptions,
                   done: set[str]) -> Architecture | None:
    """The best (`by_rank`) unmeasured candidate of `pool` whose predicted median lies in
    BAND x the limit, or, for one given a short distillation (`recovered_perplexity`), from
    BAND[0] x the limit up to it (its distillation ranked it; the device tells whether it
    fits), or None."""
    rest = pool[~pool.arch_id.isin(done)]
    if rest.empty:
        return None
    archs = [Architecture.from_json(j) for j in rest.arch_json]
    median = predictor.predict(archs, workload)[opts.metric].to_numpy()
    tried = rest.get("recovered_perplexity", pd.Series(np.nan, index=rest.index)).notna().to_numpy()
    inside = (median >= BAND[0] * opts.limit_ms) & (median <= np.where(tried, 1.0, BAND[1]) * opts.limit_ms)
    picked = by_rank(rest[inside])
    return None if picked.empty else Architecture.from_json(picked.arch_json.iloc[0])


def refine(pool: pd.DataFrame, predictor: Predictor, workload: Workload, opts: SearchOptions, *,
           measure: Callable[[Architecture], float], refit: Callable[[], Predictor | None],
           search_band: Callable[[Predictor, tuple[float, float]], pd.DataFrame] | None = None,
           known: dict[str, float] | None = None,
           on_measured: Callable[[Architecture, float], None] | None = None) -> Refinement:
    """Measure near-budget candidates of `pool` (columns arch_id, arch_json, perplexity) one
    at a time with `measure` (-> latency of `opts.metric` on the predictor's scale), refitting
    after each with `refit` (None: keep the predictor). When the pool has no candidate left
    in the band, `search_band(predictor, BAND)` searches there (new candidates, same
    columns); when even that finds none, `search_band` searches strictly between the
    predictions of the candidates measured nearest under and over the band (`bracket`), so
    a coarse family (layer dropping) still gets its member nearest the budget measured.
    `known`: latencies already measured (id -> ms), taken as they are and refitted on first."""
    result = Refinement(measured=dict(known or {}), predictor=predictor, reused=len(known or {}), pool=pool)
    if result.reused and (refitted := refit()) is not None:
        result.predictor, result.refits = refitted, 1
    while result.spent < opts.device_measurements:
        if len(result.landed(opts.limit_ms)) >= opts.finalists:
            break
        arch = next_candidate(result.pool, result.predictor, workload, opts, set(result.measured))
        if arch is None and search_band is not None:
            arch = _search_more(result, search_band, BAND)
        if arch is None and search_band is not None and (between := bracket(result, workload, opts)) is not None:
            arch = _search_more(result, search_band, between)
        if arch is None:
            break
        result.measured[arch.id] = measure(arch)
        on_measured and on_measured(arch, result.measured[arch.id])
        if (refitted := refit()) is not None:
            result.predictor, result.refits = refitted, result.refits + 1
    return result


def bracket(result: Refinement, workload: Workload, opts: SearchOptions) -> tuple[float, float] | None:
    """Predicted latency / limit strictly between the measured candidate nearest under BAND
    and the one nearest over it; with none measured under, from 0 (the next one down from a
    candidate the predictor put in the band and the device over it); with none measured
    over, up to REACH (the next one up, where the predictor is high near the budget; with
    nothing measured at all, the candidate nearest the budget, e.g. a depth predicted at
    99.5% when the band ends at 99%). None when the refitted predictor orders the two ends
    the other way."""
    limit = opts.limit_ms
    under = {i: ms for i, ms in result.measured.items() if ms < BAND[0] * limit}
    over = {i: ms for i, ms in result.measured.items() if ms > BAND[1] * limit}
    by_id = result.pool.set_index("arch_id").arch_json

    def predicted(measured: dict[str, float], pick) -> float:
        arch = Architecture.from_json(by_id[pick(measured, key=measured.get)])
        return float(result.predictor.predict([arch], workload)[opts.metric].iloc[0]) / limit

    lo = predicted(under, max) if under else 0.0
    hi = predicted(over, min) if over else REACH
    return (lo * (1 + 1e-9), hi * (1 - 1e-9)) if lo < hi else None


def _search_more(result: Refinement, search_band, band: tuple[float, float]) -> Architecture | None:
    """A band round between `band` x the limit (predicted median): its candidates join the
    pool; the best (`by_rank`) unmeasured one found, or None."""
    found = search_band(result.predictor, band)
    result.band_rounds += 1
    if found.empty:  # e.g. layer dropping has no member in so narrow a band
        return None
    result.pool = pd.concat([result.pool, found[~found.arch_id.isin(result.pool.arch_id)]], ignore_index=True)
    fresh = by_rank(found[~found.arch_id.isin(list(result.measured))])
    return None if fresh.empty else Architecture.from_json(fresh.arch_json.iloc[0])


def _refit(prep: Prepared, session: DeviceSession) -> Predictor | None:
    """The predictor refitted on the session's record (this parent and device), or None
    when that record cannot train one on the predictor's own scale."""
    frame, model_hash = session.writer.frame, prep.predictor.meta["model"]["config_hash"]
    frame = frame[(frame.device == prep.device.name) & (frame.model_hash == model_hash)]
    try:
        refitted = Predictor.fit(frame, prep.predictor.kind, seed=prep.opts.seed, sources=prep.predictor.sources)
    except LatpruneError:
        return None
    return refitted if refitted.baseline(prep.workload) == prep.predictor.baseline(prep.workload) else None


def refine_on_device(prep: Prepared, cands: pd.DataFrame, session: DeviceSession,
                     progress: bool = True) -> tuple[Refinement, pd.DataFrame]:
    """Budget-directed refinement (`refine`) with this device session, searching the budget
    band with the search's own strategy when the candidates have none there (with `--space
    per-layer`, then a per-layer round from the best uniform candidates predicted at or under
    the band: per-layer timings rescale later per-layer predictions, `Predictor.predict`,
    so the pool's per-layer candidates can all leave the band). Returns it and
    the candidates (with those the band rounds found), each measured one's latency in column
    `refine_<metric>`."""
    from .workflow import find_candidates  # the search's own round; workflow imports this module

    opts, m, ranked = prep.opts, prep.opts.metric, prep.ranked
    if not opts.device_measurements:
        return Refinement(predictor=prep.predictor, pool=cands), cands
    calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    shared = dict(zip(cands.arch_id, cands.perplexity))

    def search_band(predictor: Predictor, band: tuple[float, float]) -> pd.DataFrame:
        found = find_candidates(ranked, predictor, calib, prep.workload, opts, progress, bound="band", band=band,
                                perplexities=shared).frame()
        if opts.space != "per-layer":
            return found
        seeds = _per_layer_seeds(predictor, pd.concat([found, cands]), opts, prep.workload, band[1])
        if not seeds:
            return found
        # searched up to the band's top and filtered to the band afterwards: held to the narrow band
        # itself, nevergrad's constraint handling retries up to ~1000 predictions per ask
        per = find_candidates(ranked, predictor, calib, prep.workload, opts, progress, bound="band",
                              band=(0.0, band[1]), perplexities=shared, seeds=seeds).frame()
        per = per[per[f"pred_{opts.metric}"] >= band[0] * opts.limit_ms]
        return pd.concat([found, per], ignore_index=True).drop_duplicates("arch_id")

    bar = tqdm(total=opts.device_measurements, desc=f"refine on {prep.device.name}", unit="timing",
               disable=not progress)

    def measured(arch: Architecture, ms: float) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{arch.describe()}: {ms:.2f} ms = {ms / opts.latency_ms:.0%} of the budget")

    try:
        result = refine(cands, prep.predictor, prep.workload, opts, on_measured=measured, search_band=search_band,
                        known=_known_refinements(session, cands, m),
                        measure=lambda a: session.on_scale(session.time(a, timing_role(a)), m),
                        refit=lambda: _refit(prep, session))
    finally:
        bar.close()
    pool = by_rank(result.pool)
    pool[f"refine_{m}"] = pool.arch_id.map(result.measured)
    return result, pool


def _per_layer_seeds(predictor: Predictor, pool: pd.DataFrame, opts: SearchOptions, workload: Workload,
                     top: float) -> list[Architecture]:
    """The two best (zero-shot) uniform candidates of `pool` that `predictor` puts at or
    under `top` x the limit: a per-layer band round starts from them (and fills them, which
    lifts one from under the band into it)."""
    uniform = [Architecture.from_json(j) for j in pool.sort_values("perplexity", kind="stable").arch_json]
    uniform = list({a.id: a for a in uniform if a.is_uniform}.values())
    if not uniform:
        return []
    ms = predictor.predict(uniform, workload)[opts.metric].to_numpy()
    return [a for a, m in zip(uniform, ms) if m <= top * opts.limit_ms][:2]


def timing_role(arch: Architecture) -> str:
    """The profile role of a refinement timing: "refine" (a training row) for a uniform
    architecture; a per-layer one is recorded as HETERO_ROLE, which the surrogates do not
    train on (their features describe uniform architectures; per-layer ones are composed)
    but which sets the refitted predictor's `per_layer_timings` (`local_scale`)."""
    return "refine" if arch.is_uniform else HETERO_ROLE


def _known_refinements(session: DeviceSession, cands: pd.DataFrame, metric: str) -> dict[str, float]:
    """Latency (median, on the session's scale) of each candidate the record already holds
    refinement timings of: an interrupted or earlier search measured them."""
    rows = pd.concat([session.writer.rows(role=role, status="ok", **session.profiler.key)
                      for role in ("refine", HETERO_ROLE)], ignore_index=True)
    if rows.empty:
        return {}
    rows = rows[rows.arch_id.isin(cands.arch_id) & ~rows.drift_flag.astype(bool)]
    return {i: float(pd.Series([session.on_scale(r, metric) for _, r in group.iterrows()]).median())
            for i, group in rows.groupby("arch_id")}
