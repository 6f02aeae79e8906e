"""Per-layer allocation by block damage (`--space per-layer`): at a given depth, the blocks
(which parent layers, and each one's attention shape and MLP width) of least summed damage
(`compress/block_damage.py`) whose composed latency prediction meets the limit.

The composed prediction of an architecture of L layers is the mean over its layers of the
prediction for L layers all shaped like that one (`predictors.predictor.compose`), so at a
fixed depth every block has its own cost and the choice is a multiple-choice knapsack,
solved exactly by dynamic programming over costs rounded up to 1/BINS of the limit (so what
it returns is never over the limit as composed). Summed damage stands for the damage of the
whole choice; the depth, which zero-shot damage misjudges, is left to the recovery-aware
shortlist (`recovery.shortlist`).
"""

from __future__ import annotations

import numpy as np

from latprune.architecture import Architecture
from latprune.compress.block_damage import BlockDamage

from .evaluate import Evaluator

BINS = 600  # cost resolution, in parts of the limit
KNAPSACK = "per-layer knapsack"  # the strategy column of its candidates
DEPTHS = (0, 2, 4)  # candidates this many layers deeper than the seed (spread, for the recovery-aware choice)


def shapes_of(damage: BlockDamage) -> list[tuple[int, int, int]]:
    """Every block shape (query heads, KV groups, MLP width) the table scores."""
    return [(kv * q, kv, m) for kv, q in damage.attention_shapes for m in damage.mlp_widths]


def solve(drop: np.ndarray, damage: np.ndarray, cost: np.ndarray, depth: int, capacity: int,
          ) -> tuple[float, dict[int, int]] | None:
    """Keep exactly `depth` of the layers, each with one shape s at `damage[layer, s]` and
    integer `cost[s]`, the others dropped at `drop[layer]`, with summed cost <= `capacity`,
    at least summed damage: (that damage, {kept layer: shape}); None when none fits."""
    n_layers = damage.shape[0]
    best = np.full((depth + 1, capacity + 1), np.inf)  # [kept so far, cost used] -> least damage
    best[0, 0] = 0.0
    took = []
    for i in range(n_layers):
        new = best + drop[i]
        arg = np.full(new.shape, -1)
        for s in np.argsort(cost, kind="stable"):
            c = int(cost[s])
            if c > capacity:
                break
            cand = np.full_like(best, np.inf)
            cand[1:, c:] = best[:-1, :capacity + 1 - c] + damage[i, s]
            better = cand < new
            new[better], arg[better] = cand[better], s
        took.append(arg)
        best = new
    used = int(np.argmin(best[depth]))
    if not np.isfinite(best[depth, used]):
        return None
    total, kept, left = float(best[depth, used]), depth, used
    picks: dict[int, int] = {}
    for i in reversed(range(n_layers)):
        s = int(took[i][kept, left])
        if s >= 0:
            picks[i] = s
            kept, left = kept - 1, left - int(cost[s])
    return total, picks


def allocate(ev: Evaluator, damage: BlockDamage, depth: int, hidden: int) -> Architecture | None:
    """The `depth`-layer architecture at `hidden` of least summed block damage whose composed
    prediction (the evaluator's bound) meets its limit; None when none does."""
    space = ev.ranked.space
    if not 1 <= depth <= space.parent["layers"]:
        return None
    shapes = shapes_of(damage)
    uniform = [Architecture.uniform(depth, h, kv, m, hidden) for h, kv, m in shapes]
    per_layer_ms = ev.predicted(uniform)[ev.column].to_numpy() / depth
    table = np.array([[damage.of(i, h, kv, m) for h, kv, m in shapes] for i in range(space.parent["layers"])])
    limit = ev.limit_ms
    for _ in range(3):  # a device's per-layer timings can rescale the composed prediction: tighten and retry
        cost = np.ceil(per_layer_ms / limit * BINS).astype(int)
        found = solve(damage.drop, table, cost, depth, BINS)
        if found is None:
            return None
        kept = sorted(found[1])
        arch = Architecture.per_layer(kept, [shapes[found[1][i]][0] for i in kept],
                                      [shapes[found[1][i]][1] for i in kept], [shapes[found[1][i]][2] for i in kept],
                                      hidden)
        if ev.feasible(arch):
            return arch
        if ev.upper_ms(arch) <= ev.limit_ms:  # under a band round's floor
            return None
        limit *= ev.limit_ms / ev.upper_ms(arch)
    return None
