import numpy as np
import pytest
import torch

from latprune import SearchSpace
from latprune.compress.importance import compute_ranking
from latprune.compress.ranking import Ranking

from conftest import VOCAB, make_tiny


def test_dead_structures_rank_last():
    model = make_tiny("llama")  # 8 query heads in 4 KV groups, MLP 128, 3 layers
    layer = model.model.layers[1]
    with torch.no_grad():
        layer.self_attn.v_proj.weight[2 * 16 : 3 * 16] = 0  # KV group 2 -> its heads output zero
        layer.mlp.up_proj.weight[[5, 77]] = 0  # neurons 5 and 77 are dead
    windows = torch.randint(0, VOCAB, (4, 16))
    ranking = compute_ranking(model, windows, progress=False)
    assert ranking.kv_order[1][-1] == 2
    assert set(ranking.head_order[1][-2:]) == {4, 5}
    assert set(ranking.neuron_order[1][-2:]) == {5, 77}
    assert sorted(ranking.layer_order) == [0, 1, 2]


def test_ranking_round_trips_and_refuses_other_models(tmp_path):
    model = make_tiny("qwen2")
    ranking = compute_ranking(model, torch.randint(0, VOCAB, (2, 8)), progress=False, meta={"x": 1})
    ranking.save(tmp_path / "r.safetensors")
    back = Ranking.load(tmp_path / "r.safetensors")
    assert np.array_equal(back.neuron_order, ranking.neuron_order) and back.meta["x"] == 1
    other = SearchSpace.from_config(make_tiny("gpt2").config)
    with pytest.raises(Exception, match="does not match the model"):
        back.check(other)


def test_the_drop_kl_criterion_orders_layers_by_one_shot_damage_and_keeps_every_other_order():
    from latprune.compress.drop_order import one_shot_order
    from latprune.compress.importance import drop_kl_windows

    model = make_tiny("llama", seed=3)
    with torch.no_grad():  # layer 1 adds nothing to the residual stream: the network never misses it
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    windows = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    influence = compute_ranking(model, windows, progress=False)
    kl = compute_ranking(model, windows, progress=False, layer_criterion="drop-kl")
    assert np.array_equal(kl.layer_order, one_shot_order(model, drop_kl_windows(windows)))
    assert kl.layer_order[-1] == 1 and kl.meta["layer_criterion"] == "drop-kl"
    for name in ("kv_order", "head_order", "neuron_order", "channel_order"):
        assert np.array_equal(getattr(kl, name), getattr(influence, name))
    with pytest.raises(ValueError, match="layer_criterion"):
        compute_ranking(model, windows, progress=False, layer_criterion="cosine")


def test_rankings_of_each_layer_criterion_are_saved_apart_and_reused(tmp_path, monkeypatch):
    from latprune.compress import importance

    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "cache"))
    model = make_tiny("qwen2")
    windows = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    first = {c: importance.load_or_compute_ranking(model, tmp_path, windows, False, c)
             for c in importance.LAYER_CRITERIA}
    assert len(list(tmp_path.glob("latprune_importance-*.safetensors"))) == 2
    monkeypatch.setattr(importance, "compute_ranking", lambda *a, **k: pytest.fail("recomputed a saved ranking"))
    for criterion, ranking in first.items():
        again = importance.load_or_compute_ranking(model, tmp_path, windows, False, criterion)
        assert again.meta["layer_criterion"] == criterion
        assert np.array_equal(again.layer_order, ranking.layer_order)
