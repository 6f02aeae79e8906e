"""`Ranking`: per-structure orders, most important first, that every extraction follows.

Slicing keeps the first k entries of each order, so a ranking is a reordering of the
parent's weights under which any sub-network keeps the most important parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latprune.errors import LatpruneError
from latprune.files import atomic_file
from latprune.space import SearchSpace

RANKING_VERSION = 1


@dataclass
class Ranking:
    """Orders (most important first) of layers, KV groups and query heads per layer, MLP
    neurons per layer and hidden channels; scores kept for inspection."""

    layer_order: np.ndarray  # [L]
    kv_order: np.ndarray  # [L, K]
    head_order: np.ndarray  # [L, H]
    neuron_order: np.ndarray  # [L, M]
    channel_order: np.ndarray  # [D]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_scores(cls, layer: np.ndarray, head: np.ndarray, neuron: np.ndarray, channel: np.ndarray,
                    kv_groups: int, meta: dict | None = None) -> Ranking:
        """Orders from importance scores (higher = more important). A KV group's score is the
        sum of its query heads' scores."""
        n_layers, n_heads = head.shape
        group = head.reshape(n_layers, kv_groups, n_heads // kv_groups).sum(-1)

        def desc(x: np.ndarray) -> np.ndarray:
            return np.argsort(-x, axis=-1, kind="stable")

        return cls(desc(layer), desc(group), desc(head), desc(neuron), desc(channel),
                   {"layer": layer, "head": head, "neuron": neuron, "channel": channel}, meta or {})

    @classmethod
    def identity(cls, space: SearchSpace) -> Ranking:
        """Prefix slicing: keep the first structures in their stored order."""
        p = space.parent
        rows = lambda n: np.tile(np.arange(n), (p["layers"], 1))  # noqa: E731
        return cls(np.arange(p["layers"]), rows(p["kv_groups"]), rows(p["heads"]), rows(p["mlp"]),
                   np.arange(p["hidden"]), meta={"kind": "prefix"})

    @classmethod
    def random(cls, space: SearchSpace, seed: int = 0) -> Ranking:
        """Random slicing, for comparison."""
        rng = np.random.default_rng(seed)
        p = space.parent
        rows = lambda n: np.stack([rng.permutation(n) for _ in range(p["layers"])])  # noqa: E731
        return cls(rng.permutation(p["layers"]), rows(p["kv_groups"]), rows(p["heads"]), rows(p["mlp"]),
                   rng.permutation(p["hidden"]), meta={"kind": "random", "seed": seed})

    def check(self, space: SearchSpace) -> Ranking:
        """Refuse a ranking made for a model of other dimensions."""
        p = space.parent
        want = {"layer_order": (p["layers"],), "kv_order": (p["layers"], p["kv_groups"]),
                "head_order": (p["layers"], p["heads"]), "neuron_order": (p["layers"], p["mlp"]),
                "channel_order": (p["hidden"],)}
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise LatpruneError(f"importance file does not match the model: {name} has shape "
                                    f"{getattr(self, name).shape}, the model needs {shape}; recompute it")
        return self

    # ---- storage: safetensors with JSON metadata ---------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically as safetensors; metadata (version, model, calibration) in the header."""
        from safetensors.numpy import save_file

        tensors = {name: np.ascontiguousarray(getattr(self, name), dtype=np.int64)
                   for name in ("layer_order", "kv_order", "head_order", "neuron_order", "channel_order")}
        tensors.update({f"score_{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.scores.items()})
        meta = {"latprune_ranking_version": str(RANKING_VERSION), "meta": json.dumps(self.meta)}
        with atomic_file(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Ranking:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LatpruneError(f"importance file '{path}' does not exist")
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("latprune_ranking_version") != str(RANKING_VERSION):
                raise LatpruneError(f"'{path}' is not a latprune importance file of version {RANKING_VERSION}")
            t = {k: f.get_tensor(k) for k in f.keys()}
        scores = {k.removeprefix("score_"): v for k, v in t.items() if k.startswith("score_")}
        return cls(t["layer_order"], t["kv_order"], t["head_order"], t["neuron_order"], t["channel_order"],
                   scores, json.loads(header.get("meta", "{}")))

    # ---- selections ---------------------------------------------------------
    def layer_heads(self, layer: int, heads: int, kv_groups: int, q_per_group: int) -> tuple[list[int], list[int]]:
        """(query heads, KV groups) kept in parent `layer`: the top KV groups, and in each, its
        top `heads / kv_groups` query heads; in parent order, group by group (as GQA needs)."""
        per = heads // kv_groups
        groups = sorted(int(g) for g in self.kv_order[layer][:kv_groups])
        rank = {int(h): r for r, h in enumerate(self.head_order[layer])}
        q: list[int] = []
        for g in groups:
            members = range(g * q_per_group, (g + 1) * q_per_group)
            q.extend(sorted(sorted(members, key=rank.__getitem__)[:per]))
        return q, groups


def as_index(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.long)
