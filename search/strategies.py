"""Search strategies, all spending at most `evaluations` perplexity evaluations:

- `nas`: nevergrad over the SearchSpace's parametrization (ordered choices), with the
  predicted latency as a cheap constraint and a penalty, started from the largest
  feasible member of each one-knob family (the `--keep` recipe, layer dropping, width
  scaling);
- `random`: uniform random architectures of the space, rejected when predicted infeasible;
- `uniform`: every width (heads, MLP, hidden) scaled by one factor, all layers kept (the
  largest feasible factor), then its MLP and hidden size widened into what the budget leaves
  (`width_scaling`);
- `layers`: layer dropping only, least important layers first (largest feasible depth; in a
  refinement's band round also the next depth with its MLP narrowed into the band,
  `layer_dropping`);
- `auto` (the default): `layers` when some depth is predicted to meet the budget, else `nas`
  (`resolve_auto`).
"""

from __future__ import annotations

import warnings

import numpy as np

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.space import KEEP_RECIPE

from .evaluate import Evaluator
from .options import DEFAULT_OPTIMIZER, STRATEGIES


def _largest_feasible(ev: Evaluator, family: list[Architecture]) -> list[Architecture]:
    """The largest member of an ordered (small to large) family that is predicted feasible."""
    ok = [a for a, feasible in zip(family, ev.feasible_many(family)) if feasible]
    return ok[-1:]


def _family(ev: Evaluator, scale: dict[str, float], steps: int = 200) -> list[Architecture]:
    """Architectures where dimension k is the legal value nearest f**scale[k] x its maximum
    (f in (0, 1]; dimensions not in `scale` stay at their maximum), smallest first."""
    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    out: dict[str, Architecture] = {}
    for f in np.linspace(0.0, 1.0, steps + 1)[1:]:
        arch = space.from_values(space.scaled_values(f, scale), order)
        out.setdefault(arch.id, arch)
    return sorted(out.values(), key=space.num_params)


def uniform_family(ev: Evaluator) -> list[Architecture]:
    """Width scaling: heads (KV groups and queries per group), MLP and hidden by one factor."""
    return _family(ev, {"kv_groups": 1.0, "q_per_kv": 1.0, "mlp": 1.0, "hidden": 1.0})


def widened(ev: Evaluator, arch: Architecture) -> list[Architecture]:
    """`arch` and every architecture with its depth and heads and a wider (or equal) MLP and
    hidden size (the hidden size where it is free, not tied to the heads as in GPT-2),
    smallest first."""
    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    values, choices = space.values_of(arch), space.choices()
    wider = [{"mlp": m} for m in choices["mlp"] if m >= values["mlp"]]
    if "hidden" in values:
        wider = [{**w, "hidden": h} for w in wider for h in choices["hidden"] if h >= values["hidden"]]
    return sorted({(a := space.from_values({**values, **w}, order)).id: a for w in wider}.values(),
                  key=space.num_params)


def width_scaling(ev: Evaluator) -> list[Architecture]:
    """The `uniform` strategy's answer: the widest step of width scaling that has a feasible
    member once its MLP and hidden size may widen (`widened`), and its largest such member.
    Head counts step coarsely (1, 4, 9 query heads on SmolLM2), so one factor alone leaves up
    to 30% of a budget unspent between two steps; widening the rest spends it."""
    for step in reversed(uniform_family(ev)):
        if found := _largest_feasible(ev, widened(ev, step)):
            return found
    return []


def layer_family(ev: Evaluator) -> list[Architecture]:
    """Layer dropping: full widths, the least important layers go first."""
    return _family(ev, {"layers": 1.0})


def recipe_family(ev: Evaluator) -> list[Architecture]:
    """The `--keep` recipe (`SearchSpace.scaled`): MLP x f, layers x sqrt(f)."""
    return _family(ev, KEEP_RECIPE)


def depth_family(ev: Evaluator, low_ms: float, high_ms: float) -> list[Architecture]:
    """For each depth (shallowest first): all heads and the full hidden size, with the widest
    MLP whose predicted median `ev.metric` lies in [low_ms, high_ms]; depths where no MLP
    width does are left out. The trade of depth against MLP width at one latency."""
    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    full = {k: v[-1] for k, v in space.choices().items()}
    out = []
    for depth in space.choices()["layers"]:
        archs = [space.from_values({**full, "layers": depth, "mlp": m}, order) for m in space.mlp_choices]
        median = ev.predicted(archs)[ev.metric].to_numpy()
        inside = [a for a, ms in zip(archs, median) if low_ms <= ms <= high_ms]
        out += inside[-1:]
    return out


def layer_dropping(ev: Evaluator) -> list[Architecture]:
    """The `layers` strategy's answer: the deepest feasible depth with every width kept. In a
    band round (`ev.floor_ms` > 0: refinement looking between two fractions of the limit)
    also the next depth up from the deepest one predicted under the band's top, with the
    widest MLP that puts it in the band (`depth_family`). One layer is several percent of a
    budget, coarser than the band, so a depth alone often has no member there; one more layer
    with a slightly narrower MLP does."""
    family = layer_family(ev)
    found = _largest_feasible(ev, family)
    if ev.floor_ms > 0:
        median = ev.predicted(family)[ev.metric].to_numpy()
        below = max((a.num_layers for a, ms in zip(family, median) if ms <= ev.limit_ms), default=0)
        found += [a for a in depth_family(ev, ev.floor_ms, ev.limit_ms) if a.num_layers > below][:1]
    return found


def resolve_auto(ev: Evaluator) -> str:
    """The strategy `auto` stands for under `ev`'s limit: `layers` when some depth (all widths
    kept) is predicted feasible, else `nas`. At equal time for search and recovery, layer
    dropping had the best held-out perplexity and KL at 0.5x, 0.7x and 0.85x of the parent's
    decode latency (benchmarks/results/recovery.md); it finds nothing where the embeddings and
    LM head alone exceed the budget, which is where nas (which also cuts widths) takes over."""
    return "layers" if _largest_feasible(ev, layer_family(ev)) else "nas"


def run_strategy(ev: Evaluator, strategy: str, evaluations: int, seed: int, optimizer: str = DEFAULT_OPTIMIZER,
                 progress=None) -> None:
    """Evaluate candidates with `strategy`; results accumulate in `ev.records`."""
    ev.strategy = strategy
    if strategy == "uniform":
        for arch in width_scaling(ev):
            ev.quality(arch)
    elif strategy == "layers":
        for arch in layer_dropping(ev):
            ev.quality(arch)
    elif strategy == "random":
        rng = np.random.default_rng(seed)
        space, order = ev.ranked.space, ev.ranked.ranking.layer_order
        tries = 0
        while len(ev.records) < evaluations and tries < 200 * evaluations:
            tries += 1
            arch = space.sample(rng, order)
            if arch.id not in ev.records and ev.feasible(arch):
                ev.quality(arch)
                progress and progress(ev)
    elif strategy == "nas":
        _nevergrad(ev, evaluations, seed, optimizer, progress)
    else:
        raise LatpruneError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")


def _nevergrad(ev: Evaluator, evaluations: int, seed: int, optimizer: str, progress) -> None:
    import nevergrad as ng

    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    if optimizer not in ng.optimizers.registry:
        raise LatpruneError(f"unknown nevergrad optimizer '{optimizer}'")
    param = space.parametrization()
    param.random_state = np.random.RandomState(seed)
    def feasible(values: dict) -> bool:
        return ev.feasible(space.from_values(values, order))

    param.register_cheap_constraint(feasible)
    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=20 * evaluations, num_workers=1)
    # Start from known-feasible anchors that the search then improves on: the largest
    # feasible member of each one-knob family (the baselines' answers and the --keep recipe).
    for anchor in [*_largest_feasible(ev, recipe_family(ev)), *_largest_feasible(ev, layer_family(ev)),
                   *width_scaling(ev)]:
        opt.suggest(space.values_of(anchor))
    ask_and_tell(ev, opt, evaluations, lambda values: space.from_values(values, order), progress)


def ask_and_tell(ev: Evaluator, opt, evaluations: int, arch_of, progress=None) -> None:
    """Ask nevergrad's `opt` for candidates and tell it their `ev.loss` until `evaluations`
    architectures are evaluated (or 20x as many asks); `arch_of(value)` is the candidate's
    architecture, or None for one that is none (it gets a loss above every other)."""
    asks = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nevergrad warns when the cheap constraint is hard to satisfy
        while len(ev.records) < evaluations and asks < 20 * evaluations:
            asks += 1
            cand = opt.ask()
            arch = arch_of(cand.value)
            opt.tell(cand, 1e4 if arch is None else ev.loss(arch))
            progress and progress(ev)
