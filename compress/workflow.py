"""The compress stage as functions the CLI calls: rank, compress, evaluate."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import load_config, load_model, load_parent, model_identity, resolve
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


def distill_model(student: str | Path, teacher: str | Path, out: str | Path, steps: int = 200,
                  text: str | Path | None = None, eval_windows: int = EVAL_WINDOWS, lr: float = 2e-4,
                  seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Distil a compressed checkpoint from its parent and save it to `out` (same architecture).
    Interrupted runs resume from `out`'s sibling checkpoint folder."""
    from transformers import AutoConfig

    from .checkpoint import read_metadata
    from .distill import DistillConfig, distill

    meta = read_metadata(student)
    arch = Architecture.from_dict(meta["architecture"])
    parent_cfg = dict(meta["parent"]["config"])
    parent_config = AutoConfig.for_model(parent_cfg.pop("model_type"), **parent_cfg)
    teacher_model, tokenizer = load_parent(teacher)
    if model_identity(teacher_model.config)["config_hash"] != meta["parent"]["config_hash"]:
        raise LatpruneError(f"teacher '{teacher}' is not the parent the student was cut from "
                            f"({meta['parent']['name']}); pass that model as --teacher")
    student_model = load_model(student)
    body = read_text(text)
    calib = calibration_windows(tokenizer, body, WINDOW, max_windows=100_000)
    held = heldout_windows(tokenizer, body, WINDOW, eval_windows)
    cfg = DistillConfig(steps=steps, lr=lr, seed=seed)
    before = perplexity(student_model, held, progress=progress)
    t0 = time.perf_counter()
    checkpoint = Path(out).with_name(Path(out).name + ".distill-checkpoint")
    distill(student_model, teacher_model, calib, cfg, checkpoint, progress)
    seconds = time.perf_counter() - t0
    after = perplexity(student_model, held, progress=progress)
    info = {"steps": steps, "tokens": cfg.tokens(WINDOW), "seconds_this_run": round(seconds, 1),
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "heldout_perplexity_before": before, "heldout_perplexity_after": after,
            "parent_heldout_perplexity": perplexity(teacher_model, held, progress=progress),
            "eval": {"windows": int(held.shape[0]), "window": WINDOW}}
    kept = {k: meta[k] for k in ("quality", "search") if k in meta}
    save_compressed(student_model, arch, out, parent_config, tokenizer, {**kept, "distill": info})
    shutil.rmtree(checkpoint, ignore_errors=True)
    return info
