"""Per-layer search (`--space per-layer`) on a tiny Llama with a synthetic predictor."""

import numpy as np
import pytest

from latprune import Architecture, LatpruneError, SearchSpace
from latprune.compress.block_damage import _probe_widths
from latprune.search.evaluate import Evaluator
from latprune.search.knapsack import KNAPSACK
from latprune.search.options import DEFAULT_OPTIMIZER, SearchOptions
from latprune.search.per_layer import FILLED, TAPERED, LayerwiseSpace, check_per_layer, fill, run_per_layer, taper
from latprune.search.workflow import find_candidates
from latprune.workload import Workload

from conftest import make_tiny


@pytest.fixture(scope="module")
def setup(tiny_search):
    return tiny_search


def limit_at(predictor, ranked, fraction):
    return fraction * predictor.predict([ranked.space.largest()]).iloc[0].decode_ms


def test_parametrization_round_trips_a_per_layer_architecture(setup):
    ranked, _, _ = setup
    space = ranked.space
    p = space.parent
    lw = LayerwiseSpace(space, p["hidden"])
    kept = [0, p["layers"] - 1]
    arch = Architecture.per_layer(kept, [p["kv_groups"], 1], [p["kv_groups"], 1], [space.mlp_choices[0],
                                  space.mlp_choices[-1]], p["hidden"])
    assert lw.arch(lw.values(arch)) == arch
    dropped = {k: (0 if k.startswith("mlp") else v) for k, v in lw.values(arch).items()}
    assert lw.arch(dropped) is None  # every layer dropped: no architecture
    assert lw.arch(lw.values(space.largest())) == space.largest()


def test_taper_adds_the_most_important_layers_and_narrows_only_the_least_important(setup):
    ranked, predictor, windows = setup
    order = [int(i) for i in ranked.ranking.layer_order]
    seed = ranked.space.from_values({**{k: v[-1] for k, v in ranked.space.choices().items()}, "layers": 2}, order)
    kept, full = sorted(order[:3]), ranked.space.parent["mlp"]
    narrowest = [ranked.space.mlp_choices[0] if i == order[2] else full for i in kept]
    bounds = predictor.predict([Architecture.per_layer(kept, seed.heads[0], seed.kv_groups[0], m, seed.hidden)
                                for m in (full, narrowest)]).decode_ms_upper
    ev = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", bounds.mean())  # between the two
    tapered = taper(ev, seed, extra=1)
    assert tapered is not None and ev.feasible(tapered)
    assert set(tapered.layers) == set(order[:3])
    widths = dict(zip(tapered.layers, tapered.mlp))
    assert widths[order[0]] == ranked.space.parent["mlp"]  # the most important layer keeps its width...
    assert min(widths.values()) < ranked.space.parent["mlp"]  # ...a less important one is narrowed to fit
    assert taper(ev, seed, extra=len(order)) is None  # more layers than the parent has
    searched = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", bounds.mean())
    run_per_layer(searched, [seed], evaluations=6, seed=0, optimizer=DEFAULT_OPTIMIZER)
    assert searched.records[tapered.id]["strategy"] == TAPERED  # under its own name, for the shortlist


def test_fill_keeps_every_seed_layer_whole_and_adds_the_next_most_important_as_the_largest_block_that_fits(setup):
    ranked, predictor, windows = setup
    space, order, p = ranked.space, [int(i) for i in ranked.ranking.layer_order], ranked.space.parent
    seed = space.from_values({**{k: v[-1] for k, v in space.choices().items()}, "layers": 2}, order)
    whole = (p["heads"], p["kv_groups"], p["mlp"])

    def plus(heads: int, kv: int, mlp: int) -> Architecture:  # the seed and the third most important layer
        shape = {**{i: whole for i in order[:2]}, order[2]: (heads, kv, mlp)}
        kept = sorted(shape)
        return Architecture.per_layer(kept, *([shape[i][k] for i in kept] for k in range(3)), p["hidden"])

    bounds = predictor.predict([plus(*whole), plus(1, 1, space.mlp_choices[0])]).decode_ms_upper
    ev = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", bounds.mean())  # a whole layer does not fit
    filled = fill(ev, seed)
    assert filled is not None and ev.feasible(filled) and set(filled.layers) == set(order[:3])
    shape = {i: (h, kv, m) for i, h, kv, m in zip(filled.layers, filled.heads, filled.kv_groups, filled.mlp)}
    assert shape[order[0]] == shape[order[1]] == whole  # the seed's layers are kept whole
    blocks = [plus(kv * q, kv, m) for kv, q in LayerwiseSpace(space, p["hidden"]).attention for m in space.mlp_choices]
    fitting = [b for b, ok in zip(blocks, ev.feasible_many(blocks)) if ok]
    assert shape[order[2]] != whole and filled in fitting  # the added layer is a smaller block that fits...
    assert space.num_params(filled) == max(map(space.num_params, fitting))  # ...the largest one
    tight = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", ev.upper_ms(seed) * 1.0001)
    assert fill(tight, seed) is None  # no block fits beside the seed
    roomy = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", 2 * ev.upper_ms(space.largest()))
    assert fill(roomy, seed) == space.largest()  # every block fits: the parent, every layer whole


def test_per_layer_round_stays_in_budget_and_never_loses_to_its_seeds(setup):
    ranked, predictor, windows = setup
    opts = SearchOptions(limit_at(predictor, ranked, 0.9), evaluations=10, seed=0, strategy="nas",
                         space="per-layer")
    uniform = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False)
    seeds = [Architecture.from_json(j) for j in uniform.frame().sort_values("perplexity").arch_json.head(2)]
    per = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False, seeds=seeds,
                          perplexities=uniform.perplexities).frame()
    assert per.strategy.isin(["per-layer", FILLED, TAPERED, KNAPSACK]).all() and len(per) == opts.evaluations
    archs = [Architecture.from_json(j) for j in per.arch_json]
    composed = predictor.predict(archs).decode_ms_upper.to_numpy()
    assert (composed <= opts.limit_ms + 1e-9).all()
    assert (per.pred_decode_ms_upper.to_numpy() == composed).all()  # the records carry the composed prediction
    assert not all(a.is_uniform for a in archs)  # it does leave the uniform space
    assert per.perplexity.min() <= uniform.frame().perplexity.min()  # the best seed is evaluated first


def test_per_layer_is_refused_in_one_line_where_heads_set_the_hidden_size():
    gpt2 = SearchSpace.from_config(make_tiny("gpt2").config)
    with pytest.raises(LatpruneError, match="--space per-layer needs a model whose hidden size does not follow"):
        check_per_layer(gpt2)
    with pytest.raises(LatpruneError, match="--space must be one of uniform, per-layer"):
        SearchOptions(10.0, space="layerwise")


def _kl(parent, child, windows) -> float:
    import torch

    with torch.inference_mode():
        logq = torch.log_softmax(parent(input_ids=windows, use_cache=False).logits.float(), -1)
        logp = torch.log_softmax(child(input_ids=windows, use_cache=False).logits.float(), -1)
    return float((logq.exp() * (logq - logp)).sum(-1).mean())


def test_block_damage_is_the_kl_of_the_sub_network_with_that_one_block_changed(setup):
    from latprune.compress.block_damage import compute_block_damage

    ranked, _, windows = setup
    space, p = ranked.space, ranked.space.parent
    damage = compute_block_damage(ranked.model, ranked.ranking, windows[:2], progress=False)
    whole = (p["heads"], p["kv_groups"], p["mlp"])
    layers = list(range(p["layers"]))

    def changed(i: int, shape: tuple | None) -> Architecture:  # layer i reshaped (None: dropped), the rest whole
        shapes = {j: whole for j in layers if j != i} | ({i: shape} if shape else {})
        kept = sorted(shapes)
        return Architecture.per_layer(kept, *([shapes[j][k] for j in kept] for k in range(3)), p["hidden"])

    def kl(arch: Architecture) -> float:
        return _kl(ranked.model, ranked.extract(arch), windows[:2])

    probed = _probe_widths(space)
    assert len(probed) >= 2 and all(damage.mlp[i, 0] > 0 for i in layers)  # narrower MLPs do damage
    for i in layers:
        assert damage.drop[i] == pytest.approx(kl(changed(i, None)), rel=1e-4, abs=1e-7)
        assert damage.of(i, *whole) == 0.0
        kv, q = 1, 1
        assert damage.attention[i, damage.attention_shapes.index((kv, q))] == pytest.approx(
            kl(changed(i, (kv * q, kv, p["mlp"]))), rel=1e-4, abs=1e-7)
    for w in probed:  # measured there, interpolated in between
        assert damage.of(1, p["heads"], p["kv_groups"], w) == pytest.approx(
            kl(changed(1, (p["heads"], p["kv_groups"], w))), rel=1e-4, abs=1e-7)


def test_block_damage_is_computed_once_per_model_ranking_and_tokens(setup, tmp_path, monkeypatch):
    import copy

    import torch

    from latprune.compress import block_damage as bd

    ranked, _, windows = setup
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(bd, "_RECENT", {})
    computed = []
    real = bd.compute_block_damage
    monkeypatch.setattr(bd, "compute_block_damage", lambda *a, **k: computed.append(1) or real(*a, **k))
    first = bd.block_damage(ranked.model, ranked.ranking, windows[:2], progress=False)
    bd._RECENT.clear()  # a new process: the table comes from the disk cache
    again = bd.block_damage(ranked.model, ranked.ranking, windows[:2], progress=False)
    assert len(computed) == 1 and again is not first
    assert again.attention_shapes == first.attention_shapes and again.mlp_widths == first.mlp_widths
    for name in ("drop", "attention", "mlp"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    tuned = copy.deepcopy(ranked.model)  # a fine-tuned super-network: kept in memory only
    with torch.no_grad():
        next(tuned.parameters()).view(-1)[0] += 1.0
    once = bd.block_damage(tuned, ranked.ranking, windows[:2], progress=False, cache=False)
    assert bd.block_damage(tuned, ranked.ranking, windows[:2], progress=False, cache=False) is once
    assert len(computed) == 2 and len(list((tmp_path / "block_damage").iterdir())) == 1
    bd.block_damage(ranked.model, ranked.ranking, windows[2:4], progress=False)  # other tokens: another table
    assert len(computed) == 3


def test_knapsack_finds_the_least_damage_choice_that_fits_as_brute_force_does():
    import itertools

    from latprune.search.knapsack import solve

    rng = np.random.default_rng(0)
    for _ in range(20):
        layers, shapes, depth = 5, 4, int(rng.integers(1, 5))
        drop, damage = rng.random(layers), rng.random((layers, shapes))
        cost, capacity = rng.integers(1, 10, shapes), int(rng.integers(5, 30))
        best = np.inf
        for kept in itertools.combinations(range(layers), depth):
            for pick in itertools.product(range(shapes), repeat=depth):
                if cost[list(pick)].sum() <= capacity:
                    total = sum(damage[i, s] for i, s in zip(kept, pick)) + sum(drop[i] for i in range(layers)
                                                                                 if i not in kept)
                    best = min(best, total)
        found = solve(drop, damage, cost, depth, capacity)
        if not np.isfinite(best):
            assert found is None
            continue
        total, picks = found
        assert total == pytest.approx(best) and len(picks) == depth
        assert cost[list(picks.values())].sum() <= capacity
        assert total == pytest.approx(sum(damage[i, s] for i, s in picks.items())
                                      + sum(drop[i] for i in range(layers) if i not in picks))


def test_least_damage_allocations_fit_the_budget_and_are_searched_and_shortlisted_under_their_name(setup):
    from latprune.compress.block_damage import compute_block_damage
    from latprune.search.knapsack import allocate

    ranked, predictor, windows = setup
    damage = compute_block_damage(ranked.model, ranked.ranking, windows[:2], progress=False)
    limit = limit_at(predictor, ranked, 0.8)
    ev = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", limit, bound="median")
    p = ranked.space.parent
    fits = []
    for depth in range(1, p["layers"] + 1):
        arch = allocate(ev, damage, depth, p["hidden"])
        smallest = Architecture.uniform(depth, 1, 1, ranked.space.mlp_choices[0], p["hidden"])
        fits.append(ev.feasible(smallest))
        assert (arch is not None) == fits[-1]  # found wherever something of that depth fits
        assert arch is None or (arch.num_layers == depth and ev.feasible(arch))
    assert fits[:2] == [True, True] and not fits[-1]
    assert allocate(ev, damage, p["layers"] + 1, p["hidden"]) is None
    tight = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", 1e-3, bound="median")
    assert allocate(tight, damage, 1, p["hidden"]) is None  # nothing fits
    order = [int(i) for i in ranked.ranking.layer_order]
    seed = ranked.space.from_values({**{k: v[-1] for k, v in ranked.space.choices().items()}, "layers": 1}, order)
    searched = Evaluator(ranked, predictor, windows, Workload(), "decode_ms", ev.limit_ms, bound="median")
    run_per_layer(searched, [seed], evaluations=10, seed=0, optimizer=DEFAULT_OPTIMIZER, damage=damage)
    assert allocate(ev, damage, 1, p["hidden"]).id in searched.records
    assert KNAPSACK in {r["strategy"] for r in searched.records.values()}
