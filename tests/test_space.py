import numpy as np
import pytest

from latprune import Architecture, LatpruneError, SearchSpace
from latprune.compress.extract import extract

from conftest import FAMILIES, make_tiny, smol_like_space, tiny_configs


def test_gqa_choices_keep_heads_a_multiple_of_groups():
    space = smol_like_space()
    c = space.choices()
    assert c["kv_groups"] == (1, 2, 3) and c["q_per_kv"] == (1, 2, 3)
    assert c["mlp"][0] == 64 and c["mlp"][-1] == 1536 and c["hidden"][-1] == 576
    rng = np.random.default_rng(0)
    for _ in range(200):
        arch = space.validate(space.sample(rng))
        assert all(h % kv == 0 for h, kv in zip(arch.heads, arch.kv_groups))
    assert space.largest() == Architecture.uniform(30, 9, 3, 1536, 576)
    assert space.smallest() == Architecture.uniform(1, 1, 1, 64, 64)


@pytest.mark.parametrize(
    "arch, message",
    [
        (Architecture.uniform(30, 4, 3, 1536, 576), r"heads=4 .* legal: 3, 6, 9"),
        (Architecture.uniform(30, 9, 3, 2048, 576), r"mlp=2048 .* legal: 1\.\.1536"),
        (Architecture.uniform(30, 9, 3, 1536, 640), r"hidden=640 .* legal: 1\.\.576"),
        (Architecture.uniform([0, 30], 9, 3, 1536, 576), r"layer index 30 out of range; legal: 0\.\.29"),
        (Architecture.uniform(30, 8, 4, 1536, 576), r"kv_groups=4 .* legal: 1\.\.3"),
    ],
)
def test_invalid_architectures_name_dimension_and_legal_values(arch, message):
    with pytest.raises(LatpruneError, match=message):
        smol_like_space().validate(arch)


def test_unsupported_family_lists_supported():
    from transformers import BertConfig

    with pytest.raises(LatpruneError, match="'bert' is not supported; supported: .*gpt2.*llama.*qwen3"):
        SearchSpace.from_config(BertConfig())


def test_coupled_families_tie_hidden_to_heads():
    space = SearchSpace.from_config(tiny_configs()["gpt2"])
    assert "hidden" not in space.choices()
    with pytest.raises(LatpruneError, match="hidden must equal heads x 16"):
        space.validate(Architecture.uniform(3, 2, 2, 64, 64))


@pytest.mark.parametrize("family", FAMILIES)
def test_num_params_is_exact(family):
    model = make_tiny(family)
    space = SearchSpace.from_config(model.config)
    rng = np.random.default_rng(3)
    for arch in (space.largest(), space.smallest(), space.sample(rng), space.sample(rng)):
        child = extract(model, arch, space=space)
        unique = {id(p): p for p in child.parameters()}.values()
        assert sum(p.numel() for p in unique) == space.num_params(arch)


def test_scaled_hits_the_parameter_target():
    space = smol_like_space()
    full = space.num_params(space.largest())
    for keep in (0.85, 0.7, 0.5):
        assert abs(space.num_params(space.scaled(keep)) / full - keep) < 0.02
