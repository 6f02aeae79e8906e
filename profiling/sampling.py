"""Space-filling samples of a search space for profiling.

Targets are evenly spaced in the square root of the parameter count between the smallest
and largest sub-network (both always included), which puts more samples among small
sub-networks, whose latencies are short and hardest to predict within a relative error;
each target takes the nearest unused architecture from a large seeded pool of uniform
samples. The final order is shuffled (seeded) so
that machine drift does not correlate with size.
"""

from __future__ import annotations

import numpy as np

from latprune.architecture import Architecture
from latprune.checks import is_int
from latprune.errors import LatpruneError
from latprune.space import SearchSpace

MAX_SAMPLES = 5_000  # weeks of profiling on a CPU; the plan's candidate pool grows 60x this


def check_samples(n: int) -> None:
    if not is_int(n) or not 1 <= n <= MAX_SAMPLES:
        raise LatpruneError(f"--samples must be an integer from 1 to {MAX_SAMPLES:,}; got {n!r}")


def profile_plan(space: SearchSpace, n: int, seed: int = 0, pool_factor: int = 60) -> list[Architecture]:
    """`n` distinct uniform architectures stratified by sqrt(parameter count), shuffled."""
    rng = np.random.default_rng(seed)
    largest, smallest = space.largest(), space.smallest()
    if n <= 2:
        return [largest, smallest][:n]
    pool = {a.id: a for a in (space.sample(rng) for _ in range(pool_factor * n))}
    pool.pop(largest.id, None)
    pool.pop(smallest.id, None)
    candidates = list(pool.values())
    params = np.array([space.num_params(a) for a in candidates], dtype=float)
    targets = np.linspace(space.num_params(smallest) ** 0.5, space.num_params(largest) ** 0.5, n)[1:-1] ** 2
    chosen = [largest, smallest, *_nearest_each(candidates, params, targets)]
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def _nearest_each(candidates: list[Architecture], values: np.ndarray, targets: np.ndarray) -> list[Architecture]:
    """For each target in turn, the unused candidate whose value is nearest to it."""
    used = np.zeros(len(candidates), dtype=bool)
    chosen = []
    for target in targets:
        dist = np.where(used, np.inf, np.abs(values - target))
        if not np.isfinite(dist).any():
            break
        i = int(np.argmin(dist))
        used[i] = True
        chosen.append(candidates[i])
    return chosen


AIM_WIDTH = 0.15  # an aimed plan covers aim x (1 +- AIM_WIDTH) of the parent's latency
BUDGET_SHARE = 0.3  # a transfer plan spends every other row at or above this share of the parent's estimate


def _proxy_features(space: SearchSpace, archs: list[Architecture]) -> np.ndarray:
    """[1, parameter fraction, layer fraction] of the parent: what latency is roughly linear in."""
    largest = space.largest()
    return np.array([[1.0, space.num_params(a) / space.num_params(largest), a.num_layers / largest.num_layers]
                     for a in archs])


def aimed_plan(space: SearchSpace, n: int, measured: dict[Architecture, float], aim: float, *, seed: int = 0,
               exclude: set[str] = frozenset(), pool_factor: int = 60) -> list[Architecture]:
    """`n` distinct architectures whose latency, as a fraction of the parent's, is estimated
    (least squares on `measured`: architecture -> fraction) to lie within aim x (1 +- AIM_WIDTH),
    evenly spread over that band; none of `exclude` (ids). Deterministic in its inputs."""
    if len(measured) < 3:
        raise LatpruneError(f"an aimed profile plan needs at least 3 measured architectures; got {len(measured)}")
    archs = list(measured)
    coef, *_ = np.linalg.lstsq(_proxy_features(space, archs), np.array([measured[a] for a in archs]), rcond=None)
    rng = np.random.default_rng(seed + 1)
    pool = {a.id: a for a in (space.sample(rng) for _ in range(pool_factor * n)) if a.id not in exclude}
    candidates = list(pool.values())
    estimate = _proxy_features(space, candidates) @ coef
    return _nearest_each(candidates, estimate, np.linspace(aim * (1 - AIM_WIDTH), aim * (1 + AIM_WIDTH), n))


def spread_plan(space: SearchSpace, n: int, estimate, *, seed: int = 0, pool_factor: int = 60,
                ) -> list[Architecture]:
    """`n` architectures that pin down a new device, in an order whose every prefix does
    (a plan of up to 100 is a prefix of every longer one: one pool). From the fastest and
    the slowest by estimated latencies (`estimate(archs)` -> [len(archs), metrics], e.g. a
    profiled device's predicted prefill and decode ms), then in turn:
    - where budgets lie: the farthest in size (the sum of the standardised log estimates)
      among those estimated at BUDGET_SHARE of the parent or more. A spread over log latency
      alone puts three quarters of the rows below that share, where no budget is, and its
      few large rows are the corners of the (prefill, decode) plane: odd shapes, whose
      ratio to the source the usual shapes do not share. One coordinate leaves the shape
      to the pool's draw;
    - over the whole range: the farthest point over the standardised log estimates.
    The parent is left out (every profile times it as its reference)."""
    rng = np.random.default_rng(seed)
    size = pool_factor * max(n, 100)
    pool = {a.id: a for a in (space.smallest(), *(space.sample(rng) for _ in range(size)))}
    pool.pop(space.largest().id, None)
    candidates = list(pool.values())
    logs = np.log(np.asarray(estimate([*candidates, space.largest()]), dtype=float).reshape(len(candidates) + 1, -1))
    share = (logs[:-1] - logs[-1]).mean(axis=1)  # log of the geometric-mean share of the parent's estimate
    z = (logs[:-1] - logs[:-1].mean(axis=0)) / np.maximum(logs[:-1].std(axis=0), 1e-12)
    size = z.sum(axis=1)
    in_budget = np.where(share >= np.log(BUDGET_SHARE), 0.0, -np.inf)  # added to a distance: only those may win
    chosen = [int(np.argmin(size)), int(np.argmax(size))][: max(n, 0)]
    spread = np.min([np.linalg.norm(z - z[i], axis=1) for i in chosen], axis=0) if chosen else None
    along = np.min([np.abs(size - size[i]) for i in chosen], axis=0) if chosen else None
    while len(chosen) < min(n, len(candidates)):
        budget = along + in_budget
        i = int(np.argmax(budget if len(chosen) % 2 == 0 and budget.max() > 0 else spread))
        chosen.append(i)
        spread = np.minimum(spread, np.linalg.norm(z - z[i], axis=1))
        along = np.minimum(along, np.abs(size - size[i]))
    return [candidates[i] for i in chosen]


def per_layer_plan(space: SearchSpace, n: int, seed: int = 0, pool_factor: int = 60) -> list[Architecture]:
    """`n` distinct heterogeneous architectures (at least 2 layers, not every layer alike:
    each layer's KV groups, heads per group and MLP width drawn independently) stratified by
    sqrt(parameter count) like `profile_plan`, for checking composed latency predictions."""
    if space.family.head_dim_coupled:
        raise LatpruneError(f"per-layer plans need a model whose hidden size does not follow its heads; "
                            f"{space.model_type} derives head_dim from them")
    rng = np.random.default_rng(seed)
    choices, parent = space.choices(), space.parent
    pool: dict[str, Architecture] = {}
    while len(pool) < pool_factor * n:
        depth = int(rng.integers(2, parent["layers"] + 1))
        kv = rng.integers(1, parent["kv_groups"] + 1, depth)
        heads = kv * rng.integers(1, space.max_q_per_kv + 1, depth)
        mlp = rng.choice(choices["mlp"], depth)
        arch = Architecture.per_layer(range(depth), heads.tolist(), kv.tolist(), mlp.tolist(),
                                      int(rng.choice(choices["hidden"])))
        if not arch.is_uniform:
            pool[arch.id] = space.validate(arch)
    candidates = list(pool.values())
    params = np.array([space.num_params(a) for a in candidates], dtype=float)
    lo, hi = params.min() ** 0.5, params.max() ** 0.5
    return _nearest_each(candidates, params, np.linspace(lo, hi, n) ** 2)
