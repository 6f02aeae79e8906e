"""`SearchOptions`: what a search is asked to do, validated in one place before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass

from latprune.checks import is_int
from latprune.errors import LatpruneError
from latprune.workload import METRICS

DEFAULT_OPTIMIZER = "PortfolioDiscreteOnePlusOne"  # benchmarks/results/optimizer_choice.md
STRATEGIES = ("auto", "nas", "random", "uniform", "layers")
SPACES = ("uniform", "per-layer")  # per-layer: search/per_layer.py
DTYPES = ("bf16", "fp32")  # of the saved checkpoint
DEFAULT_RECOVER_MINUTES = 8.0  # distillation (finalists' + winner's); keeps `latprune run` within ~25 minutes here
RUN_SAMPLES = 24  # `latprune run`'s profile: half space-filling, half aimed at the budget


@dataclass(frozen=True)
class SearchOptions:
    """A latency budget (`latency_ms` of `metric`; None until `run` derives it from the
    profile) and how to search under it. `safety_margin` is the user's: the predicted upper
    bound must be <= budget x (1 - safety_margin)."""

    latency_ms: float | None
    metric: str = "decode_ms"
    safety_margin: float = 0.0
    evaluations: int = 60
    strategy: str = "auto"  # layers when some depth fits, else nas (search/strategies.resolve_auto)
    optimizer: str = DEFAULT_OPTIMIZER
    space: str = "uniform"  # "per-layer": a per-layer search follows the last round, seeded by its best
    seed: int = 0
    finalists: int = 2  # near-budget candidates verified on the device (+ fallbacks: next refined, best safe)
    device_measurements: int = 6  # refinement: candidates timed near the budget, the predictor refitted each time
    finalist_steps: int = 6  # distillation steps each passing finalist gets before the winner is chosen (0: none)
    pareto: int = 0
    distill_steps: int = 0  # > 0: recover the winner for exactly this many steps instead of recover_minutes
    recover_minutes: float = DEFAULT_RECOVER_MINUTES
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise LatpruneError(f"--metric must be one of {', '.join(METRICS)}; got '{self.metric}'")
        if self.strategy not in STRATEGIES:
            raise LatpruneError(f"--strategy must be one of {', '.join(STRATEGIES)}; got '{self.strategy}'")
        if self.space not in SPACES:
            raise LatpruneError(f"--space must be one of {', '.join(SPACES)}; got '{self.space}'")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms > 0):
            raise LatpruneError(f"--latency-ms must be a positive number; got {self.latency_ms}")
        if not 0 <= self.safety_margin < 1:
            raise LatpruneError(f"--margin must be in [0, 1); got {self.safety_margin}")
        for name, lowest in (("evaluations", 1), ("finalists", 1), ("device_measurements", 0),
                             ("finalist_steps", 0), ("seed", 0), ("pareto", 0),
                             ("distill_steps", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < lowest:
                raise LatpruneError(f"--{name.replace('_', '-')} must be an integer >= {lowest}; got {value!r}")
        if not (isinstance(self.recover_minutes, int | float) and 0 <= self.recover_minutes < math.inf):
            raise LatpruneError(f"--recover-minutes must be a number >= 0; got {self.recover_minutes!r}")
        if self.dtype not in DTYPES:
            raise LatpruneError(f"--dtype must be one of {', '.join(DTYPES)}; got '{self.dtype}'")
        if self.optimizer != DEFAULT_OPTIMIZER:
            import nevergrad as ng

            if self.optimizer not in ng.optimizers.registry:
                raise LatpruneError(f"unknown nevergrad optimizer '{self.optimizer}' (e.g. {DEFAULT_OPTIMIZER}, "
                                    "NGOpt, DiscreteOnePlusOne)")
            if not self.uses_optimizer:
                raise LatpruneError(f"--optimizer drives the nevergrad searches (--strategy nas, --space per-layer); "
                                    f"the '{self.strategy}' strategy has none (add --strategy nas)")

    @property
    def uses_optimizer(self) -> bool:
        """Whether a nevergrad search runs (`--strategy nas` or `--space per-layer`)."""
        return self.strategy == "nas" or self.space == "per-layer"

    @property
    def limit_ms(self) -> float:
        """The limit the predicted upper bound is held to."""
        return self.latency_ms * (1 - self.safety_margin)
