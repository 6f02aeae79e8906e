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
