"""Super-network: sub-networks are weight-shared slices; training is resumable."""

import copy

import torch

from latprune import Architecture, SearchSpace
from latprune.compress.extract import extract
from latprune.compress.importance import compute_ranking
from latprune.compress.supernet import SupernetConfig, WeightSharing, sandwich, train_supernet

from conftest import VOCAB, make_tiny


def setup():
    parent = make_tiny("llama")
    windows = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0))
    space = SearchSpace.from_config(parent.config)
    return parent, windows, space, compute_ranking(parent, windows, progress=False)


def test_slices_are_the_extracted_sub_networks_and_the_full_slice_is_the_parent(tokens):
    parent, _, space, ranking = setup()
    sharing = WeightSharing(parent, ranking, space)
    with torch.no_grad():
        assert torch.equal(sharing.logits(space.largest(), tokens), parent(input_ids=tokens).logits)
        for arch in (Architecture.uniform([0, 2], 4, 2, 64, 48), space.smallest()):
            child = extract(parent, arch, ranking, space)
            assert torch.equal(sharing.logits(arch, tokens), child(input_ids=tokens).logits), arch.describe()


def test_a_step_on_one_slice_moves_the_super_network_and_the_other_slices(tokens):
    parent, _, space, ranking = setup()
    sharing = WeightSharing(parent, ranking, space)
    a, b = Architecture.uniform([0, 2], 4, 2, 64, 48), Architecture.uniform([0, 1, 2], 2, 1, 32, 32)
    with torch.no_grad():
        before_b = sharing.logits(b, tokens)
    opt = torch.optim.SGD(list(sharing.params.values()), lr=0.1)
    sharing.logits(a, tokens).square().mean().backward()
    layer1 = [n for n, p in sharing.params.items() if ".layers.1." in n]
    assert layer1 and all(sharing.params[n].grad is None for n in layer1)  # a does not use parent layer 1
    opt.step()
    with torch.no_grad():
        assert not torch.equal(sharing.logits(b, tokens), before_b)  # b shares a's weights
        assert torch.equal(sharing.logits(b, tokens), extract(parent, b, ranking, space)(input_ids=tokens).logits)


def test_sandwich_is_seeded_and_resumed_training_equals_uninterrupted(tmp_path):
    parent, windows, space, ranking = setup()
    cfg = SupernetConfig(steps=4, batch_size=2, random_archs=1, lr=1e-3, warmup=1, save_every=1)
    assert sandwich(space, ranking, cfg, 3) == sandwich(space, ranking, cfg, 3)
    assert sandwich(space, ranking, cfg, 0)[:2] == [space.largest(), space.smallest()]
    straight = train_supernet(copy.deepcopy(parent), parent, ranking, windows, cfg, progress=False)
    train_supernet(copy.deepcopy(parent), parent, ranking, windows, cfg, tmp_path / "ck", progress=False,
                   stop_after=2)
    resumed = train_supernet(copy.deepcopy(parent), parent, ranking, windows, cfg, tmp_path / "ck", progress=False)
    for (name, x), y in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name
    assert any(not torch.equal(x, y) for x, y in zip(straight.state_dict().values(), parent.state_dict().values()))


def test_a_super_network_of_another_parent_or_text_is_refused(tmp_path):
    import json

    import pytest

    from latprune import LatpruneError
    from latprune.compress.ranked import RankedModel
    from latprune.compress.supernet import attach_supernet, save_supernet

    parent, _, space, ranking = setup()

    class Tok:
        def save_pretrained(self, folder):
            (folder / "tokenizer.json").write_text("{}")

    ranked = RankedModel(parent, Tok(), space, ranking, "text", text_key="abc")
    folder = tmp_path / "sn"
    assert save_supernet(ranked, copy.deepcopy(parent), SupernetConfig(steps=1), folder, {})["text_key"] == "abc"
    assert attach_supernet(ranked, folder).weights is not None
    with pytest.raises(LatpruneError, match="another text"):
        attach_supernet(RankedModel(parent, Tok(), space, ranking, "text", text_key="xyz"), folder)
    meta = json.loads((folder / "latprune_supernet.json").read_text())
    (folder / "latprune_supernet.json").write_text(json.dumps({**meta, "parent": {"name": "x", "config_hash": "0"}}))
    with pytest.raises(LatpruneError, match="another parent"):
        attach_supernet(ranked, folder)
    with pytest.raises(LatpruneError, match="is not a super-network"):
        attach_supernet(ranked, tmp_path)
