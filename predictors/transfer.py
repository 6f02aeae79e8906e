"""Transfer: a latency predictor for a new device or workload from a few target rows and
the predictors of devices already profiled (`latprune fit NEW.parquet --transfer-from SRC`).

Per metric: t(a) = sum_k c_k s_k(a) + sum_j d_j r_j(a) + e, where s_k(a) is source k's
predicted median for architecture a, asked inside the workload range it was fitted on (its
trees cannot extrapolate to a longer prompt, and derived features beyond that range read as
another architecture), and r(a) the target's own terms: the roofline's (weight + KV bytes,
FLOPs, layers) and the context's (prefill: attention FLOPs over the prompt; decode: the
KV-cache bytes a step reads, and those of the cache's copy repeated to every query head when
attention is grouped), each scaled to the sources' mean (a term that is zero on every
target row gets no weight), fitted for absolute error.
Additive, because a device or workload differs from another mostly in how fast it moves
bytes, does FLOPs, pays per-layer overheads and attends over its context, so the target is
a source rescaled plus a share of each term.

The fit is local in model size (design 6): for each architecture asked, the target rows are
weighted by a Gaussian kernel in log source latency (bandwidth from BANDWIDTHS, an infinite
one being one global fit) and by latency squared (absolute error: the rows where budgets
lie set the fit, not the many small rows of a spread plan), and a ridge solved per query
pulls the terms toward 0 while the sources' coefficients are nearly free (SOURCE_PENALTY):
their sum is the target/source rescale, free to differ with size. Why local: on two
CPUs the ratio target/source of decode is flat (1.2-1.4) over large models and far from it
for small ones (0.6-3.3), and a global fit of few rows whose large rows share one KV
grouping gave confounded terms large weights, so held-out large rows of other groupings came
out 10-18% low (design 5, 70% within 10% on a fresh 2-thread Xeon set). Bandwidth and ridge
strength are chosen by weighted leave-one-out error over the grid, every (bandwidth,
strength, left-out row, query) system solved at once with `jax.vmap`: the least error;
or, with fewer than FEW_ROWS_PER_TERM rows per design column, the bandwidth of the least
error and there the strongest ridge within one standard error of it (design 7: the least
alone chose fits that five or ten rows could not pin down, and with 20 rows the rule kept
the context's terms too small for a longer prompt). Predictions keep the target rows and
solve their own small systems. And per metric the target rows alone
(an XGBoost surrogate, as `fit` without sources) compete with the transfer by leave-one-out
error on the same rows, the lower kept (`chosen`): the sources are used only where they
help.

The upper bound is the median x (1 + the split-conformal 90% quantile of the chosen model's
leave-one-out relative errors), or, below 9 rows (too few for that quantile), x (1 + the
larger of 1.5 x the largest error and 15%): honest with few rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from latprune.errors import LatpruneError

from .features import RAW, context_term, features, roofline_terms
from .surrogates import XGBoostSurrogate

if TYPE_CHECKING:
    from .predictor import Predictor

MIN_ROWS = 4  # target rows (the parent's reference timing counts as one)
LAMBDAS = np.logspace(-3, 3, 13)  # ridge strengths tried by leave-one-out
COVERAGE = 0.9
FLOOR = 0.2  # a prediction never falls below this share of the sources' plain rescale
FEW_ROWS_WIDTH = 0.15  # the least upper-bound widening below 9 rows (too few for a 90% quantile)
BANDWIDTHS = (0.25, 0.5, 1.0, math.inf)  # locality in log source latency tried by leave-one-out (inf: global)
FEW_ROWS_PER_TERM = 2  # below this many rows per design column, the one-standard-error rule chooses
SOURCE_PENALTY = 1e-3  # the sources' coefficients are pulled toward the rescale this much weaker than the terms
DESIGN = 7  # 2: the context's own term, sources asked inside their workload range; 3: the KV repeat's term;
#            4: the target rows alone compete with the transfer by leave-one-out error; 5: absolute error;
#            6: the fit local in model size, the sources' scale free; 7: the one-standard-error rule
#            below FEW_ROWS_PER_TERM rows per design column
READS = (3, 4, 5, 6, 7)  # designs this latprune loads (3-5: one global fit; 6-7: the same state)
TRANSFERRED, TARGET_ONLY = "transfer", "target rows only"  # what `TransferSurrogate.chosen` says


def require_jax():
    """jax, or one line naming the extra that installs it."""
    try:
        import jax
    except ImportError:
        raise LatpruneError("transfer needs jax: pip install -e '.[jax]' (setup.sh installs it)") from None
    return jax


def source_medians(sources: list[Predictor], metric: str, cols: pd.DataFrame) -> np.ndarray:
    """[n, K]: each source's predicted median of `metric` for columns (RAW names, the
    target's batch and prompt, each clipped to the range that source was fitted on), each
    source's features built with its own dtype."""
    return np.column_stack([src.surrogates[metric].predict_all(features(src.space, _within(src, cols[RAW]), src.dtype))
                            for src in sources])


def _within(source: Predictor, cols: pd.DataFrame) -> pd.DataFrame:
    """`cols` with each workload column clipped to `source`'s fitted workload range."""
    ranges = {k: v for k, v in source.meta["workload_range"].items() if k in cols}
    return cols.assign(**{k: cols[k].clip(lo, hi) for k, (lo, hi) in ranges.items()})


def local_ridge(a: np.ndarray, k: np.ndarray, lam, penalty: np.ndarray, prior: np.ndarray):
    """Per query q (a row of `k`, the rows' weights for it [m, n]): the ridge coefficients
    [m, p] minimising sum_i k_qi (a_i . c - 1)^2 + lam sum_j penalty_j (c_j - prior_j)^2, where
    a_i is design row i over its target (relative error). jax.numpy, so the leave-one-out grid
    is one vmapped, jitted call; eager for predictions."""
    jnp = require_jax().numpy
    lhs = jnp.einsum("ni,mn,nj->mij", a, k, a) + jnp.diag(lam * penalty + 1e-6)
    rhs = jnp.einsum("ni,mn->mi", a, k) + lam * penalty * prior
    return jnp.linalg.solve(lhs, rhs[..., None])[..., 0]


def kernel(u_query: np.ndarray, u_rows: np.ndarray, bandwidth: float) -> np.ndarray:
    """[m, n] Gaussian weights of the rows for each query by distance in log source latency
    (all ones for an infinite bandwidth: one global fit)."""
    if not math.isfinite(bandwidth):
        return np.ones((len(u_query), len(u_rows)))
    return np.exp(-0.5 * ((u_query[:, None] - u_rows[None, :]) / bandwidth) ** 2)


def _loo_grid(a: np.ndarray, u: np.ndarray, weights: np.ndarray, penalty: np.ndarray,
              prior: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions (ratios to the targets) [H, L, n] for every bandwidth in
    BANDWIDTHS and ridge strength in LAMBDAS: row i predicted from the others, weighted for it."""
    jax = require_jax()
    jnp = jax.numpy
    x = jnp.asarray(a, dtype=jnp.float32)
    pen, mean = jnp.asarray(penalty, dtype=jnp.float32), jnp.asarray(prior, dtype=jnp.float32)
    grid = jax.jit(jax.vmap(lambda k, lam: jnp.sum(local_ridge(x, k, lam, pen, mean) * x, axis=1), (None, 0)))
    lams = jnp.asarray(LAMBDAS, dtype=jnp.float32)
    out = []
    for h in BANDWIDTHS:
        k = kernel(u, u, h) * weights[None, :] * (1.0 - np.eye(len(u)))  # row i left out of its own fit
        out.append(np.asarray(grid(jnp.asarray(k, dtype=jnp.float32), lams), dtype=float))
    return np.stack(out)


def choose_fit(errors: np.ndarray, few_rows: bool) -> tuple[int, int]:
    """(bandwidth, strength) indices into BANDWIDTHS and LAMBDAS, from the rows' weighted
    leave-one-out errors [H, L, n]: the least mean error; with `few_rows`, at its bandwidth
    the strongest ridge whose mean error is within one standard error of the least (the
    one-standard-error rule): with five or ten rows the least error is mostly luck."""
    mean = errors.mean(axis=2)
    h, lam = np.unravel_index(np.argmin(mean), mean.shape)
    if not few_rows:
        return int(h), int(lam)
    limit = mean[h, lam] + errors[h, lam].std(ddof=1) / math.sqrt(errors.shape[2])
    return int(h), int(np.flatnonzero(mean[h] <= limit).max())  # LAMBDAS ascend; the least is among them


def conformal_width(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Relative widening of the upper bound: the split-conformal COVERAGE quantile of the
    absolute relative errors (over- and under-predictions alike: a handful of rows that
    happen to be over-predicted says little about the next one); when rows are too few for
    that quantile, 1.5 x the largest error and at least FEW_ROWS_WIDTH."""
    errors = np.sort(np.abs(actual / predicted - 1))
    k = math.ceil((len(errors) + 1) * COVERAGE)
    return float(errors[k - 1] if k <= len(errors) else max(1.5 * errors[-1], FEW_ROWS_WIDTH))


class TransferSurrogate:
    """One metric of a transferred predictor: the sources' predictions corrected with the
    target's rows (see the module docstring). `fit` returns the leave-one-out predictions."""

    kind = "transfer"

    def __init__(self, metric: str, sources: list[Predictor], folders: list[str] | None = None):
        self.metric, self.sources = metric, sources
        self.folders = folders or [f"source-{k}" for k in range(len(sources))]
        self.scale = self.prior = None
        self.coef: np.ndarray | None = None  # the global fit's coefficients (infinite bandwidth)
        self.rows: dict[str, np.ndarray] = {}  # the target rows a local fit solves with at each query
        self.lam, self.bandwidth, self.cv_under = float("nan"), math.inf, 0.0
        self.target_only: XGBoostSurrogate | None = None  # set when the target rows alone predicted them better
        self.loo_rms: dict[str, float] = {}

    def _design(self, f: pd.DataFrame) -> np.ndarray:
        """[sources' medians, roofline terms (bytes, FLOPs, layers), the context's terms and 1,
        the terms scaled to the medians]."""
        s = source_medians(self.sources, self.metric, f)
        terms = np.column_stack([roofline_terms(f, self.metric)[:, :3], context_term(f, self.metric), np.ones(len(f))])
        if self.scale is None:
            mean = terms.mean(axis=0)
            self.scale = np.divide(s.mean(), mean, out=np.zeros_like(mean), where=mean > 0)
        return np.column_stack([s, terms * self.scale])

    def _penalty(self, p: int) -> np.ndarray:
        k = len(self.sources)
        return np.r_[np.full(k, SOURCE_PENALTY), np.ones(p - k)]

    def fit(self, f: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        k = len(self.sources)
        self.scale = None
        x = self._design(f)
        weights = _row_weights(y)
        rel = x[:, :k].mean(axis=1) / y
        ratio = float((weights * rel).sum() / (weights * rel**2).sum())  # the rescale fitted for absolute error
        self.prior = np.r_[np.full(k, ratio / k), np.zeros(x.shape[1] - k)]
        loo = _loo_grid(x / y[:, None], _size(x, k), weights, self._penalty(x.shape[1]), self.prior)
        loo = np.maximum(loo, FLOOR * ratio * rel)  # as `predict_all` floors them
        h, best = choose_fit(weights * (loo - 1) ** 2, few_rows=len(y) < FEW_ROWS_PER_TERM * x.shape[1])
        self.bandwidth, self.lam = BANDWIDTHS[h], float(LAMBDAS[best])
        self.rows = {"design": x, "targets": np.asarray(y, dtype=float)}
        self.coef = self._coefs(x[:1])[0] if not math.isfinite(self.bandwidth) else None
        oof = loo[h, best] * y
        alone = _target_only_loo(self.metric, f, y)
        self.loo_rms = {TRANSFERRED: _rms(y, oof), TARGET_ONLY: _rms(y, alone)}
        self.target_only = None
        if self.loo_rms[TARGET_ONLY] < self.loo_rms[TRANSFERRED]:
            self.target_only, oof = XGBoostSurrogate(self.metric).fit(f, y), alone
        self.cv_under = conformal_width(y, oof)
        return oof

    def _coefs(self, x: np.ndarray) -> np.ndarray:
        """[m, p] coefficients for query design rows `x`: the target rows weighted for each
        query by its closeness in size (one fit for all at an infinite bandwidth)."""
        design, y, k = self.rows["design"], self.rows["targets"], len(self.sources)
        w = kernel(_size(x, k), _size(design, k), self.bandwidth) * _row_weights(y)[None, :]
        return np.asarray(local_ridge(design / y[:, None], w, self.lam, self._penalty(x.shape[1]), self.prior),
                          dtype=float)

    @property
    def chosen(self) -> str:
        """Which model predicts: TRANSFERRED or TARGET_ONLY (the lower leave-one-out error)."""
        return TRANSFERRED if self.target_only is None else TARGET_ONLY

    def predict_all(self, f: pd.DataFrame) -> np.ndarray:
        if self.target_only is not None:
            return self.target_only.predict_all(f)
        x = self._design(f)
        k = len(self.sources)
        coef = np.broadcast_to(self.coef, x.shape) if self.coef is not None else self._coefs(x)
        rescaled = x[:, :k].mean(axis=1) * coef[:, :k].sum(axis=1)
        return np.maximum((x * coef).sum(axis=1), FLOOR * rescaled)  # never below a share of the plain rescale

    def predict(self, f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(median, upper bound)."""
        median = self.predict_all(f)
        return median, median * (1 + self.cv_under)

    def save(self, folder: Path) -> dict:
        from latprune.files import PREDICTOR_MARKER

        for src, name in zip(self.sources, self.folders):
            if not (folder / name / PREDICTOR_MARKER).is_file():  # one copy for every metric
                src.save(folder / name)
        state = {"design": DESIGN, "scale": self.scale.tolist(), "lambda": self.lam,
                 "bandwidth": self.bandwidth if math.isfinite(self.bandwidth) else None,
                 "prior": self.prior.tolist(), "cv_under": self.cv_under, "sources": self.folders,
                 "chosen": self.chosen, "loo_rms_error": self.loo_rms}
        if self.coef is not None:
            state["coef"] = self.coef.tolist()
        else:
            state["rows"] = {key: v.tolist() for key, v in self.rows.items()}
        if self.target_only is not None:
            state["target_only"] = self.target_only.save(folder)
        return state

    @classmethod
    def load(cls, metric: str, state: dict, folder: Path) -> TransferSurrogate:
        from .predictor import Predictor

        if state.get("design") not in READS:
            raise LatpruneError(f"transferred predictor '{folder}' was fitted by an older latprune (design "
                                f"{state.get('design', 1)}, this one {DESIGN}); refit it with 'latprune fit ... "
                                "--transfer-from'")
        s = cls(metric, [Predictor.load(folder / name) for name in state["sources"]], state["sources"])
        s.scale, s.lam, s.cv_under = np.array(state["scale"]), state["lambda"], state["cv_under"]
        s.coef = np.array(state["coef"]) if "coef" in state else None  # designs 3-5 always: one global fit
        s.bandwidth = state.get("bandwidth") or math.inf
        s.prior = np.array(state["prior"]) if "prior" in state else None
        s.rows = {key: np.array(v) for key, v in state.get("rows", {}).items()}
        s.loo_rms = state.get("loo_rms_error", {})
        if "target_only" in state:
            s.target_only = XGBoostSurrogate.load(metric, state["target_only"], folder)
        return s


def _row_weights(y: np.ndarray) -> np.ndarray:
    """Each target row's weight on its relative error: latency squared (absolute errors)."""
    return (y / y.mean()) ** 2


def _size(x: np.ndarray, k: int) -> np.ndarray:
    """Log of the sources' mean prediction: where a row lies in size, what locality means."""
    return np.log(np.maximum(x[:, :k].mean(axis=1), 1e-9))


def _rms(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean square error, relative to the mean latency (the absolute error the fit
    minimises, in a unit that reads across devices)."""
    return float(np.sqrt(np.mean((predicted - actual) ** 2)) / np.mean(actual))


def _target_only_loo(metric: str, f: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of an XGBoost surrogate fitted on the target rows alone."""
    out = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        out[i] = XGBoostSurrogate(metric).fit(f.iloc[keep], y[keep]).predict_all(f.iloc[[i]])[0]
    return out


# ---- fitting, as `Predictor.fit(kind="transfer")` calls it ---------------------------------
BAND_SPLIT = "leave-one-out CV, against each architecture's median timing"


def check_sources(sources: list[Predictor], target: pd.Series) -> None:
    """One line for the first source that cannot transfer to the profile row `target`'s model."""
    from .features import FEATURE_SCHEMA
    from .predictor import METRICS

    if not sources:
        raise LatpruneError("a transferred predictor needs at least one source (--transfer-from)")
    for k, src in enumerate(sources):
        name = f"source {k + 1} (device '{src.meta['device']}')"
        if src.meta["model"]["config_hash"] != target.model_hash:
            raise LatpruneError(f"{name} was fitted for model {src.meta['model']['name']} "
                                f"({src.meta['model']['config_hash']}), the target profile is of {target.model_name} "
                                f"({target.model_hash}); transfer works between devices of one parent model")
        if src.meta.get("feature_schema") != FEATURE_SCHEMA:
            raise LatpruneError(f"{name} uses feature schema {src.meta.get('feature_schema')}, this latprune "
                                f"{FEATURE_SCHEMA}; refit it")
        missing = [m for m in METRICS if m not in src.surrogates]
        if missing:
            raise LatpruneError(f"{name} has no surrogate for {', '.join(missing)}; refit it with this latprune")


def fit_metric(metric: str, sources: list[Predictor], f: pd.DataFrame, y: np.ndarray, *,
               parent_ms: float | None) -> tuple[TransferSurrogate, dict, dict]:
    """The surrogate of one metric fitted on labels `y` (each row's median timing), its
    leave-one-out accuracy, overall and by band."""
    from .accuracy import accuracy, accuracy_by_band

    surrogate = TransferSurrogate(metric, sources)
    oof = surrogate.fit(f, y)
    bands = accuracy_by_band(y, oof, parent_ms) if parent_ms else {}
    return surrogate, {"leave-one-out CV": accuracy(y, oof)}, bands


def record(sources: list[Predictor], rows: pd.DataFrame) -> dict:
    """What metadata.json says of a transfer: the sources and the target rows used."""
    return {"sources": [{"folder": f"source-{k}", "device": src.meta["device"], "kind": src.kind,
                         "workload_range": src.meta["workload_range"], "rows": src.meta["rows"],
                         "accuracy": src.meta["accuracy"]} for k, src in enumerate(sources)],
            "target_rows": int(len(rows)), "target_arch_ids": sorted(rows.arch_id.unique().tolist())}


def load_sources(paths: list[str | Path], exclude: Path | None = None) -> list[Predictor]:
    """Source predictors: predictor directories as they are, profiles fitted (XGBoost) here."""
    from latprune.files import PREDICTOR_MARKER
    from latprune.profiling.dataset import read_profile

    from .predictor import Predictor

    require_jax()  # before any fitting
    sources = []
    for p in map(Path, paths):
        if exclude is not None and p.resolve() == exclude.resolve():
            raise LatpruneError(f"'{p}' is the target profile itself; transfer from another device's predictor")
        if (p / PREDICTOR_MARKER).is_file():
            sources.append(Predictor.load(p))
        elif p.is_file():
            sources.append(Predictor.fit(read_profile(p)))
        else:
            raise LatpruneError(f"--transfer-from '{p}' is neither a predictor directory nor a profile file")
    return sources


def source_estimate(sources: list[Predictor], workload):
    """archs -> [n, 2]: the sources' mean predicted (prefill_ms, decode_ms) at `workload`,
    what `profiling.sampling.spread_plan` spreads a transfer profile over."""
    from .features import arch_columns

    def estimate(archs):
        cols = arch_columns(archs).assign(batch=workload.batch, prompt=workload.prompt)
        logs = [np.log(source_medians(sources, m, cols)).mean(axis=1) for m in ("prefill_ms", "decode_ms")]
        return np.exp(np.column_stack(logs))  # the sources' geometric mean

    return estimate
