import pytest

from latprune import Architecture, LatpruneError


def test_uniform_helper_and_json_round_trip():
    arch = Architecture.uniform(layers=20, heads=6, kv_groups=2, mlp=1024, hidden=512)
    assert arch.layers == tuple(range(20)) and arch.heads == (6,) * 20 and arch.is_uniform
    back = Architecture.from_json(arch.to_json())
    assert back == arch and hash(back) == hash(arch) and back.id == arch.id


def test_id_is_stable_and_distinguishes_architectures():
    a = Architecture.uniform(layers=[0, 2, 5], heads=4, kv_groups=2, mlp=64, hidden=32)
    assert a.id == Architecture.uniform(layers=[0, 2, 5], heads=4, kv_groups=2, mlp=64, hidden=32).id
    assert a.id != Architecture.uniform(layers=[0, 2, 6], heads=4, kv_groups=2, mlp=64, hidden=32).id
    assert len(a.id) == 12


def test_per_layer_broadcasts_and_checks_lengths():
    a = Architecture.per_layer([0, 1], heads=[4, 2], kv_groups=2, mlp=[64, 32], hidden=32)
    assert a.kv_groups == (2, 2) and not a.is_uniform
    with pytest.raises(LatpruneError, match="'mlp' has 3 entries but 2 layers"):
        Architecture.per_layer([0, 1], heads=4, kv_groups=2, mlp=[1, 2, 3], hidden=32)


def test_from_json_errors_are_clear():
    with pytest.raises(LatpruneError, match="not valid JSON"):
        Architecture.from_json("{nope")
    with pytest.raises(LatpruneError, match="lacks hidden"):
        Architecture.from_json('{"layers": 2, "heads": 2, "kv_groups": 1, "mlp": 8}')
