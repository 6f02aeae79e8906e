"""Extraction: exactness of the full architecture, independence from the parent, checkpoints."""

import json
import subprocess
import sys

import numpy as np
import torch

import latprune
from latprune import Architecture, SearchSpace
from latprune.compress.checkpoint import save_compressed
from latprune.compress.extract import extract
from latprune.compress.ranking import Ranking

from conftest import make_tiny


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def test_full_architecture_reproduces_parent_for_every_family(tiny, tokens):
    space = SearchSpace.from_config(tiny.config)
    for ranking in (Ranking.identity(space), Ranking.random(space, seed=7)):
        child = extract(tiny, space.largest(), ranking, space)
        assert (logits(child, tokens) - logits(tiny, tokens)).abs().max() <= 1e-4


def test_sub_network_has_smaller_shapes_and_runs(tiny, tokens):
    space = SearchSpace.from_config(tiny.config)
    arch = space.sample(np.random.default_rng(5))
    child = extract(tiny, arch, Ranking.random(space, 1), space)
    assert child.config.num_hidden_layers == arch.num_layers
    out = logits(child, tokens)
    assert out.shape == (*tokens.shape, tiny.config.vocab_size) and torch.isfinite(out).all()


def test_parent_is_untouched_and_child_owns_its_weights(tokens):
    parent = make_tiny("qwen3")
    before = logits(parent, tokens).clone()
    child = extract(parent, SearchSpace.from_config(parent.config).largest())
    with torch.no_grad():
        for p in child.parameters():
            p.mul_(0.5)
    assert torch.equal(logits(parent, tokens), before)


def test_dropping_a_layer_keeps_the_cache_consistent():
    parent = make_tiny("llama")
    space = SearchSpace.from_config(parent.config)
    child = extract(parent, Architecture.uniform([0, 2], 8, 4, 128, 64), space=space)
    ids = torch.randint(0, 100, (1, 10))
    with torch.no_grad():
        full = child(ids).logits[:, -1]
        past = child(ids[:, :-1], use_cache=True).past_key_values
        step = child(ids[:, -1:], past_key_values=past).logits[:, -1]
    assert (full - step).abs().max() < 1e-4


def test_uniform_checkpoint_loads_with_plain_transformers_in_fresh_process(tmp_path, tokens):
    parent = make_tiny("llama")
    space = SearchSpace.from_config(parent.config)
    arch = Architecture.uniform([0, 2], 4, 2, 64, 48)
    child = extract(parent, arch, Ranking.random(space, 2), space)
    save_compressed(child, arch, tmp_path / "m", parent.config)
    torch.save(tokens, tmp_path / "tokens.pt")
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM; "
        f"m = AutoModelForCausalLM.from_pretrained(r'{tmp_path / 'm'}').eval(); "
        f"t = torch.load(r'{tmp_path / 'tokens.pt'}'); "
        f"torch.save(m(t).logits.detach(), r'{tmp_path / 'out.pt'}'); "
        "assert 'latprune' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), logits(child, tokens))
    meta = json.loads((tmp_path / "m" / "latprune.json").read_text())
    assert meta["architecture_id"] == arch.id and meta["uniform"]


def test_per_layer_checkpoint_round_trips_through_latprune(tmp_path, tokens):
    parent = make_tiny("gpt_neox")
    arch = Architecture.per_layer([0, 1, 2], heads=4, kv_groups=4, mlp=[128, 32, 80], hidden=64)
    child = extract(parent, arch)
    save_compressed(child, arch, tmp_path / "m", parent.config)
    loaded = latprune.load_model(tmp_path / "m")
    assert torch.equal(logits(loaded, tokens), logits(child, tokens))


def test_output_directories_are_not_private(tmp_path):
    import os
    import stat

    parent = make_tiny("llama")
    space = SearchSpace.from_config(parent.config)
    save_compressed(extract(parent, space.largest()), space.largest(), tmp_path / "m", parent.config)
    mode = stat.S_IMODE(os.stat(tmp_path / "m").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IXOTH  # mkdtemp's 0700 must not leak into the result
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
