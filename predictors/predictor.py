"""`Predictor`: per-device latency surrogates for one parent model, with honest accuracy.

A predictor directory holds `metadata.json` (device and host fingerprint, parent model
identity and config, workload range, feature schema, training rows, accuracy, versions)
and the surrogate files (XGBoost's own UBJ format; no pickle).
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.files import PREDICTOR_MARKER, atomic_dir, check_out
from latprune.models import config_from_dict
from latprune.profiling.dataset import HETERO_ROLE, read_profile, reference_rows, timed_rows, usable_rows
from latprune.space import SearchSpace
from latprune.workload import Workload

from .accuracy import accuracy, accuracy_by_band, format_band_table, format_table, repeatability_by_band
from .features import FEATURE_SCHEMA, FEATURES, arch_columns, features
from .surrogates import SURROGATES

PREDICTOR_VERSION = 2  # 2: the surrogates' under-prediction widening is named cv_under
METRICS = ("prefill_ms", "decode_ms")
MIN_ROWS = 12
SCALE_NEIGHBOURS = 3  # timed per-layer architectures whose median ratio scales one per-layer prediction


def _parent_space(config_json: str) -> tuple[SearchSpace, Any]:
    config = config_from_dict(json.loads(config_json))
    return SearchSpace.from_config(config), config


def _split_folds(n: int, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), folds)


def _training_rows(frame: pd.DataFrame, min_rows: int = MIN_ROWS) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Usable sample rows plus one reference row per workload; their counts; the references."""
    rows, counts = usable_rows(frame)
    refs = reference_rows(frame)
    counts["reference_median_rows"] = int(len(refs))
    rows = pd.concat([rows, refs], ignore_index=True)
    for column in ("device", "model_hash", "dtype"):
        if rows[column].nunique() > 1:
            raise LatpruneError(f"the profile mixes several {column}s ({sorted(rows[column].unique())}); "
                                "fit one device and model at a time")
    if len(rows) < min_rows:
        raise LatpruneError(f"only {len(rows)} usable rows ({counts}); this predictor needs at least {min_rows}: "
                            "profile more samples")
    return rows, counts, refs


def _fit_metric(kind: str, metric: str, f: pd.DataFrame, y: np.ndarray, split: tuple[np.ndarray, np.ndarray], *,
                folds: int, rng: np.random.Generator, parent_ms: float | None) -> tuple[Any, dict, dict]:
    """The surrogate of one metric fitted on every row's label `y` (its architecture's median
    timing, `_repeat_medians`), widened by its cross-validated under-prediction; with its
    k-fold CV and held-out accuracy, and the CV accuracy by band of latency relative to the
    parent's (empty without a parent timing)."""
    train, hold = split
    oof = np.empty(len(train))
    for fold in _split_folds(len(train), folds, rng):
        rest = np.setdiff1d(np.arange(len(train)), fold)
        model = SURROGATES[kind](metric).fit(f.iloc[train[rest]], y[train[rest]])
        oof[fold] = model.predict_all(f.iloc[train[fold]])
    held_pred = SURROGATES[kind](metric).fit(f.iloc[train], y[train]).predict_all(f.iloc[hold])
    acc = {f"{folds}-fold CV": accuracy(y[train], oof), "held-out": accuracy(y[hold], held_pred)}
    final = SURROGATES[kind](metric).fit(f, y)
    under = y[train] / oof - 1  # > 0: the prediction was too low
    final.cv_under = float(max(0.0, np.quantile(under, 0.9)))
    return final, acc, accuracy_by_band(y[train], oof, parent_ms) if parent_ms else {}


def _repeat_medians(frame: pd.DataFrame, rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The label of each training row: the median of every timing of its architecture at its
    workload (`timed_rows`: samples, refinement, verification and re-test rows), or its own
    timing where it has no other; the reference row keeps its own. A single timing can be an
    outlier, and re-timing an architecture should make its label better, not be thrown away."""
    medians = timed_rows(frame).groupby(["arch_id", "workload"])[metric].median()
    keys = pd.MultiIndex.from_frame(rows[["arch_id", "workload"]])
    return medians.reindex(keys).fillna(pd.Series(rows[metric].to_numpy(float), index=keys)).to_numpy(float)


def _repeatability(frame: pd.DataFrame, refs: pd.DataFrame) -> dict[str, dict]:
    """Test-retest agreement of the profile's repeated timings (`timed_rows` of one
    architecture, one workload), by band, per metric."""
    if refs.empty:
        return {}
    timed = timed_rows(frame)
    timed = timed[timed.workload == refs.workload.iloc[0]]
    return {m: r for m in METRICS if (r := repeatability_by_band(timed, m, float(refs[m].iloc[0])))}


def _metadata(first: pd.Series, rows: pd.DataFrame, counts: dict, refs: pd.DataFrame, *, kind: str, acc: dict,
              seed: int) -> dict[str, Any]:
    return {
        "latprune_predictor_version": PREDICTOR_VERSION,
        "kind": kind,
        "device": first.device,
        "dtype": first["dtype"],
        "device_json": json.loads(first.device_json),
        "host": json.loads(first.host_json),
        "model": {"name": first.model_name, "config_hash": first.model_hash, "model_type": first.model_type},
        "parent_config_json": first.parent_config_json,
        "workload_range": {k: [int(rows[k].min()), int(rows[k].max())] for k in ("batch", "prompt", "generate")},
        "metrics": list(METRICS),
        "feature_schema": FEATURE_SCHEMA,
        "features": FEATURES,
        "rows": counts,
        # the scale of every paired row: the parent's latency at the profile's calibration
        "baseline_ms": {str(r.workload): {m: float(r[m]) for m in METRICS} for _, r in refs.iterrows()},
        "accuracy": acc,
        "seed": seed,
        "versions": json.loads(first.versions_json),
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class Predictor:
    """Latency surrogates for every metric of one (device, parent model)."""

    def __init__(self, kind: str, space: SearchSpace, dtype: str, surrogates: dict, meta: dict):
        self.kind, self.space, self.dtype, self.surrogates, self.meta = kind, space, dtype, surrogates, meta

    # ---- fit ---------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, kind: str = "xgboost", seed: int = 0, folds: int = 5,
            holdout: float = 0.2, sources: list[Predictor] = ()) -> Predictor:
        """Fit on a profile's usable sample rows (each labelled with its architecture's median
        timing) plus the parent's reference timing at the profile's baseline; accuracy from
        k-fold CV and a held-out split. Kind 'transfer':
        the `sources` predictors corrected with these (few) rows, accuracy by leave-one-out
        (`predictors.transfer`)."""
        if kind == "transfer":
            from . import transfer
        elif kind not in SURROGATES:
            raise LatpruneError(f"unknown predictor kind '{kind}'; choose from {', '.join(SURROGATES)}")
        rows, counts, refs = _training_rows(frame, transfer.MIN_ROWS if kind == "transfer" else MIN_ROWS)
        first = rows.iloc[0]
        if kind == "transfer":
            transfer.check_sources(sources, first)
        space, _ = _parent_space(first.parent_config_json)
        f = features(space, rows, first["dtype"])
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(rows))
        n_hold = max(3, int(round(holdout * len(rows))))
        split = (perm[n_hold:], perm[:n_hold])
        surrogates, acc, bands = {}, {}, {}
        for metric in METRICS:
            parent_ms = float(refs[metric].iloc[0]) if not refs.empty else None
            y = _repeat_medians(frame, rows, metric)
            surrogates[metric], acc[metric], bands[metric] = transfer.fit_metric(
                metric, sources, f, y, parent_ms=parent_ms) if kind == "transfer" else _fit_metric(
                kind, metric, f, y, split, folds=folds, rng=rng, parent_ms=parent_ms)
        meta = _metadata(first, rows, counts, refs, kind=kind, acc=acc, seed=seed)
        meta["accuracy_by_band"] = {m: b for m, b in bands.items() if b}
        meta["repeatability_by_band"] = _repeatability(frame, refs)
        if kind == "transfer":
            meta.update(band_split=transfer.BAND_SPLIT, transfer=transfer.record(sources, rows))
        fitted = cls(kind, space, first["dtype"], surrogates, meta)
        fitted.meta["per_layer_timings"] = _per_layer_timings(fitted, frame, first)
        return fitted

    @property
    def sources(self) -> list[Predictor]:
        """The predictors a transferred predictor corrects (none for the other kinds)."""
        return list(getattr(next(iter(self.surrogates.values())), "sources", []))

    def accuracy_table(self) -> str:
        """Overall accuracy, and cross-validated accuracy by latency band (when the profile has a parent timing)."""
        bands = self.meta.get("accuracy_by_band")
        ceiling = self.meta.get("repeatability_by_band")
        split = self.meta.get("band_split", "5-fold CV, against each architecture's median timing")
        return format_table(self.meta["accuracy"]) + ("\n\n" + format_band_table(bands, split, ceiling=ceiling)
                                                     if bands else "")

    # ---- predict -------------------------------------------------------------
    def check_workload(self, workload: Workload, allow_mismatch: bool = False) -> None:
        for key, (lo, hi) in self.meta["workload_range"].items():
            value = getattr(workload, key)
            if key != "generate" and not lo <= value <= hi:
                msg = (f"predictor was fitted for {key} {lo}..{hi}, asked for {value}; "
                       "profile that workload or pass --allow-mismatch")
                if not allow_mismatch:
                    raise LatpruneError(msg)
                warnings.warn(msg, stacklevel=2)

    def predict_columns(self, cols: pd.DataFrame, workload: Workload) -> pd.DataFrame:
        """Predicted median and upper bound of every metric (and e2e) for architecture columns."""
        cols = cols.assign(batch=workload.batch, prompt=workload.prompt)
        f = features(self.space, cols, self.dtype)
        out = pd.DataFrame(index=cols.index)
        for metric, model in self.surrogates.items():
            out[metric], out[f"{metric}_upper"] = model.predict(f)
        out["e2e_ms"] = workload.e2e_ms(out.prefill_ms, out.decode_ms)
        out["e2e_ms_upper"] = workload.e2e_ms(out.prefill_ms_upper, out.decode_ms_upper)
        return out

    def default_workload(self) -> Workload:
        """The workload the predictor was fitted on (the smallest, when it spans several)."""
        return Workload(**{k: v[0] for k, v in self.meta["workload_range"].items()})

    def baseline(self, workload: Workload) -> dict[str, float] | None:
        """The parent's latency at the scale of the profile behind the predictor (None for
        predictors fitted before it was stored)."""
        return self.meta.get("baseline_ms", {}).get(workload.key)

    def predict(self, archs: list[Architecture], workload: Workload | None = None) -> pd.DataFrame:
        """Predicted median and upper bound of every metric. A per-layer architecture is
        composed from uniform ones: a decoder's latency is a fixed part plus one block per
        layer, so with L layers, T = mean over layers i of T(L layers all shaped like layer i)
        (`compose`); exact for uniform architectures, additive across blocks otherwise."""
        for a in archs:
            self.space.validate(a)
        workload = workload or self.default_workload()
        variants, weights = compose(archs)
        per_variant = self.predict_columns(arch_columns(variants), workload)
        out = pd.DataFrame(weights @ per_variant.to_numpy(), columns=per_variant.columns)
        if timings := self.meta.get("per_layer_timings"):  # what this device's per-layer timings showed
            mixed = np.array([not a.is_uniform for a in archs], dtype=bool)
            layers = np.array([a.num_layers for a in archs])[mixed]
            for metric, timed in timings.items():
                factor = local_scale(np.asarray(timed, float), layers, out.loc[mixed, metric].to_numpy(float))
                out.loc[mixed, [metric, f"{metric}_upper"]] *= factor[:, None]
            out["e2e_ms"] = workload.e2e_ms(out.prefill_ms, out.decode_ms)
            out["e2e_ms_upper"] = workload.e2e_ms(out.prefill_ms_upper, out.decode_ms_upper)
        return out

    # ---- files -----------------------------------------------------------------
    def save(self, out: str | Path, inputs: list = ()) -> Path:
        """Write the directory atomically (temporary sibling, then rename); an existing `out`
        is replaced only when it is a predictor, and never when it holds one of `inputs`."""
        with atomic_dir(out, PREDICTOR_MARKER, inputs) as tmp:
            states = {metric: model.save(tmp) for metric, model in self.surrogates.items()}
            (tmp / PREDICTOR_MARKER).write_text(json.dumps({**self.meta, "surrogates": states}, indent=2))
            (tmp / "accuracy.md").write_text(self.accuracy_table() + "\n")
        return Path(out)

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None, model_hash: str | None = None,
             allow_mismatch: bool = False) -> Predictor:
        """Load and validate; a predictor for another device or model is refused, a damaged
        one is refused in one line."""
        folder = Path(folder)
        if not (folder / PREDICTOR_MARKER).is_file():
            raise LatpruneError(f"'{folder}' is not a predictor directory (no {PREDICTOR_MARKER}); run 'latprune fit'")
        try:
            meta = json.loads((folder / PREDICTOR_MARKER).read_text())
            if meta.get("latprune_predictor_version") != PREDICTOR_VERSION or \
                    meta.get("feature_schema") != FEATURE_SCHEMA:
                raise LatpruneError(f"predictor '{folder}' was written by an incompatible latprune; refit it")
            _check_identity(folder, meta, device, model_hash, allow_mismatch)
            space, _ = _parent_space(meta["parent_config_json"])
            surrogates = {m: _surrogate_class(meta["kind"]).load(m, s, folder)
                          for m, s in meta.pop("surrogates").items()}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:  # json, xgboost, missing parts
            raise LatpruneError(f"predictor '{folder}' is incomplete or damaged ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); refit it with 'latprune fit'"
                                ) from None
        return cls(meta["kind"], space, meta["dtype"], surrogates, meta)


def _per_layer_timings(predictor: Predictor, frame: pd.DataFrame, first: pd.Series) -> dict[str, list]:
    """Per metric, [layers, composed ms, measured ms] of every per-layer architecture the
    profile timed (HETERO_ROLE: refinement's, or a `--plan per-layer` profile's) on this
    device, parent and workload (its median over repeats); {} without any. Composition
    inherits each uniform variant's error and the session's drift, unequally across mixes:
    in one 0.5x search L=14 mixes measured 0.86-0.87 of their composed predictions and L=19-20
    mixes 0.93-0.95 (benchmarks/results/recovery_equal_steps.md). `local_scale` carries what
    the nearest of them showed into each later per-layer prediction."""
    rows = frame[(frame.role == HETERO_ROLE) & (frame.status == "ok") & ~frame.drift_flag.astype(bool)
                 & (frame.device == first.device) & (frame.model_hash == first.model_hash)
                 & (frame.workload == first.workload)]
    if rows.empty:
        return {}
    measured = rows.groupby("arch_id", sort=True)[list(METRICS)].median()
    archs = [Architecture.from_json(j) for j in rows.drop_duplicates("arch_id").set_index("arch_id")
             .loc[measured.index, "arch_json"]]
    workload = Workload(batch=int(first.batch), prompt=int(first.prompt))  # what prefill and decode depend on
    composed = predictor.predict(archs, workload)
    return {m: [[a.num_layers, float(c), float(t)] for a, c, t in zip(archs, composed[m], measured[m])]
            for m in METRICS}


def local_scale(timed: np.ndarray, layers: np.ndarray, composed: np.ndarray) -> np.ndarray:
    """Per architecture (`layers` deep, `composed` ms), the median measured / composed ratio of
    the SCALE_NEIGHBOURS `timed` rows ([layers, composed ms, measured ms]) nearest to it: the
    fewest layers apart first, then the nearest composed latency (in ratio)."""
    ratio = timed[:, 2] / timed[:, 1]
    out = np.empty(len(layers))
    for i, (n, c) in enumerate(zip(layers, composed)):
        order = np.lexsort((np.abs(np.log(timed[:, 1] / c)), np.abs(timed[:, 0] - n)))
        out[i] = np.median(ratio[order[:SCALE_NEIGHBOURS]])
    return out


def compose(archs: list[Architecture]) -> tuple[list[Architecture], np.ndarray]:
    """Uniform variants of `archs` and weights [len(archs), len(variants)] such that a
    per-layer architecture's latency is the weighted sum of its variants' (one variant per
    distinct layer shape, at the architecture's depth and hidden size, weighted by the share
    of layers of that shape); a uniform architecture is its own single variant, weight 1."""
    index: dict[str, int] = {}
    variants: list[Architecture] = []
    rows: list[dict[int, float]] = []
    for a in archs:
        shares: dict[int, float] = {}
        for shape in zip(a.heads, a.kv_groups, a.mlp):
            v = Architecture.uniform(list(a.layers), *shape, a.hidden)
            k = index.setdefault(v.id, len(variants))
            if k == len(variants):
                variants.append(v)
            shares[k] = shares.get(k, 0) + 1
        rows.append({k: c / a.num_layers for k, c in shares.items()})
    weights = np.zeros((len(archs), len(variants)))
    for i, shares in enumerate(rows):
        for k, w in shares.items():
            weights[i, k] = w
    return variants, weights


def _surrogate_class(kind: str):
    if kind == "transfer":
        from .transfer import TransferSurrogate

        return TransferSurrogate
    return SURROGATES[kind]


def _check_identity(folder: Path, meta: dict, device: str | None, model_hash: str | None,
                    allow_mismatch: bool) -> None:
    problems = []
    if device is not None and meta["device"] != device:
        problems.append(f"it was fitted on device '{meta['device']}', not '{device}'")
    if model_hash is not None and meta["model"]["config_hash"] != model_hash:
        problems.append(f"it was fitted for model {meta['model']['name']} ({meta['model']['config_hash']}), "
                        f"not {model_hash}")
    if problems:
        msg = f"predictor '{folder}' refused: {'; '.join(problems)}"
        if not allow_mismatch:
            raise LatpruneError(msg + " (pass --allow-mismatch to use it anyway)")
        warnings.warn(msg, stacklevel=2)


def default_predictor_dir(device: str, kind: str = "xgboost") -> Path:
    """Where `fit` writes a device's predictor unless told otherwise (and `search` looks)."""
    return Path("out") / "predictors" / (device + ("" if kind == "xgboost" else f"-{kind}"))


def load_for(folder: str | Path | None, device: str, model_hash: str, allow_mismatch: bool = False) -> Predictor:
    """The predictor `search` uses for `device` and a parent (default directory when None),
    with a one-line hint at the commands that make it when there is none."""
    from latprune.profiling.dataset import default_profile

    folder = Path(folder) if folder else default_predictor_dir(device)
    if not (folder / PREDICTOR_MARKER).is_file():
        raise LatpruneError(f"no predictor at '{folder}'; run 'latprune profile --device {device}' and "
                            f"'latprune fit {default_profile(device)}' first (or pass --predictor)")
    return Predictor.load(folder, device=device, model_hash=model_hash, allow_mismatch=allow_mismatch)


def fit_profile(profile: str | Path, out: str | Path | None = None, kind: str = "xgboost", seed: int = 0,
                transfer_from: list[str | Path] = ()) -> tuple[Predictor, Path]:
    """Fit a predictor on a profile file and save it (default out/predictors/DEVICE[-KIND]).
    With `transfer_from` (predictor directories or profiles of other devices or workloads),
    a transferred predictor (`predictors.transfer`), saved as the device's predictor."""
    path = Path(profile)
    if not path.is_file():
        raise LatpruneError(f"profile '{profile}' does not exist; run 'latprune profile' first")
    if out is not None:
        check_out(out, PREDICTOR_MARKER, [path, *transfer_from])
    if transfer_from:
        from .transfer import load_sources

        sources = load_sources(transfer_from, exclude=path)
        predictor = Predictor.fit(read_profile(path), "transfer", seed, sources=sources)
        folder = out or default_predictor_dir(predictor.meta["device"])
    else:
        predictor = Predictor.fit(read_profile(path), kind, seed)
        folder = out or default_predictor_dir(predictor.meta["device"], kind)
    return predictor, predictor.save(folder, [path, *transfer_from])
