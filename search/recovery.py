"""Recovery of the winner: the recovery-aware choice among the passing finalists (each gets
the same short distillation, the best afterwards wins) and the time-budgeted distillation
of the winner from its parent."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from latprune.architecture import Architecture
from latprune.compress.quality import perplexity
from latprune.compress.ranked import WINDOW
from latprune.text import calibration_windows

from .evaluate import SEARCH_WINDOWS

if TYPE_CHECKING:
    from .workflow import Prepared


def select_by_recovery(prep: Prepared, passing: list[Architecture], progress: bool = True,
                       ) -> tuple[Architecture, nn.Module | None, dict[str, Any]]:
    """Recovery-aware choice: each passing finalist gets the same `opts.finalist_steps`
    distillation steps, and the one with the best calibration perplexity after them wins
    (with its distilled model). With one finalist, no steps or no recovery asked for: the
    first, undistilled (None)."""
    opts, ranked = prep.opts, prep.ranked
    if len(passing) == 1 or not opts.finalist_steps or not (opts.recover_minutes or opts.distill_steps):
        return passing[0], None, {}
    from latprune.compress.distill import DistillConfig, distill

    train = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, max_windows=None)
    calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    cfg = DistillConfig(steps=opts.finalist_steps, warmup=max(1, opts.finalist_steps // 3), seed=opts.seed)
    tried = []
    t0 = time.perf_counter()
    for arch in passing:
        child = distill(ranked.extract(arch), ranked.model, train, cfg, progress=progress)
        tried.append((perplexity(child, calib), arch, child))
    best = min(tried, key=lambda t: t[0])
    info = {"steps_each": cfg.steps, "seconds": round(time.perf_counter() - t0, 1),
            "calibration_perplexity_after": {a.id: ppl for ppl, a, _ in tried}, "chosen": best[1].id}
    return best[1], best[2], info


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
