"""Block damage: how far each variant of one block moves the model's next-token distribution.

For every parent layer and every variant of its block (the layer dropped, fewer KV groups
or query heads, a narrower MLP), the mean per-token KL(model || model with that one block
changed) on a few calibration windows. A variant is the parent with the dropped heads'
channels zeroed at the attention output projection's input and the dropped neurons zeroed at
the MLP output projection's input (a dropped layer: both projections' outputs zeroed), which
is exactly what the extracted sub-network computes in that layer when the others are whole.
MLP widths are probed at a few points and interpolated in the number of neurons kept.

Puzzle (Bercovich et al., 2024) scores block variants the same way, one block replaced at a
time, and allocates them under a hardware budget (`search/knapsack.py`). Layer dropping by
block influence ranks the layers by how much a block turns its input; this measures what
the rest of the network makes of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.errors import LatpruneError
from latprune.files import atomic_file
from latprune.space import SearchSpace

from .drop_order import drop_kl
from .extract import head_channels
from .ranking import Ranking

DAMAGE_VERSION = 1
PROBE_WINDOWS = 2  # calibration windows every variant is scored on
MLP_PROBES = (1 / 24, 1 / 4, 1 / 2, 3 / 4)  # MLP widths probed, as a share of the parent's (nearest choice)
SEQUENCES_PER_PASS = 8  # variants x windows run in one batched forward
RECENT_TABLES = 4  # tables kept in memory: a search's per-layer rounds reuse one (a super-network's too)
_RECENT: dict[str, BlockDamage] = {}  # key -> table, oldest first


@dataclass(frozen=True)
class BlockDamage:
    """Per parent layer: the damage of dropping it (`drop` [L]), of each attention shape
    (`attention` [L, A], shapes `attention_shapes` as (kv_groups, q_per_kv)) and of each MLP
    width (`mlp` [L, M], widths `mlp_widths`); the whole block and the full widths score 0."""

    attention_shapes: tuple[tuple[int, int], ...]
    mlp_widths: tuple[int, ...]
    drop: np.ndarray
    attention: np.ndarray
    mlp: np.ndarray

    def of(self, layer: int, heads: int, kv_groups: int, mlp: int) -> float:
        """Damage of parent `layer` kept with `heads` query heads in `kv_groups` groups and `mlp` neurons."""
        a = self.attention_shapes.index((kv_groups, heads // kv_groups))
        return float(self.attention[layer, a] + self.mlp[layer, self.mlp_widths.index(mlp)])


def _probe_widths(space: SearchSpace) -> list[int]:
    choices = space.mlp_choices
    return sorted({choices[max(0, min(len(choices) - 2, round(f * len(choices)) - 1))] for f in MLP_PROBES})


def _variants(layer: int, space: SearchSpace, ranking: Ranking) -> list[tuple[str, object, list[int], list[int]]]:
    """(kind, key, attention channels zeroed, MLP neurons zeroed) of every probed attention
    and MLP variant of `layer` (the dropped layer is `drop_order.drop_kl`'s)."""
    p = space.parent
    hd, heads = p["head_dim"], p["heads"]
    out: list[tuple[str, object, list[int], list[int]]] = []
    for kv, q in space.attention_shapes:
        kept, _ = ranking.layer_heads(layer, kv * q, kv, space.max_q_per_kv)
        gone = [h for h in range(heads) if h not in kept]
        if gone:
            out.append(("attention", (kv, q), head_channels(gone, hd).tolist(), []))
    for m in _probe_widths(space):
        out.append(("mlp", m, [], [int(n) for n in ranking.neuron_order[layer][m:]]))
    return out


@torch.inference_mode()
def _kl_per_variant(model: nn.Module, space: SearchSpace, layer: int, windows: torch.Tensor, logq: torch.Tensor,
                    variants: list) -> list[float]:
    """Mean per-token KL(model || variant) of each variant of `layer`, batched."""
    block = space.family.layers(model)[layer]
    o_proj, down = space.family.attn_out_proj(block), space.family.mlp_out_proj(block)
    n = windows.shape[0]
    per_pass = max(1, SEQUENCES_PER_PASS // n)
    out: list[float] = []
    for start in range(0, len(variants), per_pass):
        chunk = variants[start:start + per_pass]
        keep_o = torch.ones(len(chunk) * n, 1, o_proj.in_features)
        keep_d = torch.ones(len(chunk) * n, 1, down.in_features)
        for k, (_, _, attn, neurons) in enumerate(chunk):
            rows = slice(k * n, (k + 1) * n)
            keep_o[rows, :, attn] = 0
            keep_d[rows, :, neurons] = 0
        hooks = [o_proj.register_forward_pre_hook(lambda _m, a: (a[0] * keep_o.to(a[0].dtype), *a[1:])),
                 down.register_forward_pre_hook(lambda _m, a: (a[0] * keep_d.to(a[0].dtype), *a[1:]))]
        try:
            logits = model(input_ids=windows.repeat(len(chunk), 1), use_cache=False).logits.float()
        finally:
            for h in hooks:
                h.remove()
        logp = torch.log_softmax(logits, -1).view(len(chunk), n, *logits.shape[1:])
        kl = (logq.exp() * (logq - logp)).sum(-1).mean((1, 2))
        out.extend(float(v) for v in kl)
    return out


def compute_block_damage(model: nn.Module, ranking: Ranking, windows: torch.Tensor,
                         progress: bool = True) -> BlockDamage:
    """Damage of every block variant of `model` (cut by `ranking`) on token `windows` [n, T]."""
    space = SearchSpace.from_config(model.config)
    if not isinstance(space.family.attn_out_proj(space.family.layers(model)[0]), nn.Linear):
        raise LatpruneError(f"block damage needs linear output projections; {space.model_type} has none")
    model.eval()
    with torch.inference_mode():
        logq = torch.log_softmax(model(input_ids=windows, use_cache=False).logits.float(), -1).unsqueeze(0)
    shapes, widths = space.attention_shapes, space.mlp_choices
    n_layers = space.parent["layers"]
    drop = np.asarray(drop_kl(model, windows, [frozenset({i}) for i in range(n_layers)], logq[0]))
    attention, mlp = np.zeros((n_layers, len(shapes))), np.zeros((n_layers, len(widths)))
    for i in tqdm(range(n_layers), desc="block damage", unit="layer", disable=not progress):
        variants = _variants(i, space, ranking)
        probed: dict[int, float] = {}
        for (kind, key, _, _), kl in zip(variants, _kl_per_variant(model, space, i, windows, logq, variants)):
            if kind == "attention":
                attention[i, shapes.index(key)] = kl
            else:
                probed[key] = kl
        xs = [*probed, widths[-1]]
        mlp[i] = np.interp(widths, xs, [*probed.values(), 0.0])
    return BlockDamage(shapes, tuple(widths), drop, attention, mlp)


def damage_key(model: nn.Module, ranking: Ranking, windows: torch.Tensor) -> str:
    """What a block damage table depends on: the parent's config and weights (the first
    values of every tensor), the ranking and the tokens."""
    from latprune.models import model_identity

    h = hashlib.sha1(model_identity(model.config)["config_hash"].encode())
    for a in (ranking.kv_order, ranking.head_order, ranking.neuron_order, windows.numpy()):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    with torch.no_grad():
        for t in model.state_dict().values():
            h.update(t.detach().reshape(-1)[:64].float().numpy().tobytes())
    return h.hexdigest()[:16]


def save_block_damage(damage: BlockDamage, path, key: str) -> None:
    """Write atomically as safetensors, the shapes, widths, version and `key` in the header."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(getattr(damage, k), dtype=np.float64) for k in ("drop", "attention", "mlp")}
    meta = {"latprune_block_damage_version": str(DAMAGE_VERSION), "key": key,
            "attention_shapes": json.dumps(damage.attention_shapes), "mlp_widths": json.dumps(damage.mlp_widths)}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_block_damage(path, key: str) -> BlockDamage | None:
    """The table saved at `path` for `key`; None when there is none, or it is of another key or version."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("latprune_block_damage_version") != str(DAMAGE_VERSION) or meta.get("key") != key:
                return None
            t = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError):  # absent or unreadable: compute it again
        return None
    shapes = tuple(tuple(s) for s in json.loads(meta["attention_shapes"]))
    return BlockDamage(shapes, tuple(json.loads(meta["mlp_widths"])), t["drop"], t["attention"], t["mlp"])


def block_damage(model: nn.Module, ranking: Ranking, windows: torch.Tensor, progress: bool = True,
                 cache: bool = True) -> BlockDamage:
    """The block damage table, reused from this process's last tables or from latprune's
    cache when it was computed for the same model, ranking and tokens (`cache`: the disk
    cache too), else computed (and saved to the disk cache with `cache`)."""
    from latprune.models import cache_dir

    key = damage_key(model, ranking, windows)
    path = cache_dir() / "block_damage" / f"{key}.safetensors"
    if (found := _RECENT.get(key)) is None and cache:
        found = load_block_damage(path, key)
    if found is None:
        found = compute_block_damage(model, ranking, windows, progress)
        if cache:
            try:
                save_block_damage(found, path, key)
            except OSError:  # a read-only cache only costs the recomputation next time
                pass
    _RECENT.pop(key, None)
    _RECENT[key] = found
    while len(_RECENT) > RECENT_TABLES:
        _RECENT.pop(next(iter(_RECENT)))
    return found
