"""Checks on the real embedded default model (SmolLM2-135M-Instruct)."""

import pytest
import torch

from latprune.compress.extract import extract
from latprune.compress.quality import perplexity
from latprune.compress.ranking import Ranking
from latprune.text import heldout_windows

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def ranked():
    from latprune.compress.ranked import rank_model

    return rank_model("default", progress=False)


def test_full_architecture_reproduces_default_model(ranked):
    ids = heldout_windows(ranked.tokenizer, ranked.text, 64, 2)
    child = ranked.extract(ranked.space.largest())
    with torch.no_grad():
        diff = (child(ids).logits - ranked.model(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_importance_slicing_beats_prefix_and_random(ranked):
    space = ranked.space
    held = heldout_windows(ranked.tokenizer, ranked.text, 128, 8)
    arch = space.scaled(0.7, ranked.ranking.layer_order)
    ppl_importance = perplexity(ranked.extract(arch), held)
    prefix, rnd = Ranking.identity(space), Ranking.random(space, 0)
    ppl_prefix = perplexity(extract(ranked.model, space.scaled(0.7, prefix.layer_order), prefix, space), held)
    ppl_random = perplexity(extract(ranked.model, space.scaled(0.7, rnd.layer_order), rnd, space), held)
    assert ppl_importance < ppl_prefix and ppl_importance < ppl_random
