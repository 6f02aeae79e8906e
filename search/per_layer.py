"""Per-layer search (`--space per-layer`): every parent layer is dropped or kept with its own
KV groups, query heads per group and MLP width (the hidden size is shared), searched with
nevergrad against the composed latency prediction (`Predictor.predict`).

It starts from the uniform round's best candidates (`seeds`), from the best one filled
(`fill`: every seed layer kept whole, the most important dropped layers added back with the
largest block that still fits), from importance-guided tapers of it (`taper`: keep one to
three more of the most important layers and narrow the MLPs of the least important kept
layers until the prediction fits) and from the allocations of least block damage at depths
around it (`knapsack.allocate`: which layers, heads and MLP widths, by the measured damage of
each block variant). The search then mutates layer by layer from there, so its
best is never worse zero-shot than its seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latprune.architecture import Architecture
from latprune.compress.block_damage import BlockDamage
from latprune.errors import LatpruneError
from latprune.space import SearchSpace

from .evaluate import Evaluator
from .knapsack import DEPTHS, KNAPSACK, allocate
from .strategies import ask_and_tell

DROPPED = 0  # an MLP width of 0 in the parametrization: the layer is dropped
FILLED = "per-layer fill"  # the strategy column of the filled seed (`fill`), evaluated first
TAPERED = "per-layer taper"  # the strategy column of the tapers (`taper`), evaluated next
EXTRA_LAYERS = (1, 2, 3)  # tapers keep this many more layers than the seed


def check_per_layer(space: SearchSpace) -> None:
    """Refuse, in one line, a parent whose layers cannot differ in heads."""
    if space.family.head_dim_coupled:
        raise LatpruneError(f"--space per-layer needs a model whose hidden size does not follow its heads; "
                            f"{space.model_type} derives head_dim from them (use --space uniform)")


@dataclass(frozen=True)
class LayerwiseSpace:
    """The per-layer parametrization at one hidden size: per parent layer, an MLP width
    (DROPPED drops the layer) and an attention shape (KV groups, query heads per group),
    both ordered choices, smallest first."""

    space: SearchSpace
    hidden: int

    @property
    def attention(self) -> list[tuple[int, int]]:
        """(kv_groups, q_per_kv) pairs, fewest attention weights first."""
        return list(self.space.attention_shapes)

    def parametrization(self):
        import nevergrad as ng

        n, attn = self.space.parent["layers"], len(self.attention)
        mlp = [DROPPED, *self.space.mlp_choices]
        return ng.p.Dict(**{f"mlp{i}": ng.p.TransitionChoice(mlp) for i in range(n)},
                         **{f"attn{i}": ng.p.TransitionChoice(list(range(attn))) for i in range(n)})

    def arch(self, values: dict[str, int]) -> Architecture | None:
        """The architecture of parametrization `values`; None when every layer is dropped."""
        kept = [i for i in range(self.space.parent["layers"]) if values[f"mlp{i}"] != DROPPED]
        if not kept:
            return None
        shapes = [self.attention[values[f"attn{i}"]] for i in kept]
        return Architecture.per_layer(kept, [kv * q for kv, q in shapes], [kv for kv, _ in shapes],
                                      [int(values[f"mlp{i}"]) for i in kept], self.hidden)

    def values(self, arch: Architecture) -> dict[str, int]:
        """Inverse of `arch` (dropped layers keep the full attention shape)."""
        index = {pair: k for k, pair in enumerate(self.attention)}
        out = {}
        for i in range(self.space.parent["layers"]):
            out[f"mlp{i}"], out[f"attn{i}"] = DROPPED, len(index) - 1
        for i, h, kv, m in zip(arch.layers, arch.heads, arch.kv_groups, arch.mlp):
            out[f"mlp{i}"], out[f"attn{i}"] = m, index[(kv, h // kv)]
        return out


def taper(ev: Evaluator, seed: Architecture, extra: int) -> Architecture | None:
    """`seed` with its `extra` most important dropped layers added back (shaped like its
    widest layer), then the MLPs of the least important half of the kept layers narrowed one
    step at a time, round robin, least important first, just until the prediction fits;
    None when even the narrowest such taper does not."""
    order = [int(i) for i in ev.ranked.ranking.layer_order]
    added = [i for i in order if i not in seed.layers][:extra]
    if len(added) < extra:
        return None
    shape = {i: (h, kv, m) for i, h, kv, m in zip(seed.layers, seed.heads, seed.kv_groups, seed.mlp)}
    widest = max(shape.values(), key=lambda s: s[2])
    kept = sorted([*seed.layers, *added])
    least = [i for i in reversed(order) if i in kept][: max(1, len(kept) // 2)]
    widths = list(ev.ranked.space.mlp_choices)

    def at(level: int) -> Architecture:
        mlp = {i: shape.get(i, widest)[2] for i in kept}
        for step in range(level):
            i = least[step % len(least)]
            mlp[i] = widths[max(0, widths.index(mlp[i]) - 1)] if mlp[i] in widths else widths[0]
        return Architecture.per_layer(kept, [shape.get(i, widest)[0] for i in kept],
                                      [shape.get(i, widest)[1] for i in kept], [mlp[i] for i in kept], seed.hidden)

    lo, hi = 0, len(least) * len(widths)
    if not ev.feasible(at(hi)):
        return None
    while lo < hi:  # the fewest narrowing steps that fit (predicted latency falls with each step)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ev.feasible(at(mid)) else (mid + 1, hi)
    return at(lo)


def fill(ev: Evaluator, seed: Architecture) -> Architecture | None:
    """`seed` with its dropped layers added back, most important first, each as the largest
    block (by parameters, over every attention shape and MLP width) that keeps the prediction
    feasible, until none fits; None when not even the smallest block fits. A layer-dropped
    seed sits a fraction of a layer under its budget (one layer is several percent of it);
    this spends that rest on more depth, which recovers best after distillation, without
    touching any layer the seed kept."""
    lw = LayerwiseSpace(ev.ranked.space, seed.hidden)
    arch = seed
    for i in [int(i) for i in ev.ranked.ranking.layer_order if int(i) not in seed.layers]:
        blocks = [_with_layer(arch, i, kv * q, kv, m) for kv, q in lw.attention for m in ev.ranked.space.mlp_choices]
        fits = [a for a, ok in zip(blocks, ev.feasible_many(blocks)) if ok]
        if not fits:
            break
        arch = max(fits, key=ev.ranked.space.num_params)
    return arch if arch.layers != seed.layers else None


def _with_layer(arch: Architecture, i: int, heads: int, kv: int, mlp: int) -> Architecture:
    """`arch` with parent layer `i` added, shaped (heads, kv, mlp)."""
    shape = {**{j: s for j, *s in zip(arch.layers, arch.heads, arch.kv_groups, arch.mlp)}, i: [heads, kv, mlp]}
    kept = sorted(shape)
    return Architecture.per_layer(kept, [shape[j][0] for j in kept], [shape[j][1] for j in kept],
                                  [shape[j][2] for j in kept], arch.hidden)


def run_per_layer(ev: Evaluator, seeds: list[Architecture], evaluations: int, seed: int, optimizer: str,
                  progress=None, *, damage: BlockDamage | None = None) -> None:
    """Evaluate up to `evaluations` feasible per-layer architectures (results in
    `ev.records`): the first seed filled (strategy FILLED) and tapered (TAPERED), with a
    `damage` table the least-damage allocations at depths around it (KNAPSACK), then the
    seeds and nevergrad's mutations of them all."""
    import nevergrad as ng

    check_per_layer(ev.ranked.space)
    lw = LayerwiseSpace(ev.ranked.space, seeds[0].hidden)
    param = lw.parametrization()
    param.random_state = np.random.RandomState(seed)

    def feasible(values: dict) -> bool:
        arch = lw.arch(values)
        return arch is not None and ev.feasible(arch)

    param.register_cheap_constraint(feasible)
    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=20 * evaluations, num_workers=1)
    grown = [(FILLED, fill(ev, seeds[0])), *((TAPERED, taper(ev, seeds[0], extra)) for extra in EXTRA_LAYERS)]
    if damage is not None:
        grown += [(KNAPSACK, allocate(ev, damage, seeds[0].num_layers + extra, lw.hidden)) for extra in DEPTHS]
    for name, arch in grown:  # under their own names, so that the recovery-aware shortlist can take them
        if arch is not None and len(ev.records) < evaluations:
            ev.strategy = name
            ev.quality(arch)
    ev.strategy = "per-layer"
    for start in [*seeds, *(a for _, a in grown if a is not None)]:
        if start.hidden == lw.hidden and ev.feasible(start):
            opt.suggest(lw.values(start))
    ask_and_tell(ev, opt, evaluations, lw.arch, progress)
