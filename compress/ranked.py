"""`RankedModel`: a parent with its tokenizer, search space, importance ranking and text;
what the search and the compress commands start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from latprune.architecture import Architecture
from latprune.models import load_parent, resolve
from latprune.space import SearchSpace
from latprune.text import calibration_windows, read_text

from .extract import extract
from .importance import LAYER_CRITERION, load_or_compute_ranking, tokens_hash
from .ranking import Ranking

CALIBRATION_WINDOWS = 32
WINDOW = 128


@dataclass
class RankedModel:
    """A parent model with its tokenizer, search space and importance ranking. `weights`:
    the fine-tuned super-network sub-networks are cut from (None: the parent itself); the
    parent stays the teacher and the quality reference. `text_key` identifies the
    calibration tokens the ranking was computed on."""

    model: nn.Module
    tokenizer: Any
    space: SearchSpace
    ranking: Ranking
    text: str
    text_key: str = ""
    weights: nn.Module | None = None

    def extract(self, arch: Architecture) -> nn.Module:
        return extract(self.weights if self.weights is not None else self.model, arch, self.ranking, self.space)


def rank_model(model: str | Path = "default", text: str | Path | None = None,
               windows: int = CALIBRATION_WINDOWS, progress: bool = True,
               layer_criterion: str = LAYER_CRITERION) -> RankedModel:
    """Load a parent and its importance ranking on the calibration part of `text`
    (computed once and saved beside the model; layers ranked by `layer_criterion`, one of
    `importance.LAYER_CRITERIA`)."""
    body = read_text(text)  # cheap checks first
    parent, tokenizer = load_parent(model)
    calib = calibration_windows(tokenizer, body, WINDOW, windows)
    path = resolve(model)
    ranking = load_or_compute_ranking(parent, path if path.is_dir() else path.parent, calib, progress,
                                      layer_criterion)
    return RankedModel(parent, tokenizer, SearchSpace.from_config(parent.config), ranking, body, tokens_hash(calib))
