"""Distillation: shapes unchanged, loss goes down, exact resumption."""

import pytest
import torch

from latprune import Architecture, LatpruneError, SearchSpace
from latprune.compress.distill import DistillConfig, distill
from latprune.compress.extract import extract
from latprune.compress.quality import perplexity

from conftest import VOCAB, make_tiny


def setup(seed=0):
    teacher = make_tiny("llama", seed=seed)
    arch = Architecture.uniform([0, 2], 4, 2, 64, 48)
    student = extract(teacher, arch, space=SearchSpace.from_config(teacher.config))
    windows = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    return teacher, student, windows


def test_distillation_keeps_shapes_and_moves_towards_the_teacher():
    teacher, student, windows = setup()
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    before = perplexity(student, windows)
    cfg = DistillConfig(steps=30, batch_size=4, grad_accum=1, lr=3e-3, warmup=2, lm_weight=1.0)
    distill(student, teacher, windows, cfg, progress=False)
    assert {k: v.shape for k, v in student.state_dict().items()} == shapes
    assert student.config.num_hidden_layers == 2
    assert perplexity(student, windows) < before


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    cfg = DistillConfig(steps=6, batch_size=4, grad_accum=2, lr=1e-3, warmup=2, save_every=1)
    teacher, straight, windows = setup()
    distill(straight, teacher, windows, cfg, progress=False)

    teacher, resumed, windows = setup()
    distill(resumed, teacher, windows, cfg, checkpoint=tmp_path / "ck", progress=False, stop_after=3)
    teacher, fresh, windows = setup()  # a new process would start from the parent's slice again
    distill(fresh, teacher, windows, cfg, checkpoint=tmp_path / "ck", progress=False)
    for (name, a), b in zip(straight.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_architecture_is_one_clear_line(tmp_path):
    cfg = DistillConfig(steps=4, batch_size=4, grad_accum=1, warmup=1, save_every=1)
    teacher, student, windows = setup()
    distill(student, teacher, windows, cfg, checkpoint=tmp_path / "ck", progress=False, stop_after=2)
    wider = Architecture.uniform([0, 1, 2], 4, 2, 64, 48)
    other = extract(teacher, wider, space=SearchSpace.from_config(teacher.config))
    with pytest.raises(LatpruneError, match="holds the weights of another architecture"):
        distill(other, teacher, windows, cfg, checkpoint=tmp_path / "ck", progress=False)
