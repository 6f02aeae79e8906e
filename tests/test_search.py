"""Search on a tiny model with a synthetic predictor: reproducibility and budget handling."""

import pytest

from latprune import Architecture, LatpruneError
from latprune.predictors.predictor import Predictor
from latprune.search.evaluate import Evaluator
from latprune.search.options import SearchOptions
from latprune.search.pareto import pareto_front
from latprune.search.strategies import _largest_feasible, layer_family, resolve_auto, uniform_family, width_scaling
from latprune.search.workflow import find_candidates
from latprune.workload import Workload

from conftest import smol_like_space, synthetic_profile


@pytest.fixture(scope="module")
def setup(tiny_search):
    return tiny_search


def budget_at(predictor, ranked, fraction):
    parent = predictor.predict([ranked.space.largest()]).iloc[0]
    return fraction * parent.decode_ms


def test_same_seed_same_winner(setup):
    ranked, predictor, windows = setup
    opts = SearchOptions(budget_at(predictor, ranked, 0.8), evaluations=12, seed=3, strategy="nas")
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


def test_width_scaling_widens_mlp_and_hidden_into_the_budget_its_head_steps_leave(setup):
    ranked, predictor, windows = setup
    space = ranked.space

    def evaluator(limit_ms):
        return Evaluator(ranked, predictor, windows, Workload(), "decode_ms", limit_ms)

    one_factor = uniform_family(evaluator(1.0))
    steps = sorted(set(predictor.predict(one_factor).decode_ms_upper.round(9)))
    gained = 0
    for low, high in zip(steps, steps[1:]):  # budgets between two steps of the one-factor family
        ev = evaluator((low + high) / 2)
        base, (answer,) = _largest_feasible(ev, one_factor)[0], width_scaling(ev)
        kept, best = space.values_of(base), space.values_of(answer)
        assert {k: best[k] for k in ("layers", "kv_groups", "q_per_kv")} == {
            k: kept[k] for k in ("layers", "kv_groups", "q_per_kv")}  # the widest step's heads
        assert best["mlp"] >= kept["mlp"] and best["hidden"] >= kept["hidden"] and ev.feasible(answer)
        for dim, legal in (("mlp", space.choices()["mlp"]), ("hidden", space.choices()["hidden"])):
            if best[dim] < legal[-1]:  # its next step is a candidate too, and does not fit
                step = {**best, dim: legal[legal.index(best[dim]) + 1]}
                assert not ev.feasible(space.from_values(step, ranked.ranking.layer_order)), dim
        gained += answer.id != base.id
    assert gained > len(steps) // 3  # the widened members spend budget one factor cannot


def test_auto_drops_layers_where_a_depth_fits_and_falls_back_to_nas_where_none_does(setup):
    ranked, predictor, windows = setup

    def resolved(limit_ms):
        return resolve_auto(Evaluator(ranked, predictor, windows, Workload(), "decode_ms", limit_ms))

    layers = layer_family(Evaluator(ranked, predictor, windows, Workload(), "decode_ms", 1.0))
    upper = predictor.predict(layers).decode_ms_upper.to_numpy()
    assert resolved(float(upper.min())) == "layers"  # the shallowest depth just fits
    assert resolved(float(upper.min()) * 0.99) == "nas"  # no depth fits: only cutting widths can
    smallest = predictor.predict([ranked.space.smallest()]).decode_ms_upper.iloc[0]
    assert smallest < upper.min() * 0.99  # ...and nas then has feasible sub-networks to search


def test_pareto_front_keeps_only_non_dominated():
    import pandas as pd

    frame = pd.DataFrame({"lat": [1, 2, 3, 4, 2.5], "perplexity": [9, 5, 6, 3, 4]})
    assert list(pareto_front(frame, "lat").lat) == [1, 2, 2.5, 4]


def test_the_near_budget_round_reaches_past_the_upper_bound_and_shares_perplexities(setup):
    ranked, predictor, windows = setup
    opts = SearchOptions(budget_at(predictor, ranked, 0.8), evaluations=8, seed=1, strategy="nas")
    safe = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False)
    near = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False, bound="median",
                           perplexities=safe.perplexities)
    frame = near.frame()
    assert (frame.pred_decode_ms <= opts.limit_ms + 1e-9).all() and (frame.bound == "median").all()
    assert (frame.pred_decode_ms_upper > opts.limit_ms).any()  # what the safe round may not look at
    assert set(near.perplexities) >= set(safe.records)  # one perplexity per architecture, whichever round


class ScaledLaw:
    """A scripted predictor (and device): decode_ms = scale x parameters / 1e4."""

    def __init__(self, space, scale: float = 1.0):
        self.space, self.scale = space, scale

    def ms(self, arch) -> float:
        return self.scale * self.space.num_params(arch) / 1e4

    def predict(self, archs, workload=None):
        import pandas as pd

        ms = [self.ms(a) for a in archs]
        return pd.DataFrame({"decode_ms": ms, "decode_ms_upper": [1.2 * m for m in ms]})


def _pool(space, n: int = 3000):
    """Sampled candidates; bigger ones have better perplexity (as after recovery)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    archs = list({a.id: a for a in (space.sample(rng) for _ in range(n))}.values())
    return pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                         "perplexity": [1e6 / space.num_params(a) for a in archs],
                         "bound": ["median"] * len(archs)}).sort_values("perplexity")


def _refine_against(space, true_scale: float, refit_to: float | None, **options):
    from latprune.search.refine import refine

    law, device = ScaledLaw(space), ScaledLaw(space, true_scale)
    opts = SearchOptions(0.6 * law.ms(space.largest()), **options)
    timed = []

    def measure(arch):
        timed.append(arch)
        return device.ms(arch)

    result = refine(_pool(space), law, Workload(), opts, measure=measure,
                    refit=lambda: None if refit_to is None else ScaledLaw(space, refit_to))
    return result, opts, timed


def test_refinement_refits_and_lands_inside_the_budget():
    space = smol_like_space()
    result, opts, timed = _refine_against(space, 1.08, 1.08, device_measurements=6, finalists=2)
    assert len(timed) <= 6 and len(result.measured) == len(timed) == len({a.id for a in timed})
    landed = result.landed(opts.limit_ms)
    assert len(landed) == 2 and len(timed) == 3  # the first pick ran over; after the refit both landed
    assert all(0.95 * opts.limit_ms <= result.measured[i] <= 0.99 * opts.limit_ms for i in landed)
    assert result.refits == 3


def test_refinement_without_refit_spends_its_allowance_on_misses():
    space = smol_like_space()
    result, opts, timed = _refine_against(space, 1.08, None, device_measurements=4, finalists=2)
    assert len(timed) == 4 and result.landed(opts.limit_ms) == [] and result.refits == 0


def test_a_rerun_takes_the_profiles_refinement_timings_and_continues():
    from latprune.search.refine import refine

    space = smol_like_space()
    first, opts, timed = _refine_against(space, 1.08, 1.08, device_measurements=1, finalists=2)
    assert len(timed) == 1 and first.spent == 1  # interrupted after one timing: its row stays in the profile
    law, device, again = ScaledLaw(space), ScaledLaw(space, 1.08), []
    opts = SearchOptions(opts.latency_ms, device_measurements=6, finalists=2)
    rerun = refine(_pool(space), law, Workload(), opts, known=first.measured, refit=lambda: ScaledLaw(space, 1.08),
                   measure=lambda a: again.append(a) or device.ms(a))
    assert not {a.id for a in again} & set(first.measured)  # nothing timed twice
    assert rerun.reused == 1 and rerun.spent == len(again) == 2 and len(rerun.landed(opts.limit_ms)) == 2
    assert rerun.refits == 3  # refitted on the known row first, then after each new timing


def test_when_no_candidate_is_in_the_band_refinement_searches_there():
    from latprune.search.refine import refine

    space = smol_like_space()
    law = ScaledLaw(space)
    opts = SearchOptions(0.6 * law.ms(space.largest()), device_measurements=6, finalists=2)
    pool = _pool(space)
    share = pool.arch_json.map(lambda j: law.ms(Architecture.from_json(j)) / opts.limit_ms)
    outside, inside = pool[(share < 0.9) | (share > 1.0)], pool[(share >= 0.95) & (share <= 0.99)]
    searched = []

    def search_band(predictor, band):
        searched.append(predictor)
        return inside

    result = refine(outside, law, Workload(), opts, measure=law.ms, refit=lambda: None, search_band=search_band)
    assert len(searched) == 1 and result.band_rounds == 1 and len(result.landed(opts.limit_ms)) == 2
    assert set(result.measured) <= set(inside.arch_id) and len(result.pool) == len(outside) + len(inside)
    import pandas as pd

    nothing = refine(outside, law, Workload(), opts, measure=law.ms, refit=lambda: None,
                     search_band=lambda predictor, band: pd.DataFrame())  # a band round that finds nothing at all
    # a band round, then one up to REACH: both find nothing
    assert nothing.band_rounds == 2 and nothing.measured == {} and len(nothing.pool) == len(outside)


def _frame(space, archs):
    import pandas as pd

    return pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                         "perplexity": [1e6 / space.num_params(a) for a in archs], "bound": ["median"] * len(archs)})


def _depths(space, *layers):
    """Full-width architectures of `space` at these depths."""
    full = {k: v[-1] for k, v in space.choices().items()}
    return [space.from_values({**full, "layers": n}) for n in layers]


def _scripted_band_search(space, law, limit, archs, bands):
    """A band round over `archs` with `law` as the prediction; it records each band it is given in `bands`."""
    def search_band(predictor, band):
        bands.append(band)
        return _frame(space, [a for a in archs if band[0] * limit <= law.ms(a) <= band[1] * limit])

    return search_band


def test_measurements_that_bracket_the_band_get_the_depth_between_them_measured():
    from latprune.search.refine import BAND, refine

    space = smol_like_space()
    law = ScaledLaw(space)
    shallow, middle, deep = _depths(space, 14, 15, 16)
    limit = law.ms(middle)  # the depth between is predicted at 100% of the limit: outside BAND
    opts = SearchOptions(limit, device_measurements=6, finalists=1)
    device = {shallow.id: 0.90 * limit, deep.id: 1.05 * limit, middle.id: 0.97 * limit}  # it lands in truth
    bands = []
    search_band = _scripted_band_search(space, law, limit, (shallow, middle, deep), bands)
    result = refine(_frame(space, [shallow, deep]), law, Workload(), opts, measure=lambda a: device[a.id],
                    refit=lambda: None, search_band=search_band, known={i: device[i] for i in (shallow.id, deep.id)})
    assert result.landed(opts.limit_ms) == [middle.id] and result.spent == 1 and result.band_rounds == 2
    assert bands[0] == BAND and bands[1] == pytest.approx((law.ms(shallow) / limit, law.ms(deep) / limit))
    assert bands[1][0] > law.ms(shallow) / limit and bands[1][1] < law.ms(deep) / limit  # strictly between
    none = refine(_frame(space, [shallow, deep]), law, Workload(), opts, measure=lambda a: device[a.id],
                  refit=lambda: None, search_band=lambda predictor, band: _frame(space, []),
                  known={i: device[i] for i in (shallow.id, deep.id)})
    assert none.spent == 0 and none.band_rounds == 2  # nothing between them: refinement stops


@pytest.mark.parametrize("device_says", ["over", "under"])
def test_a_band_candidate_the_device_puts_outside_the_band_gets_the_next_depth_measured(device_says):
    from latprune.search.refine import BAND, REACH, refine

    space = smol_like_space()
    law = ScaledLaw(space)
    below, in_band, above = _depths(space, 15, 16, 17)
    limit = law.ms(in_band) / 0.97  # the predictor puts the middle depth in BAND, the others outside it
    assert law.ms(below) < BAND[0] * limit and BAND[1] * limit < law.ms(above) < REACH * limit
    opts = SearchOptions(limit, device_measurements=6, finalists=1)
    nearest = below if device_says == "over" else above  # the depth to measure next
    device = {in_band.id: (1.04 if device_says == "over" else 0.90) * limit, nearest.id: 0.97 * limit}
    bands = []
    result = refine(_frame(space, [in_band]), law, Workload(), opts, measure=lambda a: device[a.id],
                    refit=lambda: None, search_band=_scripted_band_search(space, law, limit, (below, in_band, above),
                                                                         bands))
    assert list(result.measured) == [in_band.id, nearest.id] and result.landed(opts.limit_ms) == [nearest.id]
    between = (0.0, 0.97) if device_says == "over" else (0.97, REACH)
    assert bands == [BAND, pytest.approx(between)]  # the band round finds only the measured one; then past it


def test_with_no_candidate_in_the_band_refinement_still_times_the_one_nearest_the_budget():
    from latprune.search.refine import BAND, REACH, refine

    space = smol_like_space()
    law = ScaledLaw(space)
    shallow, nearest = _depths(space, 10, 16)
    limit = law.ms(nearest) / 0.995  # predicted just over BAND, still under the limit: no band candidate
    opts = SearchOptions(limit, device_measurements=6, finalists=1)
    bands = []
    result = refine(_frame(space, [shallow, nearest]), law, Workload(), opts, measure=lambda a: 0.97 * limit,
                    refit=lambda: None, search_band=_scripted_band_search(space, law, limit, (shallow, nearest), bands))
    assert list(result.measured) == [nearest.id] and result.landed(opts.limit_ms) == [nearest.id]
    assert bands == [BAND, pytest.approx((0.0, REACH))]


def test_a_candidate_given_a_short_distillation_is_timed_up_to_the_limit_an_untried_one_only_in_the_band():
    from latprune.search.refine import BAND, next_candidate

    space = smol_like_space()
    law = ScaledLaw(space)
    shallow, nearest = _depths(space, 10, 16)
    opts = SearchOptions(law.ms(nearest) / 0.995)  # predicted over BAND, under the limit
    assert BAND[1] * opts.limit_ms < law.ms(nearest) < opts.limit_ms
    pool = _frame(space, [shallow, nearest])
    assert next_candidate(pool, law, Workload(), opts, set()) is None
    tried = pool.assign(recovered_perplexity=[float("nan"), 30.0])
    assert next_candidate(tried, law, Workload(), opts, set()) == nearest
    assert next_candidate(tried, law, Workload(), opts, {nearest.id}) is None
    over = SearchOptions(law.ms(nearest) / 1.001)  # over the limit: not even a tried one
    assert next_candidate(tried, law, Workload(), over, set()) is None


def test_no_device_measurements_means_no_refinement():
    space = smol_like_space()
    result, _, timed = _refine_against(space, 1.0, 1.0, device_measurements=0)
    assert timed == [] and result.measured == {}


def test_refined_finalists_come_first_and_nothing_over_budget_wins(setup):
    import pandas as pd

    from latprune.profiling.verify import Verification
    from latprune.search.refine import Refinement
    from latprune.search.workflow import Prepared, passing_finalists, pick_finalists

    ranked, _, _ = setup
    space = ranked.space
    archs = [Architecture.uniform(n, 4, 2, 64, 64) for n in (3, 2, 1)] + [space.smallest()]
    cands = pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                          "perplexity": [5.0, 6.0, 9.0, 20.0], "bound": ["median", "median", "upper", "upper"]})
    from latprune.profiling.devices import get_device

    prep = Prepared(get_device("cpu"), None, Workload(), ranked, SearchOptions(10.0, finalists=2))
    refinement = Refinement({archs[0].id: 10.2, archs[1].id: 9.7})  # the first ran over in refinement
    finalists, preferred = pick_finalists(prep, cands, refinement)
    assert [a.id for a in finalists] == [archs[1].id, archs[2].id] and preferred == 1  # landed one + safe fallback
    measured = {archs[1].id: {"decode_ms": 10.1}, archs[2].id: {"decode_ms": 9.0}}
    verified = Verification(finalists, measured, {"drift": {"decode_ms": 1.0}})
    assert passing_finalists(prep, verified, preferred) == [archs[2]]  # over budget on verification: fallback
    measured[archs[1].id]["decode_ms"] = 9.9
    assert passing_finalists(prep, verified, preferred) == [archs[1]]
    no_refinement, preferred = pick_finalists(prep, cands, Refinement())
    assert [a.id for a in no_refinement] == [archs[2].id, archs[3].id] and preferred == 2
    for a in measured.values():
        a["decode_ms"] = 11.0
    with pytest.raises(LatpruneError, match="no finalist meets decode_ms <= 10 ms"):
        passing_finalists(prep, verified, 1)


def test_a_finalist_never_goes_before_a_measured_candidate_that_covers_it(setup):
    import pandas as pd

    from latprune.profiling.devices import get_device
    from latprune.search.refine import Refinement
    from latprune.search.workflow import Prepared, pick_finalists

    ranked, _, _ = setup
    deep, middle, shallow = (Architecture.uniform(n, 4, 2, 64, 64) for n in (3, 2, 1))
    cands = pd.DataFrame({"arch_id": [a.id for a in (deep, middle, shallow)],
                          "arch_json": [a.to_json() for a in (deep, middle, shallow)],
                          "perplexity": [5.0, 6.0, 9.0], "recovered_perplexity": [float("nan"), float("nan"), 4.0],
                          "bound": ["median"] * 3})
    prep = Prepared(get_device("cpu"), None, Workload(), ranked, SearchOptions(10.0, finalists=2))
    refinement = Refinement({deep.id: 9.7, shallow.id: 9.0, middle.id: 9.4})  # only the deep one landed
    finalists, preferred = pick_finalists(prep, cands, refinement)
    assert [a.id for a in finalists] == [deep.id, middle.id, shallow.id] and preferred == 2  # shallow: a fallback
    refinement.measured[deep.id] = 10.5  # over: the two under it, the one that covers the other first
    assert [a.id for a in pick_finalists(prep, cands, refinement)[0][:2]] == [middle.id, shallow.id]
    assert middle.covers(shallow) and not shallow.covers(middle) and deep.covers(deep)
    narrower = Architecture.per_layer([0, 1], [4, 4], [2, 2], [64, 32], 64)
    assert middle.covers(narrower) and not narrower.covers(middle)
    assert not Architecture.per_layer([0, 2], [4, 4], [2, 2], [64, 64], 64).covers(middle)  # another layer


def test_recovery_aware_choice_takes_the_best_after_equal_short_distillation(setup, monkeypatch):
    import latprune.compress.distill as distill_module
    import latprune.search.recovery as recovery
    from latprune.search.workflow import Prepared

    ranked, _, windows = setup
    archs = [Architecture.uniform(n, 4, 2, 64, 64) for n in (3, 2)]
    steps_given = []

    def fake_distill(child, teacher, train, cfg, checkpoint=None, progress=True):
        steps_given.append(cfg.steps)
        child.distilled = True
        return child

    monkeypatch.setattr(distill_module, "distill", fake_distill)
    monkeypatch.setattr(recovery, "calibration_windows", lambda *a, **k: windows)
    monkeypatch.setattr(recovery, "perplexity", lambda child, w: {3: 9.0, 2: 7.0}[child.config.num_hidden_layers])
    prep = Prepared(None, None, Workload(), ranked, SearchOptions(10.0, finalist_steps=4))
    winner, child, info = recovery.select_by_recovery(prep, archs, progress=False)
    assert winner == archs[1] and child.distilled and steps_given == [4, 4]  # the same steps each, the best wins
    assert info["calibration_perplexity_after"] == {archs[0].id: 9.0, archs[1].id: 7.0}
    prep = Prepared(None, None, Workload(), ranked, SearchOptions(10.0, finalist_steps=0))
    assert recovery.select_by_recovery(prep, archs, progress=False) == (archs[0], None, {})


def test_depth_family_trades_depth_for_the_widest_mlp_in_the_band():
    from types import SimpleNamespace

    from latprune.search.evaluate import Evaluator
    from latprune.search.strategies import depth_family

    space = smol_like_space()
    ranked = SimpleNamespace(space=space, ranking=SimpleNamespace(layer_order=list(range(30))))
    predictor = Predictor.fit(synthetic_profile(40), "roofline")
    limit = budget_at(predictor, ranked, 0.6)
    ev = Evaluator(ranked, predictor, None, Workload(), "decode_ms", limit)
    family = depth_family(ev, 0.95 * limit, limit)
    depths = [a.num_layers for a in family]
    assert len(family) >= 3 and depths == sorted(set(depths))
    full = {k: v[-1] for k, v in space.choices().items()}
    for arch in family:
        values = space.values_of(arch)
        assert {**values, "layers": 0, "mlp": 0} == {**full, "layers": 0, "mlp": 0}  # every head, full hidden size
        assert 0.95 * limit <= ev.prediction(arch).decode_ms <= limit
        wider = [m for m in space.mlp_choices if m > values["mlp"]]
        if wider:  # the widest MLP that stays in the band
            above = space.from_values({**values, "mlp": wider[0]}, ranked.ranking.layer_order)
            assert ev.prediction(above).decode_ms > limit
    assert family[0].mlp[0] > family[-1].mlp[0]  # shallower, wider


def test_candidates_of_other_depths_get_the_short_distillation_before_the_device(setup, monkeypatch):
    import latprune.compress.distill as distill_module
    import latprune.search.recovery as recovery
    from latprune.search.refine import by_rank
    from latprune.search.workflow import Prepared

    ranked, predictor, windows = setup
    limit = budget_at(predictor, ranked, 0.9)
    distilled = []

    def fake_distill(child, teacher, train, cfg, checkpoint=None, progress=True):
        distilled.append(child.config.num_hidden_layers)
        return child

    monkeypatch.setattr(distill_module, "distill", fake_distill)
    monkeypatch.setattr(recovery, "calibration_windows", lambda *a, **k: windows)
    monkeypatch.setattr(recovery, "perplexity", lambda child, w: 1e7 / child.num_parameters())  # larger: better
    monkeypatch.setattr(recovery, "BAND", (0.5, 1.0))  # a band the tiny space's coarse steps can land in
    opts = SearchOptions(limit, finalists=2, finalist_steps=3, evaluations=8, strategy="nas")
    prep = Prepared(None, predictor, Workload(), ranked, opts)
    cands = find_candidates(ranked, predictor, windows, Workload(), opts, progress=False, bound="median").frame()
    ranked_cands, tried = recovery.rank_by_recovery(prep, cands, progress=False)
    assert 2 <= len(tried.models) <= 4 and len(distilled) == len(tried.models)
    assert len(set(distilled)) >= 2  # not only the depth zero-shot perplexity prefers
    assert set(cands.arch_id) <= set(ranked_cands.arch_id)  # the depth family joins the candidates
    shown = ranked_cands.recovered_perplexity.notna()
    assert shown.sum() == len(tried.models) and shown.iloc[:len(tried.models)].all()  # tried ones first...
    assert ranked_cands.recovered_perplexity.iloc[:len(tried.models)].is_monotonic_increasing  # ...best first
    assert ranked_cands.equals(by_rank(ranked_cands))
    # a tried finalist is not distilled again; an untried one gets the same steps, then the best wins
    first = Architecture.from_json(ranked_cands.arch_json.iloc[0])
    other = Architecture.from_json(ranked_cands[~shown].arch_json.iloc[0])
    distilled.clear()
    winner, child, info = recovery.select_by_recovery(prep, [other, first], progress=False, tried=tried)
    assert distilled == [other.num_layers] and info["steps_each"] == 3
    best = min((other, first), key=lambda a: tried.models[a.id][0])
    assert winner == best and child is tried.models[best.id][1] and other.id != first.id
    monkeypatch.setattr(recovery.Tried, "add", lambda *a, **k: pytest.fail("no distillation expected"))
    assert recovery.select_by_recovery(prep, [first], progress=False, tried=tried)[:2] == \
        (first, tried.models[first.id][1])  # a single finalist: its distilled model, no further steps


def test_the_per_layer_shortlist_takes_every_taper_and_the_best_of_each_space(setup):
    import numpy as np
    import pandas as pd

    from latprune.search.per_layer import FILLED, TAPERED
    from latprune.search.recovery import shortlist
    from latprune.search.workflow import Prepared

    ranked, predictor, _ = setup
    rng = np.random.default_rng(0)
    archs = list({a.id: a for a in (ranked.space.sample(rng) for _ in range(50))}.values())[:9]
    opts = SearchOptions(10.0, strategy="layers", space="per-layer", finalists=2)
    cands = pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                          "strategy": ["per-layer", "per-layer", "layers", FILLED, "layers", "per-layer",
                                       TAPERED, TAPERED, TAPERED],
                          "perplexity": [10.0, 11.0, 12.0, 8.0, 13.0, 9.0, 14.0, 15.0, 16.0],
                          "pred_decode_ms": [9.7, 9.7, 9.7, 9.95, 9.7, 9.0, 9.97, 9.3, 9.8]})
    prep = Prepared(None, predictor, Workload(), ranked, opts)  # band: 9.5-9.9 ms
    _, picked = shortlist(cands, prep, progress=False)
    assert [a.id for a in picked] == [archs[i].id for i in (0, 6, 8, 2)]  # best; tapers up to the limit; uniform
    above = cands.assign(pred_decode_ms=[9.7, 9.7, 9.95, 9.7, 9.95, 9.0, 9.97, 9.3, 9.8])  # no uniform in the band...
    _, picked = shortlist(above, prep, progress=False)
    assert [a.id for a in picked] == [archs[i].id for i in (3, 0, 6, 8, 2)]  # ...its best up to the limit still goes
    uniform_first = cands.assign(perplexity=[10.0, 11.0, 5.0, 8.0, 13.0, 9.0, 14.0, 15.0, 16.0])
    _, picked = shortlist(uniform_first, prep, progress=False)
    assert [a.id for a in picked] == [archs[i].id for i in (2, 0, 6, 8)]  # the best per-layer mix joins


def test_a_per_layer_band_round_starts_from_the_best_uniform_candidates_predicted_at_or_under_the_band(setup):
    import pandas as pd

    from latprune.search.refine import _per_layer_seeds

    ranked, predictor, _ = setup
    space, order = ranked.space, ranked.ranking.layer_order
    full = {k: v[-1] for k, v in space.choices().items()}
    depths = [space.from_values({**full, "layers": d}, order) for d in space.choices()["layers"]]
    mixed = Architecture.per_layer([0, 1], [4, 2], [2, 1], [64, 32], full["hidden"])
    archs = [*depths, mixed]
    ms = predictor.predict(depths).decode_ms.to_numpy()
    opts = SearchOptions(float(ms[-2]), space="per-layer")  # every depth but the deepest fits
    pool = pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                         "perplexity": [float(len(archs) - i) for i in range(len(archs))]})  # the later, the better
    seeds = _per_layer_seeds(predictor, pool, opts, Workload(), 1.0)
    assert seeds == [depths[-2], depths[-3]]  # the best two uniform ones that fit; never a per-layer one


class ScriptedSession:
    """A device session whose paired ratios are scripted per architecture id."""

    def __init__(self, ratios: dict[str, float]):
        self.ratios, self.timed, self.workload = ratios, [], Workload()
        self.scale = {"prefill_ms": 100.0, "decode_ms": 10.0}

    def time(self, arch, role):
        self.timed.append((arch.id, role))
        r = self.ratios[arch.id]
        figures = lambda ms: (("ratio", r), ("raw_ms", r * ms), ("reference_ms", ms))  # noqa: E731
        return {f"{m}_{k}": v for m in ("prefill", "decode") for k, v in figures(self.scale[f"{m}_ms"])}


@pytest.mark.parametrize("preferred_ratio, fallback_timed", [(0.95, False), (1.05, True)])
def test_the_fallback_is_timed_only_when_no_refined_finalist_meets_the_budget(setup, preferred_ratio, fallback_timed):
    import pandas as pd

    from latprune.profiling.devices import get_device
    from latprune.search.refine import Refinement
    from latprune.search.workflow import Prepared, verify_finalists

    ranked, _, _ = setup
    near, safe = Architecture.uniform(3, 4, 2, 64, 64), Architecture.uniform(2, 4, 2, 64, 64)
    cands = pd.DataFrame({"arch_id": [near.id, safe.id], "arch_json": [near.to_json(), safe.to_json()],
                          "perplexity": [5.0, 9.0], "bound": ["median", "upper"]})
    prep = Prepared(get_device("cpu"), None, Workload(), ranked, SearchOptions(10.0, finalists=2))
    session = ScriptedSession({near.id: preferred_ratio, safe.id: 0.5})
    verified, preferred = verify_finalists(prep, cands, session, Refinement({near.id: 9.6}), progress=False)
    assert preferred == 1 and verified.measured[near.id]["decode_ms"] == pytest.approx(10 * preferred_ratio)
    assert len(session.timed) == (6 if fallback_timed else 3) and {r for _, r in session.timed} == {"verify"}
    assert list(cands.finalist) == [True, fallback_timed]


def test_when_the_preferred_finalists_run_over_on_the_device_the_next_refined_one_goes_before_the_safe_one(setup):
    import pandas as pd

    from latprune.profiling.devices import get_device
    from latprune.search.refine import Refinement
    from latprune.search.workflow import Prepared, passing_finalists, verify_finalists

    ranked, _, _ = setup
    archs = [Architecture.uniform(n, 4, 2, 64, 64) for n in (3, 2, 1)] + [ranked.space.smallest()]
    cands = pd.DataFrame({"arch_id": [a.id for a in archs], "arch_json": [a.to_json() for a in archs],
                          "perplexity": [5.0, 6.0, 7.0, 20.0], "bound": ["median", "median", "median", "upper"]})
    prep = Prepared(get_device("cpu"), None, Workload(), ranked, SearchOptions(10.0, finalists=2))
    session = ScriptedSession(dict(zip((a.id for a in archs), (1.05, 1.02, 0.93, 0.5))))
    refinement = Refinement(dict(zip((a.id for a in archs[:3]), (9.8, 9.6, 9.0))))  # two landed, one further under
    verified, preferred = verify_finalists(prep, cands, session, refinement, progress=False)
    assert preferred == 2 and [a.id for a in verified.finalists] == [a.id for a in archs[:3]]
    assert len(session.timed) == 9  # both preferred, then the third refined one; the safe one is never timed
    assert passing_finalists(prep, verified, preferred) == [archs[2]]
    assert list(cands.finalist) == [True, True, True, False]


def test_a_band_round_of_layer_dropping_adds_the_next_depth_with_its_mlp_narrowed_into_the_band():
    from types import SimpleNamespace

    from latprune.search.evaluate import Evaluator
    from latprune.search.strategies import layer_dropping, layer_family

    space = smol_like_space()
    ranked = SimpleNamespace(space=space, ranking=SimpleNamespace(layer_order=list(range(30))))
    predictor = Predictor.fit(synthetic_profile(40), "roofline")
    probe = Evaluator(ranked, predictor, None, Workload(), "decode_ms", 1e9)
    depths = layer_family(probe)
    depth_ms = dict(zip((a.num_layers for a in depths), probe.predicted(depths).decode_ms))
    low, high = depth_ms[15] * 1.001, depth_ms[16] * 0.999  # the band between two depths: no depth in it
    plain = Evaluator(ranked, predictor, None, Workload(), "decode_ms", high, bound="median")
    assert [a.num_layers for a in layer_dropping(plain)] == [15]  # an ordinary round: the deepest that fits
    band = Evaluator(ranked, predictor, None, Workload(), "decode_ms", high, bound="band", floor_ms=low)
    (found,) = layer_dropping(band)
    values, full = space.values_of(found), {k: v[-1] for k, v in space.choices().items()}
    assert values["layers"] == 16 and values["mlp"] < full["mlp"]
    assert {**values, "mlp": 0} == {**full, "layers": 16, "mlp": 0}  # every head, full hidden size
    assert low <= band.prediction(found).decode_ms <= high


def test_an_optimizer_without_the_nas_strategy_is_one_line():
    with pytest.raises(LatpruneError, match="--optimizer drives the nevergrad searches"):
        SearchOptions(10.0, strategy="layers", optimizer="NGOpt")
