"""Super-network fine-tuning: the seed paper's first stage.

The super-network is the parent's own weights; every sub-network of the search space is a
slice of them, chosen by the importance ranking (`extract`). Here a sub-network's forward
*gathers* its weights from the super-network's parameters (`WeightSharing`), so its
gradient lands in them: training one sub-network moves every other one that shares those
weights. Each step follows the sandwich rule: the largest, the smallest and a few random
sub-networks (of the whole space, or of a parameter band near the user's budget) are
distilled from the frozen original parent's logits (in-place knowledge distillation; the
teacher runs once per batch). Checkpoints (safetensors + JSON) make an interrupted run
resume to exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.checks import is_int
from latprune.errors import LatpruneError, no_interrupt
from latprune.space import SearchSpace

from .distill import DistillConfig, _batch, _interrupted, autocast, kd_loss, load_checkpoint, save_checkpoint, trainable
from .extract import extract
from .ranking import Ranking


@dataclass(frozen=True)
class SupernetConfig(DistillConfig):
    """Distillation settings plus the sandwich: `random_archs` random sub-networks per step
    besides the largest and the smallest, drawn with about `band` (lo, hi) of the parent's
    parameters (None: the whole space)."""

    random_archs: int = 2
    band: tuple[float, float] | None = None
    lr: float = 5e-5
    batch_size: int = 2
    grad_accum: int = 1
    warmup: int = 2
    save_every: int = 5
    # as before these choices existed: the defaults of DistillConfig were measured for distill only
    temperature: float = 2.0
    train_embedding: bool = True
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.random_archs) or self.random_archs < 0:
            raise LatpruneError(f"random_archs must be an integer >= 0; got {self.random_archs!r}")
        if self.band is not None and not 0 < self.band[0] <= self.band[1] <= 1:
            raise LatpruneError(f"band must be 0 < lo <= hi <= 1 (fractions of the parent's parameters); got "
                                f"{self.band}")


class WeightSharing:
    """Sub-networks of `supernet` as gathers from its parameters. A sub-network's weights are
    recomputed from the super-network's on every forward (index_select along each sliced
    dimension), so autograd sends its gradient to the shared super-network parameters."""

    def __init__(self, supernet: nn.Module, ranking: Ranking, space: SearchSpace):
        self.supernet, self.ranking, self.space = supernet, ranking, space
        self.params = dict(supernet.named_parameters())
        self._maps: dict[str, tuple[nn.Module, dict[str, tuple[str, list[torch.Tensor | None]]]]] = {}
        self._probe = self._index_probe()

    def _index_probe(self) -> nn.Module:
        """A copy of the super-network whose every parameter holds its elements' global flat
        positions (float64 is exact far beyond any model size here)."""
        probe = copy.deepcopy(self.supernet)
        self.offsets: list[tuple[int, str]] = []
        start = 0
        for name, p in probe.named_parameters():
            self.offsets.append((start, name))
            p.data = torch.arange(start, start + p.numel(), dtype=torch.float64).reshape(p.shape)
            p.requires_grad_(False)
            start += p.numel()
        return probe

    def _owner(self, flat: torch.Tensor) -> tuple[str, torch.Tensor]:
        starts = [s for s, _ in self.offsets]
        i = int(np.searchsorted(starts, int(flat.min()), side="right")) - 1
        start, name = self.offsets[i]
        local = flat - start
        if int(local.max()) >= self.params[name].numel():
            raise RuntimeError(f"a sliced parameter spans two parent parameters ({name})")
        return name, local

    def _dim_indices(self, local: torch.Tensor, shape: torch.Size) -> list[torch.Tensor | None]:
        """Per dimension, the kept indices (None: all, in order) such that gathering them from a
        parent tensor of `shape` reproduces the flat positions `local`."""
        if local.dim() == 1:
            keep = [local]
        else:
            rows, cols = local[:, 0] // shape[1], local[0, :] % shape[1]
            if not torch.equal(local, rows[:, None] * shape[1] + cols[None, :]):
                raise RuntimeError("a slice is not a product of per-dimension selections")
            keep = [rows, cols]
        return [None if k.numel() == n and torch.equal(k, torch.arange(n)) else k for k, n in zip(keep, shape)]

    def _map(self, arch: Architecture):
        if arch.id not in self._maps:
            if len(self._maps) >= 16:
                self._maps.pop(next(iter(self._maps)))
            child = extract(self._probe, arch, self.ranking, self.space)
            mapping = {}
            for name, p in child.named_parameters():
                owner, local = self._owner(p.data.long())
                mapping[name] = (owner, self._dim_indices(local, self.params[owner].shape))
                p.data = torch.empty(0)  # the skeleton's own values are never used
            self._maps[arch.id] = (child, mapping)
        return self._maps[arch.id]

    def weights(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The sub-network's parameters, gathered (differentiably) from the super-network's."""
        _, mapping = self._map(arch)
        out = {}
        for name, (owner, keep) in mapping.items():
            t = self.params[owner]
            for dim, idx in enumerate(keep):
                if idx is not None:
                    t = t.index_select(dim, idx)
            out[name] = t
        return out

    def logits(self, arch: Architecture, input_ids: torch.Tensor) -> torch.Tensor:
        skeleton, _ = self._map(arch)
        return torch.func.functional_call(skeleton, self.weights(arch), (input_ids,),
                                          {"use_cache": False}).logits


def sandwich(space: SearchSpace, ranking: Ranking, cfg: SupernetConfig, step: int) -> list[Architecture]:
    """The sub-networks trained at `step`: largest, smallest and `cfg.random_archs` random
    ones (a pure function of (seed, step), so a resumed run trains the same ones)."""
    rng = np.random.default_rng([cfg.seed, step])
    order = ranking.layer_order
    pool = [space.sample(rng, order) for _ in range(64 * max(1, cfg.random_archs))]
    if cfg.band is not None:
        total = space.num_params(space.largest())
        lo, hi = cfg.band[0] * total, cfg.band[1] * total
        pool = [a for a in pool if lo <= space.num_params(a) <= hi] or pool
    largest = space.largest()
    smallest = min(pool, key=space.num_params) if cfg.band is not None else space.smallest()
    return [largest, smallest, *pool[: cfg.random_archs]]


def _sandwich_step(sharing: WeightSharing, teacher: nn.Module, windows: torch.Tensor, cfg: SupernetConfig,
                   opt: torch.optim.Optimizer, *, step: int, lr_scale: float) -> float:
    """One optimizer step: every sandwich sub-network distilled from the teacher on the same
    micro-batches (teacher logits computed once each); returns the mean loss."""
    opt.zero_grad(set_to_none=True)
    for group in opt.param_groups:
        group["lr"] = cfg.lr * lr_scale
    archs = sandwich(sharing.space, sharing.ranking, cfg, step)
    total = 0.0
    for micro in range(cfg.grad_accum):
        batch = _batch(windows, cfg, step, micro)
        with torch.no_grad(), autocast(cfg):
            t_logits = teacher(input_ids=batch, use_cache=False).logits.float()
        for arch in archs:
            with autocast(cfg):
                logits = sharing.logits(arch, batch)
            loss = kd_loss(logits.float(), t_logits, batch, cfg) / (cfg.grad_accum * len(archs))
            loss.backward()
            total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(list(sharing.params.values()), 1.0)
    with no_interrupt():
        opt.step()
    return total


def train_supernet(supernet: nn.Module, teacher: nn.Module, ranking: Ranking, windows: torch.Tensor,
                   cfg: SupernetConfig, checkpoint: str | Path | None = None, *, progress: bool = True,
                   stop_after: int | None = None) -> nn.Module:
    """Fine-tune `supernet` (parent-shaped, trained in place) with the sandwich rule and KD
    from the frozen `teacher`; resumes from `checkpoint`. `stop_after` ends early (tests)."""
    from .distill import _lr_lambda

    space = SearchSpace.from_config(supernet.config)
    sharing = WeightSharing(supernet, ranking, space)
    teacher.eval()
    supernet.train()
    opt = torch.optim.AdamW(trainable(supernet, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_checkpoint(Path(checkpoint), supernet, opt, cfg) if checkpoint is not None and \
        (Path(checkpoint) / "state.json").is_file() else 0
    schedule, done = _lr_lambda(cfg), start
    bar = tqdm(total=cfg.steps, initial=start, desc="supernet", unit="step", disable=not progress)
    t0 = time.perf_counter()
    try:
        for step in range(start, min(cfg.steps, start + (stop_after or math.inf))):
            loss = _sandwich_step(sharing, teacher, windows, cfg, opt, step=step, lr_scale=schedule(step))
            done = step + 1
            tokens = (done - start) * cfg.batch_size * cfg.grad_accum * windows.shape[1]
            bar.update(1)
            bar.set_postfix_str(f"loss {loss:.3f}, {tokens / (time.perf_counter() - t0):.0f} tok/s")
            if checkpoint is not None and (done % cfg.save_every == 0 or done == cfg.steps):
                save_checkpoint(Path(checkpoint), supernet, opt, done, cfg)
    except KeyboardInterrupt:
        raise _interrupted(checkpoint, supernet, opt, done, start, cfg=cfg, what="super-network training") from None
    finally:
        bar.close()
        supernet.eval()
    return supernet


# ---- files ------------------------------------------------------------------------------
SUPERNET_VERSION = 1


def supernet_key(ranked, cfg: SupernetConfig) -> str:
    """What a super-network depends on: the parent, the calibration tokens, the space and
    the training settings."""
    import hashlib
    import json
    from dataclasses import asdict

    from latprune.models import model_identity

    data = {"parent": model_identity(ranked.model.config)["config_hash"], "text": ranked.text_key,
            "space": {k: list(v) for k, v in ranked.space.choices().items()}, "config": asdict(cfg)}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


def save_supernet(ranked, supernet: nn.Module, cfg: SupernetConfig, out: str | Path, quality: dict) -> dict:
    """Write the super-network as a parent-shaped HF checkpoint, with its ranking and
    metadata; returns the metadata as written."""
    import json
    from dataclasses import asdict

    from latprune.files import SUPERNET_MARKER, atomic_dir
    from latprune.models import model_identity

    meta = {"latprune_supernet_version": SUPERNET_VERSION, "key": supernet_key(ranked, cfg),
            "parent": model_identity(ranked.model.config), "text_key": ranked.text_key,
            "config": asdict(cfg), "quality": quality}
    with atomic_dir(out, SUPERNET_MARKER) as tmp:
        supernet.save_pretrained(tmp)
        ranked.tokenizer.save_pretrained(tmp)
        ranked.ranking.save(tmp / "latprune_ranking.safetensors")  # the slicing order, for reference
        (tmp / SUPERNET_MARKER).write_text(json.dumps(meta, indent=2, default=list))
    return json.loads(json.dumps(meta, default=list))


def attach_supernet(ranked, folder: str | Path):
    """`ranked` with its sub-networks cut from the super-network in `folder` (checked to be
    of this parent, text and space); the parent stays the teacher and reference."""
    import dataclasses
    import json

    from latprune.files import SUPERNET_MARKER
    from latprune.models import load_model, model_identity

    folder = Path(folder)
    if not (folder / SUPERNET_MARKER).is_file():
        raise LatpruneError(f"'{folder}' is not a super-network (no {SUPERNET_MARKER}); make one with "
                            "'latprune supernet'")
    meta = json.loads((folder / SUPERNET_MARKER).read_text())
    if meta.get("latprune_supernet_version") != SUPERNET_VERSION:
        raise LatpruneError(f"super-network '{folder}' was written by an incompatible latprune; train it again")
    if meta["parent"]["config_hash"] != model_identity(ranked.model.config)["config_hash"]:
        raise LatpruneError(f"super-network '{folder}' was trained for another parent ({meta['parent']['name']}); "
                            "pass that --model or train one for this model")
    if meta["text_key"] != ranked.text_key:
        raise LatpruneError(f"super-network '{folder}' was trained with another text's importance ranking; pass the "
                            "same --text or train one for this text")
    return dataclasses.replace(ranked, weights=load_model(folder))
