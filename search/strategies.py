"""Search strategies, all spending at most `evaluations` perplexity evaluations:

- `nas`: nevergrad over the SearchSpace's parametrization (ordered choices), with the
  predicted latency as a cheap constraint and a penalty;
- `random`: uniform random architectures of the space, rejected when predicted infeasible;
- `uniform`: every width (heads, MLP, hidden) scaled by one factor, all layers kept
  (largest feasible factor);
- `layers`: layer dropping only, least important layers first (largest feasible depth).
"""

from __future__ import annotations

import warnings

import numpy as np

from latprune.architecture import Architecture
from latprune.errors import LatpruneError

from .evaluate import Evaluator

DEFAULT_OPTIMIZER = "PortfolioDiscreteOnePlusOne"  # benchmarks/results/optimizer_choice.md
STRATEGIES = ("nas", "random", "uniform", "layers")


def _largest_feasible(ev: Evaluator, family: list[Architecture]) -> list[Architecture]:
    """The largest member of an ordered (small to large) family that is predicted feasible."""
    pred = ev.predicted(family)[f"{ev.metric}_upper"].to_numpy()
    ok = [a for a, p in zip(family, pred) if p <= ev.limit_ms]
    return ok[-1:]


def uniform_family(ev: Evaluator, steps: int = 200) -> list[Architecture]:
    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    choices = space.choices()
    out: dict[str, Architecture] = {}
    for f in np.linspace(0.0, 1.0, steps + 1)[1:]:
        values = {k: min(v, key=lambda c: abs(c - f * v[-1])) for k, v in choices.items()}
        values["layers"] = choices["layers"][-1]
        arch = space.from_values(values, order)
        out.setdefault(arch.id, arch)
    return sorted(out.values(), key=space.num_params)


def layer_family(ev: Evaluator) -> list[Architecture]:
    space, order = ev.ranked.space, ev.ranked.ranking.layer_order
    full = {k: v[-1] for k, v in space.choices().items()}
    return [space.from_values({**full, "layers": n}, order) for n in space.choices()["layers"]]


def run_strategy(ev: Evaluator, strategy: str, evaluations: int, seed: int, optimizer: str = DEFAULT_OPTIMIZER,
                 progress=None) -> None:
    """Evaluate candidates with `strategy`; results accumulate in `ev.records`."""
    ev.strategy = strategy
    if strategy == "uniform":
        for arch in _largest_feasible(ev, uniform_family(ev)):
            ev.quality(arch)
    elif strategy == "layers":
        for arch in _largest_feasible(ev, layer_family(ev)):
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
    # Start from the baselines' answers (largest feasible width scaling and layer dropping):
    # known-feasible anchors that the search then improves on.
    for anchor in _largest_feasible(ev, uniform_family(ev)) + _largest_feasible(ev, layer_family(ev)):
        opt.suggest(space.values_of(anchor))
    asks = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nevergrad warns when the cheap constraint is hard to satisfy
        while len(ev.records) < evaluations and asks < 20 * evaluations:
            asks += 1
            cand = opt.ask()
            arch = space.from_values(cand.value, order)
            opt.tell(cand, ev.loss(arch))
            progress and progress(ev)
