"""Distillation: shapes unchanged, loss goes down, exact resumption."""

import pytest
import torch

from latprune import Architecture, LatpruneError, SearchSpace
from latprune.compress.distill import DistillConfig, distill, kd_loss
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


def reference_kd_loss(s_logits, t_logits, batch, t, lm_weight):
    """The loss written with autograd ops, as the fused `KDLoss` must reproduce it."""
    log_s, log_t = torch.log_softmax(s_logits / t, -1), torch.log_softmax(t_logits / t, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum() / (batch.shape[0] * batch.shape[1])
    ce = torch.nn.functional.cross_entropy(s_logits[:, :-1].reshape(-1, s_logits.shape[-1]), batch[:, 1:].reshape(-1))
    return t * t * kl + lm_weight * ce


@pytest.mark.parametrize("temperature,lm_weight", [(2.0, 0.1), (1.0, 0.5), (1.5, 0.0)])
def test_fused_loss_equals_the_autograd_formula_in_value_and_gradient(temperature, lm_weight):
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 300, (3, 50), generator=g)  # 150 token rows: chunks of 64 cut across sequences
    t_logits = 3 * torch.randn(3, 50, 300, generator=g, dtype=torch.float64)
    s_fused = (3 * torch.randn(3, 50, 300, generator=g, dtype=torch.float64)).requires_grad_()
    s_ref = s_fused.detach().clone().requires_grad_()
    cfg = DistillConfig(temperature=temperature, lm_weight=lm_weight)
    fused = kd_loss(s_fused, t_logits, batch, cfg)
    fused.backward()
    ref = reference_kd_loss(s_ref, t_logits, batch, temperature, lm_weight)
    ref.backward()
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert torch.allclose(s_fused.grad, s_ref.grad, rtol=1e-9, atol=1e-15)


def test_the_tied_embedding_stays_frozen_unless_asked_to_train():
    teacher, student, windows = setup()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distill(student, teacher, windows, DistillConfig(steps=3, batch_size=4, grad_accum=1, warmup=1), progress=False)
    after = student.state_dict()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert not torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    teacher, trained, windows = setup()
    distill(trained, teacher, windows, DistillConfig(steps=3, batch_size=4, grad_accum=1, warmup=1,
                                                     train_embedding=True), progress=False)
    assert not torch.equal(trained.state_dict()["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


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
