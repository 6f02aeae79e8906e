"""`Predictor`: per-device latency surrogates for one parent model, with honest accuracy.

A predictor directory holds `metadata.json` (device and host fingerprint, parent model
identity and config, workload range, feature schema, training rows, accuracy, versions)
and the surrogate files (XGBoost's own UBJ format; no pickle).
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.files import atomic_dir
from latprune.space import SearchSpace
from latprune.workload import Workload

from .accuracy import accuracy, format_table
from .features import FEATURE_SCHEMA, FEATURES, arch_columns, features
from .surrogates import SURROGATES

PREDICTOR_VERSION = 1
METRICS = ("prefill_ms", "decode_ms")
MIN_ROWS = 12


def _parent_space(config_json: str) -> tuple[SearchSpace, Any]:
    from transformers import AutoConfig

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    return SearchSpace.from_config(config), config


def usable_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Measured sample rows, without failed and drift-flagged ones (counted)."""
    if frame.empty:
        raise LatpruneError("the profile has no rows; run 'latprune profile' first")
    samples = frame[frame.role == "sample"]
    failed = samples.status != "ok"
    drifted = (~failed) & samples.drift_flag.astype(bool)
    counts = {"sample_rows": int(len(samples)), "failed": int(failed.sum()), "drift_flagged": int(drifted.sum())}
    ok = samples[~failed & ~drifted]
    counts["used"] = int(len(ok))
    return ok, counts


def reference_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per workload: the parent shape at the profile's baseline (every usable
    reference row records it; the median guards against a mixed file). The baseline is the
    scale every paired sample is measured on, and the largest architecture is where tree
    models extrapolate worst."""
    refs = frame[(frame.role == "reference") & (frame.status == "ok") & ~frame.drift_flag.astype(bool)]
    if refs.empty:
        return refs
    rows = []
    for _, group in refs.groupby("workload"):
        row = group.iloc[[0]].copy()
        for metric in (*METRICS, "e2e_ms"):
            row[metric] = float(group[metric].median())
        rows.append(row)
    return pd.concat(rows)


def _split_folds(n: int, folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), folds)


class Predictor:
    """Latency surrogates for every metric of one (device, parent model)."""

    def __init__(self, kind: str, space: SearchSpace, dtype: str, surrogates: dict, meta: dict):
        self.kind, self.space, self.dtype, self.surrogates, self.meta = kind, space, dtype, surrogates, meta

    # ---- fit ---------------------------------------------------------------
    @classmethod
    def fit(cls, frame: pd.DataFrame, kind: str = "xgboost", seed: int = 0, folds: int = 5,
            holdout: float = 0.2) -> Predictor:
        """Fit on a profile's usable sample rows plus the parent's median reference timing;
        accuracy from k-fold CV and a held-out split."""
        if kind not in SURROGATES:
            raise LatpruneError(f"unknown predictor model '{kind}'; choose from {', '.join(SURROGATES)}")
        rows, counts = usable_rows(frame)
        refs = reference_rows(frame)
        counts["reference_median_rows"] = int(len(refs))
        rows = pd.concat([rows, refs], ignore_index=True)
        for column in ("device", "model_hash", "dtype"):
            if rows[column].nunique() > 1:
                raise LatpruneError(f"the profile mixes several {column}s ({sorted(rows[column].unique())}); "
                                    "fit one device and model at a time")
        if len(rows) < MIN_ROWS:
            raise LatpruneError(f"only {len(rows)} usable rows ({counts}); a predictor needs at least {MIN_ROWS}: "
                                "profile more samples")
        first = rows.iloc[0]
        space, _ = _parent_space(first.parent_config_json)
        f = features(space, rows, first["dtype"])
        rng = np.random.default_rng(seed)
        n_hold = max(3, int(round(holdout * len(rows))))
        perm = rng.permutation(len(rows))
        hold, train = perm[:n_hold], perm[n_hold:]
        surrogates, acc = {}, {}
        for metric in METRICS:
            y = rows[metric].to_numpy(float)
            oof = np.empty(len(train))
            for fold in _split_folds(len(train), folds, rng):
                rest = np.setdiff1d(np.arange(len(train)), fold)
                model = SURROGATES[kind](metric).fit(f.iloc[train[rest]], y[train[rest]])
                oof[fold] = model.predict_all(f.iloc[train[fold]])
            held_model = SURROGATES[kind](metric).fit(f.iloc[train], y[train])
            held_pred = held_model.predict_all(f.iloc[hold])
            acc[metric] = {f"{folds}-fold CV": accuracy(y[train], oof),
                           "held-out": accuracy(y[hold], held_pred)}
            final = SURROGATES[kind](metric).fit(f, y)
            under = y[train] / oof - 1  # > 0: the prediction was too low
            final.margin = float(max(0.0, np.quantile(under, 0.9)))
            surrogates[metric] = final
        meta = {
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
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return cls(kind, space, first["dtype"], surrogates, meta)

    def accuracy_table(self) -> str:
        return format_table(self.meta["accuracy"])

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

    def predict(self, archs: list[Architecture], workload: Workload | None = None) -> pd.DataFrame:
        workload = workload or Workload(**{k: v[0] for k, v in self.meta["workload_range"].items()})
        for a in archs:
            self.space.validate(a)
        return self.predict_columns(arch_columns(archs), workload)

    # ---- files -----------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """Write the directory atomically (temporary sibling, then rename)."""
        with atomic_dir(out) as tmp:
            states = {metric: model.save(tmp) for metric, model in self.surrogates.items()}
            (tmp / "metadata.json").write_text(json.dumps({**self.meta, "surrogates": states}, indent=2))
            (tmp / "accuracy.md").write_text(self.accuracy_table() + "\n")
        return Path(out)

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None, model_hash: str | None = None,
             allow_mismatch: bool = False) -> Predictor:
        """Load and validate; a predictor for another device or model is refused."""
        folder = Path(folder)
        meta_file = folder / "metadata.json"
        if not meta_file.is_file():
            raise LatpruneError(f"'{folder}' is not a predictor directory (no metadata.json); run 'latprune fit'")
        meta = json.loads(meta_file.read_text())
        if meta.get("latprune_predictor_version") != PREDICTOR_VERSION or meta.get("feature_schema") != FEATURE_SCHEMA:
            raise LatpruneError(f"predictor '{folder}' was written by an incompatible latprune; refit it")
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
        space, _ = _parent_space(meta["parent_config_json"])
        surrogates = {m: SURROGATES[meta["kind"]].load(m, s, folder) for m, s in meta.pop("surrogates").items()}
        return cls(meta["kind"], space, meta["dtype"], surrogates, meta)


def fit_profile(profile: str | Path, out: str | Path | None = None, kind: str = "xgboost", seed: int = 0,
                ) -> tuple[Predictor, Path]:
    """Fit a predictor on a profile file and save it (default out/predictors/DEVICE[-KIND])."""
    from latprune.profiling.dataset import read_profile

    path = Path(profile)
    if not path.is_file():
        raise LatpruneError(f"profile '{profile}' does not exist; run 'latprune profile' first")
    predictor = Predictor.fit(read_profile(path), kind, seed)
    default = Path("out") / "predictors" / (predictor.meta["device"] + ("" if kind == "xgboost" else f"-{kind}"))
    return predictor, predictor.save(out or default)
