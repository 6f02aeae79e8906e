"""Layer orders from measured damage: which layers the rest of the network misses least.

Block influence (`importance.py`, `layer_criterion="influence"`) ranks a layer by how much
it turns its own input. These orders measure instead what dropping layers does to the
model's next-token distribution, the mean per-token KL(model || model with those layers
skipped) on calibration windows:

- `one_shot_order`: each layer dropped alone, the least damaging last (Shortened LLaMA's
  one-shot criterion, with KL to the parent in place of perplexity); its damage is the
  ranking's layer score under `layer_criterion="drop-kl"`;
- `greedy_order`: layers removed one at a time, each time the one whose removal (with those
  already removed) damages least; the removal sequence reversed is the order, so every
  prefix is the greedy answer at that depth.

A skipped layer is the parent with its attention and MLP output projections' outputs zeroed:
the residual stream passes it unchanged, exactly as in the sub-network without it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.space import SearchSpace

SEQUENCES_PER_PASS = 8  # drop sets x windows run in one batched forward


@torch.inference_mode()
def drop_kl(model: nn.Module, windows: torch.Tensor, drop_sets: list[frozenset[int]],
            logq: torch.Tensor | None = None) -> list[float]:
    """Mean per-token KL(model || model with the layers of each set skipped) on `windows` [n, T].
    `logq`: the model's own log-probabilities on `windows`, when already computed."""
    family = SearchSpace.from_config(model.config).family
    blocks = family.layers(model)
    if logq is None:
        logq = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1)
    n = windows.shape[0]
    per_pass = max(1, SEQUENCES_PER_PASS // n)
    out: list[float] = []
    for start in range(0, len(drop_sets), per_pass):
        chunk = drop_sets[start:start + per_pass]
        keep = torch.ones(len(chunk) * n, len(blocks))
        for k, dropped in enumerate(chunk):
            keep[k * n:(k + 1) * n, sorted(dropped)] = 0
        hooks = []
        for i, block in enumerate(blocks):
            def skip(_m, _a, y, i=i):
                return y * keep[:, i].view(-1, 1, 1).to(y.dtype)
            hooks += [family.attn_out_proj(block).register_forward_hook(skip),
                      family.mlp_out_proj(block).register_forward_hook(skip)]
        try:
            logits = model(input_ids=windows.repeat(len(chunk), 1), use_cache=False).logits.float()
        finally:
            for h in hooks:
                h.remove()
        logp = torch.log_softmax(logits, -1).view(len(chunk), *logq.shape)
        out.extend(float(v) for v in (logq.exp() * (logq - logp)).sum(-1).mean((1, 2)))
    return out


def one_shot_damage(model: nn.Module, windows: torch.Tensor) -> np.ndarray:
    """Per layer, the KL to the model when that layer alone is skipped."""
    n_layers = len(SearchSpace.from_config(model.config).family.layers(model))
    return np.asarray(drop_kl(model, windows, [frozenset({i}) for i in range(n_layers)]))


def one_shot_order(model: nn.Module, windows: torch.Tensor) -> np.ndarray:
    """Layers, most damaging to drop alone first (ties: parent order)."""
    return np.argsort(-one_shot_damage(model, windows), kind="stable")


def greedy_order(model: nn.Module, windows: torch.Tensor, progress: bool = True) -> np.ndarray:
    """Layers, most important first: the reverse of greedy least-damage removal."""
    n_layers = len(SearchSpace.from_config(model.config).family.layers(model))
    with torch.inference_mode():
        logq = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1)
    removed: list[int] = []
    for _ in tqdm(range(n_layers - 1), desc="greedy layer order", unit="layer", disable=not progress):
        rest = [i for i in range(n_layers) if i not in removed]
        damage = drop_kl(model, windows, [frozenset({*removed, i}) for i in rest], logq)
        removed.append(rest[int(np.argmin(damage))])
    removed += [i for i in range(n_layers) if i not in removed]
    return np.asarray(removed[::-1])
