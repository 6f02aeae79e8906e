"""`Architecture`: an immutable description of a sub-network of a parent model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .checks import is_int
from .errors import LatpruneError

SCHEMA_VERSION = 1
KEYS = ("layers", "heads", "kv_groups", "mlp", "hidden")
MAX_LAYERS = 10_000  # far beyond any model; a larger count in a JSON file is a mistake, not a model
_EXPECTED = {"layers": "a positive integer (the first N parent layers) or a list of parent layer indices",
             "heads": "an integer or a list of integers, one per kept layer",
             "kv_groups": "an integer or a list of integers, one per kept layer",
             "mlp": "an integer or a list of integers, one per kept layer"}


def _is_ints(value: Any) -> bool:
    """A non-empty JSON list of integers."""
    return isinstance(value, list) and bool(value) and all(map(is_int, value))


def _per_layer(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    if len(values) != n:
        raise LatpruneError(f"architecture: '{name}' has {len(values)} entries but {n} layers are kept")
    return values


@dataclass(frozen=True)
class Architecture:
    """Kept parent layer indices and, per kept layer, query heads, KV groups and MLP width,
    plus the hidden (embedding) size shared by all layers."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    kv_groups: tuple[int, ...]
    mlp: tuple[int, ...]
    hidden: int

    def __post_init__(self) -> None:
        n = len(self.layers)
        for name in ("heads", "kv_groups", "mlp"):
            if len(getattr(self, name)) != n:
                raise LatpruneError(
                    f"architecture: '{name}' has {len(getattr(self, name))} entries but {n} layers are kept"
                )

    @classmethod
    def uniform(
        cls,
        layers: int | Sequence[int],
        heads: int,
        kv_groups: int,
        mlp: int,
        hidden: int,
    ) -> Architecture:
        """Same widths in every layer. `layers` is a count (the first N parent layers) or a
        list of parent layer indices."""
        kept = tuple(range(layers)) if isinstance(layers, int) else tuple(int(i) for i in layers)
        n = len(kept)
        return cls(kept, (heads,) * n, (kv_groups,) * n, (mlp,) * n, int(hidden))

    @classmethod
    def per_layer(
        cls,
        layers: Sequence[int],
        heads: int | Sequence[int],
        kv_groups: int | Sequence[int],
        mlp: int | Sequence[int],
        hidden: int,
    ) -> Architecture:
        """Per-layer widths; a scalar is broadcast to every kept layer."""
        kept = tuple(int(i) for i in layers)
        n = len(kept)
        return cls(
            kept,
            _per_layer(heads, n, "heads"),
            _per_layer(kv_groups, n, "kv_groups"),
            _per_layer(mlp, n, "mlp"),
            int(hidden),
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_uniform(self) -> bool:
        """True when every kept layer has the same widths (any subset of parent layers)."""
        return len({*zip(self.heads, self.kv_groups, self.mlp)}) <= 1

    def covers(self, other: Architecture) -> bool:
        """Whether `self` keeps every layer `other` keeps, each at least as wide (query heads,
        KV groups, MLP), at a hidden size at least as large: cut from one ranked parent, the
        smaller one's weights are a subset of the larger one's."""
        mine = {i: (h, kv, m) for i, h, kv, m in zip(self.layers, self.heads, self.kv_groups, self.mlp)}
        return self.hidden >= other.hidden and all(
            i in mine and all(a >= b for a, b in zip(mine[i], (h, kv, m)))
            for i, h, kv, m in zip(other.layers, other.heads, other.kv_groups, other.mlp))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "layers": list(self.layers),
            "heads": list(self.heads),
            "kv_groups": list(self.kv_groups),
            "mlp": list(self.mlp),
            "hidden": self.hidden,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Strictly: known keys only; `layers` a positive count or a list of indices; `heads`,
        `kv_groups`, `mlp` an integer or one per kept layer; `hidden` an integer."""
        unknown = sorted(set(data) - {"schema_version", *KEYS})
        if unknown:
            raise LatpruneError(f"architecture JSON has unknown key(s) {', '.join(map(repr, unknown))}; "
                                f"expected {', '.join(KEYS)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise LatpruneError(f"architecture schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise LatpruneError(f"architecture JSON lacks {', '.join(missing)}")
        layers = data["layers"]
        if is_int(layers):
            if not 1 <= layers <= MAX_LAYERS:  # checked before a list of that many indices is built
                raise LatpruneError(f"architecture: 'layers' must be a count from 1 to {MAX_LAYERS:,}; got {layers}")
            layers = list(range(layers))
        for key, value in (("layers", layers), ("heads", data["heads"]), ("kv_groups", data["kv_groups"]),
                           ("mlp", data["mlp"])):
            if not (_is_ints(value) or (key != "layers" and is_int(value))):
                raise LatpruneError(f"architecture: '{key}' must be {_EXPECTED[key]}; got {data[key]!r}")
        if not is_int(data["hidden"]):
            raise LatpruneError(f"architecture: 'hidden' must be an integer; got {data['hidden']!r}")
        return cls.per_layer(layers, data["heads"], data["kv_groups"], data["mlp"], data["hidden"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:
            raise LatpruneError(f"architecture is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LatpruneError("architecture JSON must be an object with layers/heads/kv_groups/mlp/hidden")
        return cls.from_dict(data)

    @property
    def id(self) -> str:
        """Stable short id: the first 12 hex digits of the SHA-1 of the canonical JSON."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def describe(self) -> str:
        """A short human-readable summary."""
        if self.is_uniform and self.layers:
            return (
                f"L={self.num_layers} heads={self.heads[0]} kv={self.kv_groups[0]} "
                f"mlp={self.mlp[0]} hidden={self.hidden}"
            )
        return f"L={self.num_layers} per-layer hidden={self.hidden}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number an architecture can have")
