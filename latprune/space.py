"""`SearchSpace`: the legal sub-networks of a parent model, built from its HF config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .architecture import Architecture
from .errors import LatpruneError
from .families import Family, family_of


def width_step(full: int, min_choices: int = 8) -> int:
    """The coarsest hardware-friendly step (64, 32, 16, 8, 4, 2, 1) that divides `full`
    and still leaves at least `min_choices` values."""
    for step in (64, 32, 16, 8, 4, 2, 1):
        if full % step == 0 and full // step >= min_choices:
            return step
    return 1


def check_keep(keep: float) -> None:
    """`--keep` is a fraction of the parameters in (0, 1]."""
    if not 0.0 < keep <= 1.0:
        raise LatpruneError(f"--keep must be in (0, 1]; got {keep}")


KEEP_RECIPE = {"mlp": 1.0, "layers": 0.5}  # `scaled`: MLP width x f, layer count x sqrt(f)


@dataclass(frozen=True)
class SearchSpace:
    """Legal values of every dimension of a parent model's sub-networks.

    GQA: a layer keeps `kv_groups` KV heads and `q_per_kv` query heads per group (at most the
    parent's), so query heads are always a multiple of KV groups; head_dim is kept. Families
    whose config derives head_dim from hidden/heads (GPT-2, GPT-NeoX) tie hidden = heads x
    head_dim, so their hidden size follows the head count.
    """

    model_type: str
    family: Family
    parent: dict[str, int]
    mlp_choices: tuple[int, ...]
    hidden_choices: tuple[int, ...]
    tied_embeddings: bool
    positions: int  # learned position embeddings (GPT-2), else 0
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, config) -> SearchSpace:
        family = family_of(config)
        dims = family.dims(config)
        mlp_step = width_step(dims["mlp"])
        if family.head_dim_coupled:
            hidden_choices = tuple(h * dims["head_dim"] for h in range(1, dims["heads"] + 1))
        else:
            step = width_step(dims["hidden"])
            hidden_choices = tuple(range(step, dims["hidden"] + 1, step))
        return cls(
            model_type=config.model_type,
            family=family,
            parent=dims,
            mlp_choices=tuple(range(mlp_step, dims["mlp"] + 1, mlp_step)),
            hidden_choices=hidden_choices,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            **family.extras(config),
        )

    # ---- dimensions -----------------------------------------------------
    @property
    def max_q_per_kv(self) -> int:
        return self.parent["heads"] // self.parent["kv_groups"]

    @property
    def attention_shapes(self) -> tuple[tuple[int, int], ...]:
        """Every legal (kv_groups, q_per_kv) of one layer, fewest attention weights first."""
        pairs = [(kv, q) for kv in range(1, self.parent["kv_groups"] + 1) for q in range(1, self.max_q_per_kv + 1)]
        return tuple(sorted(pairs, key=lambda p: (p[0] * p[1] + p[0], p[0])))

    def choices(self) -> dict[str, tuple[int, ...]]:
        """Legal values of each uniform search dimension (ordered, smallest first)."""
        out = {
            "layers": tuple(range(1, self.parent["layers"] + 1)),
            "kv_groups": tuple(range(1, self.parent["kv_groups"] + 1)),
            "q_per_kv": tuple(range(1, self.max_q_per_kv + 1)),
            "mlp": self.mlp_choices,
        }
        if not self.family.head_dim_coupled:
            out["hidden"] = self.hidden_choices
        return out

    def from_values(self, values: dict[str, int], layer_order: Sequence[int] | None = None) -> Architecture:
        """A uniform Architecture from one value per dimension. The kept layers are the first
        `layers` entries of `layer_order` (most important first), or the first parent layers."""
        n = int(values["layers"])
        order = list(layer_order) if layer_order is not None else list(range(self.parent["layers"]))
        kv = int(values["kv_groups"])
        heads = kv * int(values["q_per_kv"])
        hidden = heads * self.parent["head_dim"] if self.family.head_dim_coupled else int(values["hidden"])
        return Architecture.uniform(sorted(order[:n]), heads, kv, int(values["mlp"]), hidden)

    def values_of(self, arch: Architecture) -> dict[str, int]:
        """Inverse of `from_values` for a uniform architecture."""
        values = {
            "layers": arch.num_layers,
            "kv_groups": arch.kv_groups[0],
            "q_per_kv": arch.heads[0] // arch.kv_groups[0],
            "mlp": arch.mlp[0],
        }
        if not self.family.head_dim_coupled:
            values["hidden"] = arch.hidden
        return values

    def largest(self) -> Architecture:
        return self.from_values({k: v[-1] for k, v in self.choices().items()})

    def smallest(self) -> Architecture:
        return self.from_values({k: v[0] for k, v in self.choices().items()})

    def sample(self, rng: np.random.Generator, layer_order: Sequence[int] | None = None) -> Architecture:
        """A uniformly random uniform architecture."""
        values = {k: int(v[rng.integers(len(v))]) for k, v in self.choices().items()}
        return self.from_values(values, layer_order)

    def parametrization(self):
        """The nevergrad parametrization: one ordered choice per dimension."""
        import nevergrad as ng

        return ng.p.Dict(**{k: ng.p.TransitionChoice(list(v)) for k, v in self.choices().items()})

    def apply_to_config(self, config, arch: Architecture) -> None:
        """Write `arch`'s dimensions into `config` in place (per-layer widths: their maxima)."""
        self.family.set_dims(config, layers=arch.num_layers, heads=max(arch.heads), kv_groups=max(arch.kv_groups),
                             mlp=max(arch.mlp), hidden=arch.hidden, head_dim=self.parent["head_dim"])
        if getattr(config, "layer_types", None) is not None and len(config.layer_types) == self.parent["layers"]:
            config.layer_types = [config.layer_types[i] for i in arch.layers]

    # ---- validation -----------------------------------------------------
    def validate(self, arch: Architecture) -> Architecture:
        """Raise `LatpruneError` naming the offending dimension and its legal values."""
        p = self.parent
        if not arch.layers:
            raise LatpruneError("architecture: 'layers' is empty; keep at least 1 layer")
        bad = [i for i in arch.layers if not 0 <= i < p["layers"]]
        if bad:
            raise LatpruneError(f"architecture: layer index {bad[0]} out of range; legal: 0..{p['layers'] - 1}")
        if len(set(arch.layers)) != len(arch.layers) or list(arch.layers) != sorted(arch.layers):
            raise LatpruneError("architecture: 'layers' must be strictly increasing parent indices")
        if not 1 <= arch.hidden <= p["hidden"]:
            raise LatpruneError(f"architecture: hidden={arch.hidden} is illegal; legal: 1..{p['hidden']}")
        for pos, (h, kv, m) in enumerate(zip(arch.heads, arch.kv_groups, arch.mlp)):
            where = f"layer {arch.layers[pos]}"
            if not 1 <= kv <= p["kv_groups"]:
                raise LatpruneError(f"architecture: kv_groups={kv} at {where} is illegal; legal: 1..{p['kv_groups']}")
            if h % kv or not 1 <= h // kv <= self.max_q_per_kv:
                legal = ", ".join(str(kv * r) for r in range(1, self.max_q_per_kv + 1))
                raise LatpruneError(
                    f"architecture: heads={h} at {where} is illegal with kv_groups={kv}; "
                    f"legal: {legal} (a multiple of kv_groups, at most {self.max_q_per_kv} per group)"
                )
            if not 1 <= m <= p["mlp"]:
                raise LatpruneError(f"architecture: mlp={m} at {where} is illegal; legal: 1..{p['mlp']}")
            if self.family.head_dim_coupled and h * p["head_dim"] != arch.hidden:
                raise LatpruneError(
                    f"architecture: {self.model_type} derives head_dim from hidden/heads, so hidden must equal "
                    f"heads x {p['head_dim']}; got heads={h} at {where}, hidden={arch.hidden}"
                )
        return arch

    # ---- sizes ----------------------------------------------------------
    def layer_params(self, hidden: Any, heads: Any, kv_groups: Any, mlp: Any) -> Any:
        """Parameters of one decoder layer (works elementwise on numpy arrays)."""
        hd = self.parent["head_dim"]
        q, kv = heads * hd, kv_groups * hd
        n = hidden * (q + 2 * kv) + q * hidden
        n = n + (q + 2 * kv) * self.qkv_bias + hidden * self.o_bias
        n = n + (3 if self.family.gated_mlp else 2) * hidden * mlp
        n = n + ((2 * mlp if self.family.gated_mlp else mlp) + hidden) * self.mlp_bias
        norm = hidden * (1 + self.family.norm_bias)
        n = n + 2 * norm + 2 * hd * self.qk_norm
        return n

    def embedding_params(self, hidden: Any) -> Any:
        """Token (and position) embeddings, LM head if untied, and the final norm."""
        vocab = self.parent["vocab"]
        n = vocab * hidden * (1 if self.tied_embeddings else 2) + self.positions * hidden
        return n + hidden * (1 + self.family.norm_bias)

    def num_params(self, arch: Architecture) -> int:
        """Exact parameter count of the extracted sub-network."""
        body = sum(self.layer_params(arch.hidden, h, kv, m) for h, kv, m in zip(arch.heads, arch.kv_groups, arch.mlp))
        return int(body + self.embedding_params(arch.hidden))

    def scaled_values(self, f: float, exponents: dict[str, float]) -> dict[str, int]:
        """Per dimension k, the legal value nearest f**exponents[k] x its maximum; dimensions
        without an exponent stay at their maximum."""
        return {k: min(v, key=lambda c: abs(c - f ** exponents.get(k, 0.0) * v[-1]))
                for k, v in self.choices().items()}

    def scaled(self, keep: float, layer_order: Sequence[int] | None = None) -> Architecture:
        """A uniform architecture with about `keep` of the parent's parameters, for quick use
        without a search: the MLP width shrinks by a factor f and the layer count by sqrt(f);
        heads and hidden size are kept (on SmolLM2 without retraining, cutting them costs the
        most perplexity per parameter)."""
        check_keep(keep)
        target = keep * self.num_params(self.largest())

        def at(f: float) -> Architecture:
            return self.from_values(self.scaled_values(f, KEEP_RECIPE), layer_order)

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.num_params(at(mid)) < target else (lo, mid)
        best = min((at(lo), at(hi)), key=lambda a: abs(self.num_params(a) - target))
        if self.num_params(best) > 1.1 * target:
            raise LatpruneError(f"--keep {keep} is below what layers and MLP width alone can reach "
                                f"({self.num_params(best) / self.num_params(self.largest()):.2f}); pass --arch")
        return best

    def describe(self) -> str:
        """A readable table of the space."""
        p = self.parent
        lines = [
            f"model_type: {self.model_type} (family {self.family.kind})",
            f"parent: {p['layers']} layers, {p['heads']} query heads / {p['kv_groups']} KV groups, "
            f"head_dim {p['head_dim']}, mlp {p['mlp']}, hidden {p['hidden']}, vocab {p['vocab']}",
            f"parent parameters: {self.num_params(self.largest()):,}",
            f"smallest sub-network: {self.num_params(self.smallest()):,} parameters",
            "dimensions (uniform search):",
        ]
        for k, v in self.choices().items():
            shown = ", ".join(map(str, v)) if len(v) <= 12 else f"{v[0]}, {v[1]}, ..., {v[-1]} ({len(v)} values)"
            lines.append(f"  {k:10s} {shown}")
        if self.family.head_dim_coupled:
            lines.append(f"  hidden     = heads x {p['head_dim']} ({self.model_type} derives head_dim from it)")
        size = int(np.prod([len(v) for v in self.choices().values()]))
        lines.append(f"uniform architectures: {size:,} (x layer subsets; per-layer widths allowed too)")
        return "\n".join(lines)
