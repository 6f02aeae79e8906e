"""`Workload`: what latency means. Metrics: prefill_ms (prompt forward = time to first
token), decode_ms (one generated token with the KV cache filled to the prompt length),
e2e_ms = prefill_ms + generate x decode_ms."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .errors import LatpruneError

METRICS = ("prefill_ms", "decode_ms", "e2e_ms")


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    prompt: int = 128
    generate: int = 32

    def __post_init__(self) -> None:
        for name in ("batch", "prompt", "generate"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LatpruneError(f"workload: {name} must be a positive integer; got {getattr(self, name)!r}")

    @property
    def key(self) -> str:
        return f"b{self.batch}-p{self.prompt}-g{self.generate}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str | None) -> Workload:
        """'batch=1,prompt=128,generate=32' (any subset; the rest default)."""
        if not text:
            return cls()
        values: dict[str, int] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("batch", "prompt", "generate"):
                raise LatpruneError(f"--workload '{text}': expected e.g. batch=1,prompt=128,generate=32")
            try:
                values[key] = int(value)
            except ValueError:
                raise LatpruneError(f"--workload: {key}={value!r} is not an integer") from None
        return cls(**values)

    @classmethod
    def from_key(cls, key: str) -> Workload:
        """Inverse of `key` ('b1-p128-g32'), as profiles record it."""
        match = re.fullmatch(r"b(\d+)-p(\d+)-g(\d+)", key)
        if not match:
            raise LatpruneError(f"not a workload key (e.g. b1-p128-g32): {key!r}")
        return cls(*map(int, match.groups()))

    def e2e_ms(self, prefill_ms, decode_ms):
        return prefill_ms + self.generate * decode_ms
