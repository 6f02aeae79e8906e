"""Importance scores from forward passes on calibration tokens (Minitron-style activations).

- head: mean L2 norm of each head's output (the input of the attention output projection);
  a KV group scores the sum of its query heads;
- neuron: mean |activation| entering the MLP output projection;
- channel: mean |activation| of every norm's output (all layers and the final norm), summed;
- layer, by `layer_criterion`: `influence` (block influence, mean over tokens of
  1 - cos(block input, block output)) or `drop-kl` (the KL to the model with that layer
  alone skipped, on DROP_KL_WINDOWS of the windows; `drop_order.py`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.space import SearchSpace
from latprune.text import evenly_spaced

from .drop_order import one_shot_damage
from .ranking import Ranking

LAYER_CRITERIA = ("influence", "drop-kl")
LAYER_CRITERION = "influence"  # the default: drop-kl loses after recovery at 16 layers (layer_order.md)
DROP_KL_WINDOWS = 8  # calibration windows (evenly spaced among all) the drop-kl criterion measures on


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.inference_mode()
def compute_ranking(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: bool = True,
                    meta: dict | None = None, layer_criterion: str = LAYER_CRITERION) -> Ranking:
    """Score every structure of `model` on token `windows` [n, T] and rank them; layers by
    `layer_criterion` (one of LAYER_CRITERIA)."""
    if layer_criterion not in LAYER_CRITERIA:
        raise ValueError(f"layer_criterion must be one of {LAYER_CRITERIA}, got {layer_criterion!r}")
    space = SearchSpace.from_config(model.config)
    family, p = space.family, space.parent
    n_layers, hd = p["layers"], p["head_dim"]
    head = torch.zeros(n_layers, p["heads"], dtype=torch.float64)
    neuron = torch.zeros(n_layers, p["mlp"], dtype=torch.float64)
    channel = torch.zeros(p["hidden"], dtype=torch.float64)
    influence = torch.zeros(n_layers, dtype=torch.float64)
    block_in: dict[int, torch.Tensor] = {}
    handles = []

    def on(module: nn.Module, fn, pre: bool = False, kwargs: bool = False):
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        handles.append(register(fn, with_kwargs=kwargs) if kwargs else register(fn))

    def channels_hook(_m, _args, out) -> None:  # returns None: a hook's return value replaces the output
        channel.add_(out.float().abs().sum((0, 1)).double())

    for i, layer in enumerate(family.layers(model)):
        def heads_hook(_m, args, i=i):
            x = args[0].float()
            head[i] += x.view(*x.shape[:-1], -1, hd).norm(dim=-1).sum((0, 1)).double()

        def neurons_hook(_m, args, i=i):
            neuron[i] += args[0].float().abs().sum((0, 1)).double()

        def layer_in(_m, args, kwargs, i=i):
            block_in[i] = args[0] if args else kwargs["hidden_states"]

        def layer_out(_m, _args, _kwargs, out, i=i):
            cos = torch.nn.functional.cosine_similarity(block_in.pop(i).float(), _first_tensor(out).float(), dim=-1)
            influence[i] += (1 - cos).sum().double()

        on(family.attn_out_proj(layer), heads_hook, pre=True)
        on(family.mlp_out_proj(layer), neurons_hook, pre=True)
        on(layer, layer_in, pre=True, kwargs=True)
        on(layer, layer_out, kwargs=True)
        for norm in family.layer_norms(layer):
            on(norm, channels_hook)
    on(family.final_norm(model), channels_hook)

    try:
        batches = list(windows.split(batch_size))
        for batch in tqdm(batches, desc="importance", unit="batch", disable=not progress):
            model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    tokens = float(windows.numel())
    layer, criterion = (influence / tokens).numpy(), {"layer_criterion": layer_criterion}
    if layer_criterion == "drop-kl":
        picked = drop_kl_windows(windows)
        layer, criterion["layer_windows"] = one_shot_damage(model, picked), len(picked)
    return Ranking.from_scores(
        layer, (head / tokens).numpy(), (neuron / tokens).numpy(), (channel / tokens).numpy(), p["kv_groups"],
        meta={"kind": "importance", "windows": int(windows.shape[0]), "window": int(windows.shape[1]),
              **criterion, **(meta or {})},
    )


def drop_kl_windows(windows: torch.Tensor) -> torch.Tensor:
    """The DROP_KL_WINDOWS windows, evenly spaced among `windows`, the drop-kl criterion uses."""
    return evenly_spaced(windows, DROP_KL_WINDOWS)


def tokens_hash(windows: torch.Tensor) -> str:
    return hashlib.sha1(np.ascontiguousarray(windows.numpy()).tobytes()).hexdigest()[:10]


def _ranking_name(windows: torch.Tensor, layer_criterion: str) -> str:
    """File name stem of a ranking: its tokens, and a layer criterion other than influence."""
    return (f"{layer_criterion}-" if layer_criterion != "influence" else "") + tokens_hash(windows)


def ranking_path(model_dir: Path, windows: torch.Tensor, layer_criterion: str = LAYER_CRITERION) -> Path:
    """Where the ranking of a model on given calibration tokens is stored: beside the model."""
    return Path(model_dir) / f"latprune_importance-{_ranking_name(windows, layer_criterion)}.safetensors"


def load_or_compute_ranking(model: nn.Module, model_dir: Path, windows: torch.Tensor, progress: bool = True,
                            layer_criterion: str = LAYER_CRITERION) -> Ranking:
    """Reuse the ranking saved beside the model for these tokens, or compute and save it.
    (Falls back to latprune's cache when the model directory is read-only.)"""
    from latprune.models import cache_dir, model_identity

    space = SearchSpace.from_config(model.config)
    identity = model_identity(model.config)
    name = _ranking_name(windows, layer_criterion)
    candidates = [ranking_path(model_dir, windows, layer_criterion),
                  cache_dir() / "importance" / f"{identity['config_hash']}-{name}.safetensors"]
    for path in candidates:
        if path.is_file():
            ranking = Ranking.load(path)
            if ranking.meta.get("model", {}).get("config_hash") == identity["config_hash"]:
                return ranking.check(space)
    ranking = compute_ranking(model, windows, progress=progress, meta={"model": identity},
                              layer_criterion=layer_criterion)
    for path in candidates:
        try:
            ranking.save(path)
            break
        except OSError:
            continue
    return ranking
