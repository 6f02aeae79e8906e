"""Recovery of the winner: the recovery-aware ranking of the candidates before any device
work (`rank_by_recovery`), the recovery-aware choice among the passing finalists (each gets
the same short distillation, the best afterwards wins) and the time-budgeted distillation
of the winner from its parent.

Zero-shot perplexity misjudges depth: sub-networks that drop layers but keep full widths
score several times worse zero-shot than width-pruned ones of the same latency, yet recover
better after a few distillation steps (benchmarks/results/recovery_ranking.md). So before
the device is used, the search's best candidate near the budget and sub-networks of other
depths there (`shortlist`) get the same short distillation, and refinement and the
finalists take them first, the best after it first."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.compress.quality import perplexity
from latprune.compress.ranked import WINDOW
from latprune.text import calibration_windows

from .evaluate import SEARCH_WINDOWS, Evaluator
from .knapsack import DEPTHS, KNAPSACK
from .options import SearchOptions
from .per_layer import EXTRA_LAYERS, TAPERED
from .refine import BAND, by_rank
from .strategies import depth_family

if TYPE_CHECKING:
    from .workflow import Prepared


def recovery_aware(opts) -> bool:
    """Whether candidates get a short distillation before the winner is chosen."""
    return bool(opts.finalist_steps and (opts.recover_minutes or opts.distill_steps))


def shortlist(cands: pd.DataFrame, prep: Prepared, progress: bool = True) -> tuple[pd.DataFrame, list[Architecture]]:
    """The candidates worth a short distillation: the search's best zero-shot candidate in the
    budget band; with `--space per-layer` the tapers and the best of each space too
    (`_per_layer_picks`); with the `nas` strategy members of the `depth_family` in that band
    at depths evenly spread from the shallowest to the family's best zero-shot one, up to
    `2 x opts.finalists` in all (the baselines keep to their own families). The band:
    predicted median in BAND x the limit (with no refinement: upper bound from BAND[0] x the
    limit up to it). Returns the candidates with the family's members evaluated
    (zero-shot) added, and the shortlist."""
    opts = prep.opts
    column = f"pred_{opts.metric}" + ("" if opts.device_measurements else "_upper")
    low, high = BAND[0] * opts.limit_ms, (BAND[1] if opts.device_measurements else 1.0) * opts.limit_ms
    cands, family = _with_depth_family(prep, cands, low, high, progress) if opts.strategy == "nas" else (cands, [])
    band = cands[cands[column].between(low, high)].sort_values("perplexity", kind="stable")
    picked = [Architecture.from_json(j) for j in band.arch_json.head(1)]
    if opts.space == "per-layer":
        picked += _per_layer_picks(cands, band, column, opts, {a.id for a in picked})
    if family:
        ppl = dict(zip(cands.arch_id, cands.perplexity))
        best = min(range(len(family)), key=lambda i: ppl[family[i].id])
        for i in np.linspace(0, best, 2 * opts.finalists).round().astype(int):
            if family[i].id not in {a.id for a in picked} and len(picked) < 2 * opts.finalists:
                picked.append(family[i])
    return cands, picked


def _per_layer_picks(cands: pd.DataFrame, band: pd.DataFrame, column: str, opts: SearchOptions,
                     picked: set[str]) -> list[Architecture]:
    """With `--space per-layer`, besides the best in the band (ids `picked`): every taper
    (`per_layer.taper`, predicted from BAND[0] x the limit up to it; +2 layers recovered best
    of all candidates at 0.5x and 0.7x, selection_proxy_*.md) and every least-damage
    allocation (`knapsack.allocate`, likewise), the best per-layer mix and the
    best of the uniform strategy, these two only when the band's best is not of their kind,
    each from the band or, with none of its kind there, up to the limit (at 0.7x the
    layer-dropped L=19 was predicted at 99.5%). The filled seed is left to the search: it
    recovered like taper +1 (33.46 vs 33.45 held-out at 0.5x)."""
    near = cands[cands[column].between(BAND[0] * opts.limit_ms, opts.limit_ms)]
    near = near.sort_values("perplexity", kind="stable")

    def best_of(strategy: str) -> list[Architecture]:
        if strategy in set(band.strategy.head(1)):
            return []
        pool = band if (band.strategy == strategy).any() else near
        return [Architecture.from_json(j) for j in pool[pool.strategy == strategy].arch_json.head(1)]

    grown = [near[(near.strategy == kind) & ~near.arch_id.isin(picked)].arch_json.head(count)
             for kind, count in ((TAPERED, len(EXTRA_LAYERS)), (KNAPSACK, len(DEPTHS)))]
    return [*best_of("per-layer"), *(Architecture.from_json(j) for j in pd.concat(grown)), *best_of(opts.strategy)]


def _with_depth_family(prep: Prepared, cands: pd.DataFrame, low: float, high: float,
                       progress: bool) -> tuple[pd.DataFrame, list[Architecture]]:
    """The `depth_family` between `low` and `high` ms, evaluated zero-shot (strategy
    "depth"), and the candidates with those members added."""
    opts, ranked = prep.opts, prep.ranked
    calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    ev = Evaluator(ranked, prep.predictor, calib, prep.workload, opts.metric, high, strategy="depth",
                   bound="median" if opts.device_measurements else "upper",
                   perplexities=dict(zip(cands.arch_id, cands.perplexity)))
    family = depth_family(ev, low, high)
    for arch in tqdm(family, desc="depth family", unit="eval", disable=not progress):
        ev.quality(arch)
    if family:
        cands = pd.concat([cands, ev.frame()[lambda f: ~f.arch_id.isin(cands.arch_id)]], ignore_index=True)
    return cands, family


def short_distillation(steps: int, seed: int = 0):
    """The `DistillConfig` of the short distillation candidates get before the winner is
    chosen: `steps` steps, a third of them warm-up."""
    from latprune.compress.distill import DistillConfig

    return DistillConfig(steps=steps, warmup=max(1, steps // 3), seed=seed)


@dataclass
class Tried:
    """Sub-networks given the same short distillation (`opts.finalist_steps` steps): id ->
    (calibration perplexity after it, the distilled model), and the seconds it took."""

    models: dict[str, tuple[float, nn.Module]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, prep: Prepared, archs: list[Architecture], progress: bool) -> None:
        """Distil those of `archs` not tried yet."""
        from latprune.compress.distill import distill

        opts, ranked, t0 = prep.opts, prep.ranked, time.perf_counter()
        train = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, max_windows=None)
        calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
        cfg = short_distillation(opts.finalist_steps, opts.seed)
        for arch in archs:
            if arch.id not in self.models:
                child = distill(ranked.extract(arch), ranked.model, train, cfg, progress=progress)
                self.models[arch.id] = (perplexity(child, calib), child)
        self.seconds += time.perf_counter() - t0


def rank_by_recovery(prep: Prepared, cands: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, Tried]:
    """The candidates with column `recovered_perplexity` (calibration perplexity after the
    short distillation; NaN for those not in the `shortlist`), in `by_rank` order, and the
    distilled models. Unchanged when the search is not recovery-aware."""
    tried = Tried()
    if not recovery_aware(prep.opts):
        return cands, tried
    cands, picked = shortlist(cands, prep, progress)
    tried.add(prep, picked, progress)
    cands = cands.assign(recovered_perplexity=[tried.models.get(i, (float("nan"),))[0] for i in cands.arch_id])
    return by_rank(cands), tried


def select_by_recovery(prep: Prepared, passing: list[Architecture], progress: bool = True,
                       tried: Tried | None = None) -> tuple[Architecture, nn.Module | None, dict[str, Any]]:
    """Recovery-aware choice: each passing finalist gets the same `opts.finalist_steps`
    distillation steps (those `tried` already had them), and the one with the best
    calibration perplexity after them wins (with its distilled model). A single finalist is
    not distilled here unless it was `tried`; with none distilled, no steps or no recovery
    asked for: the first, undistilled (None). `info["seconds"]`: all short distillation."""
    tried = tried or Tried()
    if not recovery_aware(prep.opts):
        return passing[0], None, {}
    if len(passing) > 1:
        tried.add(prep, passing, progress)
    distilled = [a for a in passing if a.id in tried.models]
    best = min(distilled, key=lambda a: tried.models[a.id][0]) if distilled else passing[0]
    info = {"steps_each": prep.opts.finalist_steps, "seconds": round(tried.seconds, 1),
            "calibration_perplexity_after": {i: ppl for i, (ppl, _) in tried.models.items()}, "chosen": best.id}
    return best, tried.models[best.id][1] if distilled else None, info


def recover(prep: Prepared, child: nn.Module, checkpoint: Path, progress: bool = True, *,
            spent_s: float = 0.0) -> dict[str, Any] | None:
    """Distil `child` from the parent, for `opts.distill_steps` steps or as many as fit in
    what is left of `opts.recover_minutes` after `spent_s` seconds of the recovery-aware
    choice (resumable from `checkpoint`); None when asked for neither or nothing is left."""
    opts = prep.opts
    minutes = opts.recover_minutes - spent_s / 60
    if not opts.distill_steps and minutes <= 0:
        return None
    from latprune.compress.distill import DistillConfig, distill, steps_within

    train = calibration_windows(prep.ranked.tokenizer, prep.ranked.text, WINDOW, max_windows=None)
    steps = opts.distill_steps or steps_within(minutes, child, prep.ranked.model, train, checkpoint, seed=opts.seed)
    cfg = DistillConfig(steps=steps, seed=opts.seed)
    t0 = time.perf_counter()
    distill(child, prep.ranked.model, train, cfg, checkpoint, progress=progress)
    return {"steps": steps, "tokens": cfg.tokens(WINDOW), "minutes_budget": None if opts.distill_steps else
            opts.recover_minutes, "seconds_this_run": round(time.perf_counter() - t0, 1),
            "text": "calibration part of the text (held-out and second texts never trained on)",
            "config": asdict(cfg)}
