"""Layer orders from measured drop damage (`compress/drop_order.py`) on tiny models."""

import itertools

import numpy as np
import pytest
import torch

from latprune import SearchSpace
from latprune.compress.drop_order import drop_kl, greedy_order, one_shot_order
from latprune.compress.extract import extract
from latprune.compress.ranking import Ranking

from conftest import FAMILIES, VOCAB, make_tiny


def _kl(parent, child, windows) -> float:
    with torch.inference_mode():
        logq = torch.log_softmax(parent(input_ids=windows, use_cache=False).logits.float(), -1)
        logp = torch.log_softmax(child(input_ids=windows, use_cache=False).logits.float(), -1)
    return float((logq.exp() * (logq - logp)).sum(-1).mean())


def _without(model, dropped: set[int]):
    """The sub-network of `model` without the layers in `dropped`, every width whole."""
    space = SearchSpace.from_config(model.config)
    kept = [i for i in range(space.parent["layers"]) if i not in dropped]
    values = {**space.values_of(space.largest()), "layers": len(kept)}
    return extract(model, space.from_values(values, kept), Ranking.identity(space), space)


@pytest.mark.parametrize("family", FAMILIES)
def test_drop_kl_is_the_kl_of_the_sub_network_without_those_layers(family):
    model = make_tiny(family)
    windows = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(0))
    sets = [frozenset(s) for k in (1, 2) for s in itertools.combinations(range(3), k)]
    for dropped, kl in zip(sets, drop_kl(model, windows, sets)):  # 9 sequences: more than one pass
        assert kl == pytest.approx(_kl(model, _without(model, dropped), windows), rel=1e-4, abs=1e-7)
    assert drop_kl(model, windows, [frozenset()]) == [pytest.approx(0.0, abs=1e-6)]


def test_a_layer_the_network_does_not_miss_goes_last_in_both_orders_and_greedy_prefixes_are_greedy():
    model = make_tiny("llama")
    with torch.no_grad():  # layer 0 writes nothing to the residual stream: dropping it costs nothing
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    windows = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    one_shot, greedy = one_shot_order(model, windows), greedy_order(model, windows, progress=False)
    assert sorted(one_shot) == sorted(greedy) == [0, 1, 2]
    assert one_shot[-1] == greedy[-1] == 0
    removed = list(greedy[::-1])
    for step in range(3):  # each removal is the least damaging one given the earlier ones
        before = set(removed[:step])
        options = [i for i in range(3) if i not in before]
        damage = drop_kl(model, windows, [frozenset(before | {i}) for i in options])
        assert removed[step] == options[int(np.argmin(damage))]
