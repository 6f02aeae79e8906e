"""What the search optimises: quality of the importance-ordered sub-network (perplexity on
calibration windows, cached by architecture id) under the predictor's latency: its upper
bound (the safe search) or its median (the refinement near the budget, whose candidates
are then measured on the device)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from latprune.architecture import Architecture
from latprune.compress.quality import perplexity
from latprune.compress.ranked import RankedModel
from latprune.predictors.predictor import Predictor
from latprune.workload import Workload

SEARCH_WINDOWS = 8  # calibration windows the search (and the recovery-aware choice) scores on


@dataclass
class Evaluator:
    """Caches perplexity and predictions per architecture; records every evaluation."""

    ranked: RankedModel
    predictor: Predictor
    windows: torch.Tensor
    workload: Workload
    metric: str
    limit_ms: float  # budget x (1 - margin), compared with the bounded prediction
    records: dict[str, dict] = field(default_factory=dict)
    strategy: str = ""
    bound: str = "upper"  # which prediction meets the limit: "upper" (upper bound) or "median"
    perplexities: dict[str, float] = field(default_factory=dict)  # may be shared between evaluators
    floor_ms: float = 0.0  # > 0: a band round, where the bounded prediction must also be at least this
    _predictions: dict[str, pd.Series] = field(default_factory=dict)

    @property
    def column(self) -> str:
        """The prediction the limit applies to: the upper bound, or the median when `bound` says so."""
        return self.metric + ("_upper" if self.bound == "upper" else "")

    def predicted(self, archs: list[Architecture]) -> pd.DataFrame:
        """Predicted metrics and upper bounds (per-layer architectures composed)."""
        return self.predictor.predict(archs, self.workload)

    def prediction(self, arch: Architecture) -> pd.Series:
        """Predicted metrics and upper bounds of one architecture (cached by id: nevergrad's
        constraint, the loss and the record all ask for the same ones)."""
        if arch.id not in self._predictions:
            self._predictions[arch.id] = self.predicted([arch]).iloc[0]
        return self._predictions[arch.id]

    def upper_ms(self, arch: Architecture) -> float:
        """The prediction the limit applies to (`column`)."""
        return float(self.prediction(arch)[self.column])

    def feasible(self, arch: Architecture) -> bool:
        return self.floor_ms <= self.upper_ms(arch) <= self.limit_ms

    def feasible_many(self, archs: list[Architecture]) -> list[bool]:
        """`feasible` for many architectures in one prediction."""
        pred = self.predicted(archs)[self.column].to_numpy()
        return [bool(self.floor_ms <= p <= self.limit_ms) for p in pred]

    def quality(self, arch: Architecture) -> float:
        """Calibration perplexity of `arch` (computed once per architecture id)."""
        rec = self.records.get(arch.id)
        if rec is not None and rec.get("perplexity") is not None:
            return rec["perplexity"]
        t0 = time.perf_counter()
        if arch.id not in self.perplexities:
            self.perplexities[arch.id] = perplexity(self.ranked.extract(arch), self.windows)
        ppl = self.perplexities[arch.id]
        pred = self.prediction(arch)
        self.records[arch.id] = {
            "arch_id": arch.id, "arch_json": arch.to_json(), "describe": arch.describe(), "order": len(self.records),
            "strategy": self.strategy, "bound": self.bound, "perplexity": ppl,
            "params": self.ranked.space.num_params(arch),
            **{f"pred_{k}": float(v) for k, v in pred.items()}, "eval_s": time.perf_counter() - t0,
        }
        return ppl

    def loss(self, arch: Architecture) -> float:
        """log perplexity if feasible, else a penalty above every feasible loss (smaller the
        nearer the feasible range)."""
        pred = self.upper_ms(arch)
        if pred > self.limit_ms:
            return 1e3 + pred / self.limit_ms
        if pred < self.floor_ms:
            return 1e3 + self.floor_ms / pred
        ppl = self.quality(arch)
        return math.log(ppl) if math.isfinite(ppl) else 1e3

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.records.values()))
