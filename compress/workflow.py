"""The compress stage as functions the CLI calls: rank, compress, evaluate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from latprune.architecture import Architecture
from latprune.checks import is_int
from latprune.errors import LatpruneError
from latprune.files import CHECKPOINT_MARKER, MODEL_MARKER, check_out, remove_output
from latprune.models import load_config, load_parent, load_tokenizer, model_identity
from latprune.space import SearchSpace, check_keep
from latprune.text import calibration_windows, heldout_windows, read_text, second_windows

from .checkpoint import load_any, save_compressed
from .quality import perplexity, quality_report
from .ranked import WINDOW, rank_model

EVAL_WINDOWS = 40


def compress(model: str | Path, out: str | Path, *, arch: Architecture | None = None, keep: float | None = None,
             text: str | Path | None = None, eval_windows: int = EVAL_WINDOWS, progress: bool = True,
             ) -> dict[str, Any]:
    """Extract the importance-ordered sub-network `arch` (or the one with about `keep` of the
    parameters) and save it to `out`, with held-out perplexity of parent and child."""
    check_out(out, MODEL_MARKER, [model, text])
    _check_windows(eval_windows)
    if keep is not None:
        check_keep(keep)
    if arch is not None:  # fail on a bad architecture before any weights are read
        SearchSpace.from_config(load_config(model)).validate(arch)
    ranked = rank_model(model, text, progress=progress)
    space = ranked.space
    if arch is None:
        arch = space.scaled(keep if keep is not None else 0.6, ranked.ranking.layer_order)
    child = ranked.extract(arch)
    held = heldout_windows(ranked.tokenizer, ranked.text, WINDOW, eval_windows)
    second = second_windows(ranked.tokenizer, WINDOW, eval_windows)
    t0 = time.perf_counter()
    ppl_parent = perplexity(ranked.model, held, progress=progress)
    child_quality = quality_report(child, ranked.model, held, second)
    summary = {
        "architecture": arch.to_dict(),
        "architecture_id": arch.id,
        "parameters": space.num_params(arch),
        "parent_parameters": space.num_params(space.largest()),
        "perplexity": child_quality["heldout_perplexity"],
        "parent_perplexity": ppl_parent,
        "child_quality": child_quality,
        "eval": {"windows": int(held.shape[0]), "window": WINDOW, "seconds": round(time.perf_counter() - t0, 1)},
    }
    save_compressed(child, arch, out, ranked.model.config, ranked.tokenizer, extra={"quality": summary},
                    inputs=[model, text])
    return summary


def _check_windows(windows: int) -> None:
    if not is_int(windows) or windows < 1:
        raise LatpruneError(f"--windows must be a positive integer; got {windows!r}")


def evaluate(model: str | Path, text: str | Path | None = None, windows: int = EVAL_WINDOWS,
             progress: bool = True) -> dict[str, Any]:
    """Held-out perplexity of a model (parent or compressed checkpoint)."""
    _check_windows(windows)
    body = read_text(text)  # cheap checks first
    net, tokenizer = load_any(model), load_tokenizer(model)
    held = heldout_windows(tokenizer, body, WINDOW, windows)
    second = second_windows(tokenizer, WINDOW, windows)
    return {"perplexity": perplexity(net, held, progress=progress), "windows": int(held.shape[0]),
            "second_text_perplexity": perplexity(net, second, progress=progress), "window": WINDOW,
            "parameters": sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())}


def distill_model(student: str | Path, teacher: str | Path, out: str | Path, *, steps: int = 200,
                  text: str | Path | None = None, eval_windows: int = EVAL_WINDOWS, lr: float = 1e-3,
                  seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Distil a compressed checkpoint from its parent and save it to `out` (same architecture).
    Interrupted runs resume from `out`'s sibling checkpoint folder."""
    from latprune.models import config_from_dict

    from .checkpoint import read_metadata
    from .distill import DistillConfig, distill

    cfg = DistillConfig(steps=steps, lr=lr, seed=seed)  # checks the options
    check_out(out, MODEL_MARKER, [student, teacher, text])
    _check_windows(eval_windows)
    meta = read_metadata(student)
    arch = Architecture.from_dict(meta["architecture"])
    parent_config = config_from_dict(meta["parent"]["config"])
    if model_identity(load_config(teacher))["config_hash"] != meta["parent"]["config_hash"]:
        raise LatpruneError(f"teacher '{teacher}' is not the parent the student was cut from "
                            f"({meta['parent']['name']}); pass that model as --teacher")
    body = read_text(text)
    teacher_model, tokenizer = load_parent(teacher)
    student_model = load_any(student)
    calib = calibration_windows(tokenizer, body, WINDOW, max_windows=None)
    held = heldout_windows(tokenizer, body, WINDOW, eval_windows)
    second = second_windows(tokenizer, WINDOW, eval_windows)
    before = quality_report(student_model, teacher_model, held, second)
    t0 = time.perf_counter()
    checkpoint = Path(out).with_name(Path(out).name + ".distill-checkpoint")
    distill(student_model, teacher_model, calib, cfg, checkpoint, progress=progress)
    seconds = time.perf_counter() - t0
    after = quality_report(student_model, teacher_model, held, second)
    info = {"steps": steps, "tokens": cfg.tokens(WINDOW), "seconds_this_run": round(seconds, 1),
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "heldout_perplexity_before": before["heldout_perplexity"],
            "heldout_perplexity_after": after["heldout_perplexity"], "quality_before": before, "quality_after": after,
            "parent_heldout_perplexity": perplexity(teacher_model, held, progress=progress),
            "eval": {"windows": int(held.shape[0]), "window": WINDOW}}
    kept = {k: meta[k] for k in ("quality", "search") if k in meta}
    save_compressed(student_model, arch, out, parent_config, tokenizer, extra={**kept, "distill": info},
                    inputs=[student, teacher, text])
    remove_output(checkpoint, CHECKPOINT_MARKER)
    return info


def supernet(model: str | Path = "default", out: str | Path | None = None, *, steps: int = 30,
             text: str | Path | None = None, band: tuple[float, float] | None = None, seed: int = 0,
             eval_windows: int = EVAL_WINDOWS, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the super-network of `model` (sandwich rule, KD from the parent) and save it
    to `out` (default: latprune's cache, keyed by parent, text, space and settings; reused
    when there). Returns its metadata, with the parent's held-out perplexity before and after."""
    import copy
    import json

    from latprune.files import SUPERNET_MARKER
    from latprune.models import cache_dir

    from .supernet import SupernetConfig, save_supernet, supernet_key, train_supernet

    cfg = SupernetConfig(steps=steps, seed=seed, band=band)
    if out is not None:
        check_out(out, SUPERNET_MARKER, [model, text])
    _check_windows(eval_windows)
    ranked = rank_model(model, text, progress=progress)
    key = supernet_key(ranked, cfg)
    out = Path(out) if out is not None else cache_dir() / "supernet" / key
    meta = json.loads((out / SUPERNET_MARKER).read_text()) if (out / SUPERNET_MARKER).is_file() else {}
    if meta.get("key") == key:
        return {**meta, "folder": str(out), "reused": True}
    train = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, max_windows=None)
    held = heldout_windows(ranked.tokenizer, ranked.text, WINDOW, eval_windows)
    net = copy.deepcopy(ranked.model)
    checkpoint = Path(str(out) + ".checkpoint")
    t0 = time.perf_counter()
    train_supernet(net, ranked.model, ranked.ranking, train, cfg, checkpoint, progress=progress)
    quality = {"parent_heldout_perplexity": perplexity(ranked.model, held),
               "full_slice_heldout_perplexity": perplexity(net, held), "windows": int(held.shape[0]),
               "seconds_this_run": round(time.perf_counter() - t0, 1)}
    meta = save_supernet(ranked, net, cfg, out, quality)
    remove_output(checkpoint, CHECKPOINT_MARKER)
    return {**meta, "folder": str(out), "reused": False}
