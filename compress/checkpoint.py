"""Saving and loading compressed models.

A compressed model directory is a Hugging Face checkpoint plus `latprune.json` (schema
version, architecture, parent identity and config). Uniform architectures have a config
that matches their shapes, so plain `AutoModelForCausalLM.from_pretrained` loads them;
per-layer architectures load with `latprune.load_model(path)`, which rebuilds the shapes
from the metadata, and (Llama family) with `from_pretrained(path, trust_remote_code=True)`
through the modeling file written beside them (`portable`). Directories are written to a
temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latprune import models
from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.files import MODEL_MARKER, atomic_dir
from latprune.models import model_identity
from latprune.space import SearchSpace

from .portable import MODELING, make_portable

CHECKPOINT_VERSION = 1
LOADS_WITH = {"uniform": "AutoModelForCausalLM.from_pretrained(folder) or latprune.load_model(folder)",
              "remote code": "AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) or "
                             "latprune.load_model(folder)",
              "latprune": "latprune.load_model(folder)"}


def save_compressed(model: nn.Module, arch: Architecture, out: str | Path, parent_config, tokenizer=None, *,
                    extra: dict[str, Any] | None = None, inputs: list = ()) -> Path:
    """Write `model` (extracted with `arch` from a parent with `parent_config`) to `out`
    (replacing only a latprune checkpoint, never a directory holding one of `inputs`)."""
    space = SearchSpace.from_config(parent_config)
    meta = {
        "latprune_checkpoint_version": CHECKPOINT_VERSION,
        "architecture": arch.to_dict(),
        "architecture_id": arch.id,
        "uniform": arch.is_uniform,
        "parameters": space.num_params(arch),
        "parent": {**model_identity(parent_config), "parameters": space.num_params(space.largest()),
                   "config": parent_config.to_dict()},
        **(extra or {}),
    }

    with atomic_dir(out, MODEL_MARKER, inputs) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta["loads_with"] = LOADS_WITH["uniform" if arch.is_uniform else
                                        "remote code" if make_portable(tmp, arch) else "latprune"]
        (tmp / MODEL_MARKER).write_text(json.dumps(meta, indent=2, default=str))
    return Path(out)


def cast_copy(model: nn.Module, dtype: str) -> nn.Module:
    """A copy of `model` with its weights in `dtype` ('bf16' or 'fp32'), as it will be saved."""
    import copy

    return copy.deepcopy(model).to(torch.bfloat16 if dtype == "bf16" else torch.float32)


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_file = Path(path) / MODEL_MARKER
    if not meta_file.is_file():
        raise LatpruneError(f"'{path}' is not a latprune checkpoint (no {MODEL_MARKER})")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError) as exc:
        raise LatpruneError(f"'{meta_file}' is damaged ({exc}); compress the model again") from None
    if meta.get("latprune_checkpoint_version") != CHECKPOINT_VERSION:
        raise LatpruneError(f"'{path}' has checkpoint version {meta.get('latprune_checkpoint_version')}; "
                            f"this latprune reads version {CHECKPOINT_VERSION}")
    return meta


def load_compressed(path: str | Path) -> nn.Module:
    """Load a compressed checkpoint, uniform or per-layer."""
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM

    from .extract import extract

    path = Path(path)
    meta = read_metadata(path)
    if meta["uniform"]:
        return models.load_model(path)
    if meta.get("loads_with") == LOADS_WITH["remote code"] and not (path / MODELING.name).is_file():
        raise LatpruneError(f"'{path}' is a per-layer checkpoint without its {MODELING.name} (what "
                            "AutoModelForCausalLM needs to build it); copy the whole folder, or save it again")
    with torch.device("cpu"):
        skeleton = AutoModelForCausalLM.from_config(models.config_from_dict(meta["parent"]["config"]))
    model = extract(skeleton, Architecture.from_dict(meta["architecture"]))
    try:
        load_model(model, str(path / "model.safetensors"), strict=True)
    except models.LOAD_ERRORS as exc:
        raise LatpruneError(f"'{path}': its weights cannot be loaded ({type(exc).__name__})") from None
    return model.eval()


def load_any(spec: str | Path) -> nn.Module:
    """A model in float32 eval mode: 'default', a HF directory, a .gguf file, or a latprune
    checkpoint (per-layer architectures are rebuilt from their metadata)."""
    path = models.resolve(spec)
    if path.is_dir() and (path / MODEL_MARKER).is_file():
        return load_compressed(path)
    return models.load_model(spec)
