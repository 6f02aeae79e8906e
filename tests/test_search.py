"""Search on a tiny model with a synthetic predictor: reproducibility and budget handling."""

import pytest
import torch

from latprune import Architecture, LatpruneError, SearchSpace
from latprune.compress.importance import compute_ranking
from latprune.compress.ranked import RankedModel
from latprune.predictors.predictor import Predictor
from latprune.search.evaluate import Evaluator
from latprune.search.options import SearchOptions
from latprune.search.pareto import pareto_front
from latprune.search.strategies import layer_family
from latprune.search.workflow import find_candidates
from latprune.workload import Workload

from conftest import VOCAB, make_tiny, synthetic_profile


@pytest.fixture(scope="module")
def setup():
    model = make_tiny("llama")
    windows = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    ranked = RankedModel(model, None, SearchSpace.from_config(model.config),
                         compute_ranking(model, windows, progress=False), "")
    predictor = Predictor.fit(synthetic_profile(40, config=model.config), "roofline")
    return ranked, predictor, windows


def budget_at(predictor, ranked, fraction):
    parent = predictor.predict([ranked.space.largest()]).iloc[0]
    return fraction * parent.decode_ms


def test_same_seed_same_winner(setup):
    ranked, predictor, windows = setup
    opts = SearchOptions(budget_at(predictor, ranked, 0.8), evaluations=12, seed=3)
    runs = [find_candidates(ranked, predictor, windows, Workload(), opts, progress=False).frame() for _ in range(2)]
    best = [r.sort_values("perplexity").iloc[0] for r in runs]
    assert best[0].arch_id == best[1].arch_id and list(runs[0].arch_id) == list(runs[1].arch_id)
    assert (runs[0].pred_decode_ms_upper <= opts.limit_ms + 1e-9).all()  # only feasible ones are evaluated


def test_every_strategy_respects_the_budget(setup):
    ranked, predictor, windows = setup
    for strategy in ("nas", "random", "uniform", "layers"):
        opts = SearchOptions(budget_at(predictor, ranked, 0.8), evaluations=6, strategy=strategy)
        frame = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False).frame()
        if strategy == "uniform" and frame.empty:
            continue  # full depth may not fit the budget: width scaling alone then has no answer
        assert len(frame) >= 1 and (frame.pred_decode_ms_upper <= opts.limit_ms + 1e-9).all(), strategy


def test_infeasible_budget_names_the_minimum(setup):
    ranked, predictor, windows = setup
    with pytest.raises(LatpruneError, match=r"infeasible: the smallest sub-network's predicted decode_ms .* is "):
        find_candidates(ranked, predictor, windows, Workload(), SearchOptions(1e-6), progress=False)


def test_layer_family_drops_least_important_layers_first(setup):
    ranked, predictor, windows = setup
    family = layer_family(Evaluator(ranked, predictor, windows, Workload(), "decode_ms", 1.0))
    assert family[0].layers == (int(ranked.ranking.layer_order[0]),)


def test_pareto_front_keeps_only_non_dominated():
    import pandas as pd

    frame = pd.DataFrame({"lat": [1, 2, 3, 4, 2.5], "perplexity": [9, 5, 6, 3, 4]})
    assert list(pareto_front(frame, "lat").lat) == [1, 2, 2.5, 4]


def test_the_near_budget_round_reaches_past_the_upper_bound_and_shares_perplexities(setup):
    ranked, predictor, windows = setup
    opts = SearchOptions(budget_at(predictor, ranked, 0.8), evaluations=8, seed=1)
    safe = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False)
    near = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False, bound="median",
                           perplexities=safe.perplexities)
    frame = near.frame()
    assert (frame.pred_decode_ms <= opts.limit_ms + 1e-9).all() and (frame.bound == "median").all()
    assert (frame.pred_decode_ms_upper > opts.limit_ms).any()  # what the safe round may not look at
    assert set(near.perplexities) >= set(safe.records)  # one perplexity per architecture, whichever round


def test_near_budget_finalists_are_verified_but_nothing_over_budget_wins(setup):
    import pandas as pd

    from latprune.profiling.verify import Verification
    from latprune.search.workflow import Prepared, choose_winner, pick_finalists

    ranked, _, _ = setup
    space = ranked.space
    archs = [Architecture.uniform(n, 4, 2, 64, 64) for n in (3, 2, 1)] + [space.smallest()]
    cands = pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                          "perplexity": [5.0, 6.0, 9.0, 20.0], "bound": ["median", "median", "upper", "upper"]})
    prep = Prepared(None, None, Workload(), ranked, SearchOptions(10.0, finalists=2, refine=1))
    finalists = pick_finalists(prep, cands)
    assert [a.id for a in finalists] == [archs[0].id, archs[2].id, archs[3].id]  # best near one, then the safe ones
    measured = {archs[0].id: {"decode_ms": 10.5}, archs[2].id: {"decode_ms": 9.0}, archs[3].id: {"decode_ms": 2.0}}
    winner = choose_winner(prep, Verification(finalists, measured, {"drift": {"decode_ms": 1.0}}))
    assert winner == archs[2]  # the near-budget one measured over 10 ms
