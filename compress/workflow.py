"""The compress stage as functions the CLI calls: rank, compress, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from latprune.architecture import Architecture
from latprune.models import load_config, load_parent, resolve
from latprune.space import SearchSpace
from latprune.text import calibration_windows, heldout_windows, read_text

from .checkpoint import save_compressed
from .extract import extract
from .importance import load_or_compute_ranking
from .quality import perplexity
from .ranking import Ranking

CALIBRATION_WINDOWS = 32
EVAL_WINDOWS = 40
WINDOW = 128


@dataclass
class RankedModel:
    """A parent model with its tokenizer, search space and importance ranking."""

    model: nn.Module
    tokenizer: Any
    space: SearchSpace
    ranking: Ranking
    text: str

    def extract(self, arch: Architecture) -> nn.Module:
        return extract(self.model, arch, self.ranking, self.space)


def rank_model(model: str | Path = "default", text: str | Path | None = None,
               windows: int = CALIBRATION_WINDOWS, progress: bool = True) -> RankedModel:
    """Load a parent and its importance ranking on the calibration part of `text`
    (computed once and saved beside the model)."""
    parent, tokenizer = load_parent(model)
    body = read_text(text)
    calib = calibration_windows(tokenizer, body, WINDOW, windows)
    path = resolve(model)
    ranking = load_or_compute_ranking(parent, path if path.is_dir() else path.parent, calib, progress)
    return RankedModel(parent, tokenizer, SearchSpace.from_config(parent.config), ranking, body)


def compress(model: str | Path, out: str | Path, arch: Architecture | None = None, keep: float | None = None,
             text: str | Path | None = None, eval_windows: int = EVAL_WINDOWS, progress: bool = True,
             ) -> dict[str, Any]:
    """Extract the importance-ordered sub-network `arch` (or the one with about `keep` of the
    parameters) and save it to `out`, with held-out perplexity of parent and child."""
    if arch is not None:  # fail on a bad architecture before any weights are read
        SearchSpace.from_config(load_config(model)).validate(arch)
    ranked = rank_model(model, text, progress=progress)
    space = ranked.space
    if arch is None:
        arch = space.scaled(keep if keep is not None else 0.6, ranked.ranking.layer_order)
    child = ranked.extract(arch)
    held = heldout_windows(ranked.tokenizer, ranked.text, WINDOW, eval_windows)
    t0 = time.perf_counter()
    ppl_parent = perplexity(ranked.model, held, progress=progress)
    ppl_child = perplexity(child, held, progress=progress)
    summary = {
        "architecture": arch.to_dict(),
        "architecture_id": arch.id,
        "parameters": space.num_params(arch),
        "parent_parameters": space.num_params(space.largest()),
        "perplexity": ppl_child,
        "parent_perplexity": ppl_parent,
        "eval": {"windows": int(held.shape[0]), "window": WINDOW, "seconds": round(time.perf_counter() - t0, 1)},
    }
    save_compressed(child, arch, out, ranked.model.config, ranked.tokenizer, {"quality": summary})
    return summary


def evaluate(model: str | Path, text: str | Path | None = None, windows: int = EVAL_WINDOWS,
             progress: bool = True) -> dict[str, Any]:
    """Held-out perplexity of a model (parent or compressed checkpoint)."""
    net, tokenizer = load_parent(model)
    held = heldout_windows(tokenizer, read_text(text), WINDOW, windows)
    return {"perplexity": perplexity(net, held, progress=progress), "windows": int(held.shape[0]),
            "window": WINDOW, "parameters": sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())}
