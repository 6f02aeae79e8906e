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
a source rescaled plus a share of each term. A ridge prior pulls the fit toward the pure
rescale (c_k = k / K, where k is the median target/source ratio; d = e = 0): with a
handful of rows the target is a rescaled source, with more the correction grows. The
prior's strength is chosen by leave-one-out error over a grid, every (strength, left-out
row) system solved at once with `jax.vmap`.

A source need not resemble the target: from a 2-thread AMD EPYC to an Intel Xeon, the
target/source ratio of decode ran from 0.6-0.9 (deep, thin models: less thread
synchronisation per op) to 1.35-1.9 (large ones: less memory bandwidth) and up to 3.3 (the
smallest), which no linear correction fits everywhere. Fitted for relative error, the many
small rows of a spread plan set the compromise and every held-out architecture at >=30% of
the parent came out about 25% low; fitted for absolute error (relative error weighted by
latency squared), the rows where budgets lie set it. And per metric the target rows alone
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
DESIGN = 5  # 2: the context's own term, sources asked inside their workload range; 3: the KV repeat's term;
#            4: the target rows alone compete with the transfer by leave-one-out error; 5: absolute error
READS = (3, 4, 5)  # designs this latprune loads (the same state; only the fit that chose it differs)
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


def _loo_ridge(a: np.ndarray, prior: np.ndarray, row_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of 1 on the rows of `a` (each row a design row / its target: relative
    error), each row weighted by `row_weights`, toward `prior`, for every strength in
    LAMBDAS: (leave-one-out predictions [L, n], coefficients fitted on all rows [L, p]),
    predictions as ratios to the targets."""
    jax = require_jax()
    jnp = jax.numpy
    x, m = jnp.asarray(a, dtype=jnp.float32), jnp.asarray(prior, dtype=jnp.float32)
    rows = jnp.asarray(row_weights, dtype=jnp.float32)
    n, p = a.shape

    def solve(weights, lam):
        weights = weights * rows
        lhs = x.T @ (x * weights[:, None]) + (lam + 1e-6) * jnp.eye(p)
        return jnp.linalg.solve(lhs, x.T @ weights + lam * m)

    def loo(lam):
        coefs = jax.vmap(lambda w: solve(w, lam))(1.0 - jnp.eye(n))  # row i fitted without row i
        return jnp.sum(coefs * x, axis=1)

    lams = jnp.asarray(LAMBDAS, dtype=jnp.float32)
    preds = jax.jit(jax.vmap(loo))(lams)
    full = jax.jit(jax.vmap(lambda lam: solve(jnp.ones(n), lam)))(lams)
    return np.asarray(preds, dtype=float), np.asarray(full, dtype=float)


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
        self.coef = self.scale = None
        self.lam, self.cv_under = float("nan"), 0.0
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

    def fit(self, f: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        k = len(self.sources)
        self.scale = None
        x = self._design(f)
        ratio = float(np.median(y / x[:, :k].mean(axis=1)))
        prior = np.r_[np.full(k, ratio / k), np.zeros(x.shape[1] - k)]
        weights = (y / y.mean()) ** 2  # relative errors weighted by latency squared: absolute errors
        loo, full = _loo_ridge(x / y[:, None], prior, weights)
        best = int(np.argmin((weights * (loo - 1) ** 2).mean(axis=1)))
        self.lam, self.coef = float(LAMBDAS[best]), full[best]
        oof = np.maximum(loo[best], FLOOR) * y
        alone = _target_only_loo(self.metric, f, y)
        self.loo_rms = {TRANSFERRED: _rms(y, oof), TARGET_ONLY: _rms(y, alone)}
        self.target_only = None
        if self.loo_rms[TARGET_ONLY] < self.loo_rms[TRANSFERRED]:
            self.target_only, oof = XGBoostSurrogate(self.metric).fit(f, y), alone
        self.cv_under = conformal_width(y, oof)
        return oof

    @property
    def chosen(self) -> str:
        """Which model predicts: TRANSFERRED or TARGET_ONLY (the lower leave-one-out error)."""
        return TRANSFERRED if self.target_only is None else TARGET_ONLY

    def predict_all(self, f: pd.DataFrame) -> np.ndarray:
        if self.target_only is not None:
            return self.target_only.predict_all(f)
        x = self._design(f)
        rescaled = x[:, : len(self.sources)].mean(axis=1) * self.coef[: len(self.sources)].sum()
        return np.maximum(x @ self.coef, FLOOR * rescaled)  # never below a share of the plain rescale

    def predict(self, f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(median, upper bound)."""
        median = self.predict_all(f)
        return median, median * (1 + self.cv_under)

    def save(self, folder: Path) -> dict:
        from latprune.files import PREDICTOR_MARKER

        for src, name in zip(self.sources, self.folders):
            if not (folder / name / PREDICTOR_MARKER).is_file():  # one copy for every metric
                src.save(folder / name)
        state = {"design": DESIGN, "coef": self.coef.tolist(), "scale": self.scale.tolist(), "lambda": self.lam,
                 "cv_under": self.cv_under, "sources": self.folders, "chosen": self.chosen,
                 "loo_rms_error": self.loo_rms}
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
        s.coef, s.scale = np.array(state["coef"]), np.array(state["scale"])
        s.lam, s.cv_under = state["lambda"], state["cv_under"]
        s.loo_rms = state.get("loo_rms_error", {})
        if "target_only" in state:
            s.target_only = XGBoostSurrogate.load(metric, state["target_only"], folder)
        return s


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
