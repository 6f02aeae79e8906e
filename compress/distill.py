"""Knowledge distillation of a sub-network from its parent on calibration text.

Loss = T^2 * KL(teacher_T || student_T) (forward KL on temperature-softened logits)
       + lm_weight * next-token cross-entropy, computed in chunks of tokens with its gradient
       written analytically (`KDLoss`): the same value and gradient as the autograd formula at
       a fraction of the memory traffic over the 49k-token vocabulary.
The token embedding (and the output head tied to it) stays frozen unless `train_embedding`:
faster steps, and a short recovery on one text cannot bend the shared vocabulary towards it.
Forward passes are autocast to bfloat16 where the CPU has it natively (`fast_bf16`); weights,
optimizer state and the loss stay fp32. The defaults: benchmarks/results/recovery_settings.md.
AdamW, linear warm-up then cosine decay, gradient accumulation, a fixed token budget
(steps x batch x accumulation x window). Batches are a pure function of (seed, step), so a
run resumed from a checkpoint continues exactly as an uninterrupted one would.

Checkpoints (every `save_every` steps, atomically): student weights and optimizer tensors
in safetensors, scalars in JSON; no pickle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.checks import is_int
from latprune.errors import Interrupted, LatpruneError, no_interrupt
from latprune.files import CHECKPOINT_MARKER, atomic_dir


def fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 1e-3  # benchmarks/results/recovery_lr.md: best of 2e-4, 1e-3, 3e-3 over a short recovery
    weight_decay: float = 0.0
    warmup: int = 10
    temperature: float = 1.0  # benchmarks/results/recovery_settings.md
    lm_weight: float = 0.1
    seed: int = 0
    save_every: int = 25
    train_embedding: bool = False  # benchmarks/results/recovery_settings.md
    # forward passes (teacher and student) autocast to bfloat16 where the CPU has it natively;
    # master weights, optimizer and loss stay fp32
    autocast_bf16: bool = field(default_factory=fast_bf16)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise LatpruneError(f"distillation {name} must be a positive integer; got {value!r}")
        for name in ("lr", "temperature"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise LatpruneError(f"distillation {name} must be a positive number; got {getattr(self, name)}")
        for name in ("weight_decay", "lm_weight"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise LatpruneError(f"distillation {name} must be a number >= 0; got {getattr(self, name)}")
        if self.warmup < 0 or self.seed < 0:
            raise LatpruneError("distillation warmup and seed must be >= 0")

    def tokens(self, window: int) -> int:
        return self.steps * self.batch_size * self.grad_accum * window


def _batch(windows: torch.Tensor, cfg: DistillConfig, step: int, micro: int) -> torch.Tensor:
    """Micro-batch `micro` of optimizer step `step`: a pure function of (seed, position)."""
    per_epoch = max(1, windows.shape[0] // cfg.batch_size)
    index = step * cfg.grad_accum + micro
    epoch, slot = divmod(index, per_epoch)
    perm = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
    return windows[perm[slot * cfg.batch_size : (slot + 1) * cfg.batch_size]]


def _lr_lambda(cfg: DistillConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def autocast(cfg: DistillConfig) -> torch.autocast:
    """bfloat16 autocast of forward passes when `cfg.autocast_bf16`, else a no-op."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16)


def _loss(student: nn.Module, teacher: nn.Module, batch: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    with autocast(cfg):
        with torch.no_grad():
            t_logits = teacher(input_ids=batch, use_cache=False).logits
        s_logits = student(input_ids=batch, use_cache=False).logits
    return kd_loss(s_logits.float(), t_logits.float(), batch, cfg)


KD_CHUNK = 64  # token rows per chunk of the fused loss: a few MB of logits each, cache-sized


class KDLoss(torch.autograd.Function):
    """T^2 x mean per-token KL(teacher_T || student_T) + lm_weight x mean next-token CE over
    flat logits [N, V]; `targets` [N] holds each row's next token, -1 where there is none (M
    rows have one). The gradient with respect to the student's logits is written in the
    forward pass, chunk by chunk: T (p_student_T - p_teacher_T) / N + lm_weight (p_student -
    onehot) / M."""

    @staticmethod
    def forward(ctx, s_logits: torch.Tensor, t_logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                lm_weight: float) -> torch.Tensor:
        n, m = s_logits.shape[0], int((targets >= 0).sum())
        t = temperature
        grad = torch.empty_like(s_logits)
        kl = ce = 0.0
        for i in range(0, n, KD_CHUNK):
            s, g = s_logits[i:i + KD_CHUNK], grad[i:i + KD_CHUNK]
            log_s = torch.log_softmax(s / t, -1)
            log_t = torch.log_softmax(t_logits[i:i + KD_CHUNK] / t, -1)
            p_t = log_t.exp()
            kl += float((p_t * (log_t - log_s)).sum())
            torch.sub(log_s.exp(), p_t, out=g).mul_(t / n)
            if lm_weight:  # rows with a next token: CE and its gradient p - onehot
                tgt = targets[i:i + KD_CHUNK]
                rows = torch.nonzero(tgt >= 0).squeeze(1)
                log_p = (log_s if t == 1 else torch.log_softmax(s, -1))[rows]
                picked = torch.arange(len(rows)), tgt[rows]
                ce -= float(log_p[picked].sum())
                ce_grad = log_p.exp_()
                ce_grad[picked] -= 1
                g.index_add_(0, rows, ce_grad, alpha=lm_weight / m)
        ctx.save_for_backward(grad)
        return s_logits.new_tensor(t * t * kl / n + (lm_weight * ce / m if lm_weight else 0.0))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, batch: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """T^2 x KL(teacher_T || student_T) per token, + lm_weight x next-token cross-entropy."""
    vocab = s_logits.shape[-1]
    targets = torch.cat([batch[:, 1:], torch.full_like(batch[:, :1], -1)], 1).reshape(-1)
    return KDLoss.apply(s_logits.reshape(-1, vocab), t_logits.reshape(-1, vocab).detach(), targets,
                        cfg.temperature, cfg.lm_weight)


def trainable(model: nn.Module, cfg: DistillConfig) -> list[nn.Parameter]:
    """The parameters distillation trains: all but the token embedding (and the output head
    tied to it), unless `cfg.train_embedding`."""
    model.get_input_embeddings().weight.requires_grad_(cfg.train_embedding)
    return [p for p in model.parameters() if p.requires_grad]


# ---- checkpoints --------------------------------------------------------------------
def save_checkpoint(folder: Path, student: nn.Module, opt: torch.optim.Optimizer, step: int,
                    cfg: DistillConfig) -> None:
    from safetensors.torch import save_file, save_model

    with atomic_dir(folder, CHECKPOINT_MARKER) as tmp:
        save_model(student, str(tmp / "student.safetensors"))
        state = opt.state_dict()
        tensors = {f"{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()
                   if torch.is_tensor(v)}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg),
                                                    "param_groups": state["param_groups"]}))


def load_checkpoint(folder: Path, student: nn.Module, opt: torch.optim.Optimizer, cfg: DistillConfig) -> int:
    """Restore student and optimizer; returns the next step. Refuses another configuration."""
    from safetensors.torch import load_file, load_model

    meta = json.loads((Path(folder) / "state.json").read_text())
    if meta["config"] != json.loads(json.dumps(asdict(cfg))):
        raise LatpruneError(f"checkpoint {folder} was made with other settings {meta['config']}; "
                            "use the same options or another --out")
    try:
        load_model(student, str(Path(folder) / "student.safetensors"))
    except RuntimeError as exc:  # another architecture's weights (e.g. a rerun chose another winner)
        raise LatpruneError(f"checkpoint {folder} holds the weights of another architecture "
                            f"({str(exc).splitlines()[0][:200]}); delete it to start afresh, or use another --out"
                            ) from None
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def _step(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, cfg: DistillConfig,
          opt: torch.optim.Optimizer, params: list, *, step: int, lr_scale: float) -> float:
    """One optimizer step (all micro-batches); returns its loss. Parameters change only in
    the final `opt.step()`, so an interrupt before it leaves the previous step's state."""
    opt.zero_grad(set_to_none=True)
    for group in opt.param_groups:
        group["lr"] = cfg.lr * lr_scale
    total = 0.0
    for micro in range(cfg.grad_accum):
        loss = _loss(student, teacher, _batch(windows, cfg, step, micro), cfg) / cfg.grad_accum
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    with no_interrupt():
        opt.step()
    return total


def _interrupted(checkpoint, student: nn.Module, opt: torch.optim.Optimizer, done: int, start: int, *,
                 cfg: DistillConfig, what: str = "distillation") -> Interrupted:
    """Save the finished steps on Ctrl-C and say exactly what was saved."""
    if checkpoint is None:
        return Interrupted(f"{what} stopped after {done} of {cfg.steps} steps; nothing was saved")
    if done > start:
        save_checkpoint(Path(checkpoint), student, opt, done, cfg)
    if done == 0:
        return Interrupted(f"{what} stopped before its first step finished; nothing to save")
    return Interrupted(f"{what} stopped after {done} of {cfg.steps} steps; those steps are saved in "
                       f"{checkpoint}: rerun the same command to resume")


def seconds_per_step(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, cfg: DistillConfig) -> float:
    """Seconds one optimizer step takes here: a micro-batch's forward and backward x the
    micro-batches per step. Two are run and discarded (no parameter changes); the second is
    timed, the first pays one-off costs (kernel selection, allocation)."""
    trainable(student, cfg)
    student.train()
    for micro in range(2):
        t0 = time.perf_counter()
        _loss(student, teacher, _batch(windows, cfg, 0, micro), cfg).backward()
        elapsed = time.perf_counter() - t0
        student.zero_grad(set_to_none=True)
    student.eval()
    return elapsed * cfg.grad_accum


def steps_within(minutes: float, student: nn.Module, teacher: nn.Module, windows: torch.Tensor,
                 checkpoint: str | Path | None = None, **settings) -> int:
    """The number of steps that fit in `minutes` here, or the step count of an unfinished
    run in `checkpoint` (so a rerun resumes the same schedule)."""
    if checkpoint is not None and (Path(checkpoint) / CHECKPOINT_MARKER).is_file():
        return int(json.loads((Path(checkpoint) / CHECKPOINT_MARKER).read_text())["config"]["steps"])
    per_step = seconds_per_step(student, teacher, windows, DistillConfig(**settings))
    return max(1, int(minutes * 60 / per_step))


def distill(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, cfg: DistillConfig,
            checkpoint: str | Path | None = None, *, progress: bool = True, stop_after: int | None = None,
            ) -> nn.Module:
    """Distil `teacher` into `student` in place; resumes from `checkpoint` when it exists.
    `stop_after` ends early after that many steps of this call (to test resumption)."""
    if windows.shape[0] < cfg.batch_size:
        raise LatpruneError(f"only {windows.shape[0]} calibration windows for batch size {cfg.batch_size}")
    teacher.eval()
    student.train()
    params = trainable(student, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if checkpoint is not None and (Path(checkpoint) / "state.json").is_file():
        start = load_checkpoint(Path(checkpoint), student, opt, cfg)
    schedule = _lr_lambda(cfg)
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", disable=not progress)
    t0, seen, done = time.perf_counter(), 0, start
    try:
        for step in range(start, cfg.steps):
            if stop_after is not None and step - start >= stop_after:
                break
            total = _step(student, teacher, windows, cfg, opt, params, step=step, lr_scale=schedule(step))
            done = step + 1
            seen += cfg.batch_size * cfg.grad_accum * windows.shape[1]
            bar.update(1)
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"loss {total:.3f}, {seen / elapsed:.0f} tok/s")
            if checkpoint is not None and (done % cfg.save_every == 0 or done == cfg.steps):
                save_checkpoint(Path(checkpoint), student, opt, done, cfg)
    except KeyboardInterrupt:
        raise _interrupted(checkpoint, student, opt, done, start, cfg=cfg) from None
    finally:
        bar.close()
        student.eval()
    return student
