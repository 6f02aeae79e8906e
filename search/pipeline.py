"""`latprune run`: profile -> fit -> search -> verify -> export -> report in one go,
reusing the profile and predictor when they match."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from latprune.errors import LatpruneError
from latprune.models import load_config, model_identity
from latprune.predictors.predictor import fit_profile, usable_rows
from latprune.profiling.dataset import read_profile
from latprune.profiling.run import default_out, profile

from .report import build_report
from .workflow import SearchOptions, search

DEFAULT_FRACTION = 0.6


def parent_measured(profile_path: Path, model_hash: str, metric: str) -> float:
    """The parent's measured `metric` at the profile's scale (its first reference timing,
    which paired timings of every sample are relative to)."""
    rows = read_profile(profile_path)
    ref = rows[(rows.role == "reference") & (rows.status == "ok") & (rows.model_hash == model_hash)]
    if ref.empty:
        raise LatpruneError(f"profile {profile_path} has no reference timing of this model")
    return float(ref[metric].median())


def _predictor_is_current(folder: Path, profile_path: Path, model_hash: str, device: str) -> bool:
    if not (folder / "metadata.json").is_file():
        return False
    meta = json.loads((folder / "metadata.json").read_text())
    rows, _ = usable_rows(read_profile(profile_path))
    return (meta["device"] == device and meta["model"]["config_hash"] == model_hash
            and meta["rows"]["used"] == len(rows))


def run_pipeline(model: str = "default", device: str = "cpu", latency_ms: float | None = None,
                 metric: str = "decode_ms", samples: int = 40, evaluations: int = 60, out: str | Path = "out/run",
                 seed: int = 0, log=print) -> dict[str, Any]:
    """The whole pipeline; returns the search summary plus stage timings."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    config = load_config(model)
    model_hash = model_identity(config)["config_hash"]
    log(f"[1/4] profile: {samples} sampled architectures on '{device}' (resumes {default_out(device)})")
    profile_path = profile(model, device, samples, out=default_out(device), seed=seed)
    stages["profile_s"] = time.perf_counter() - t0

    predictor_dir = Path("out") / "predictors" / device
    if _predictor_is_current(predictor_dir, profile_path, model_hash, device):
        log(f"[2/4] fit: reusing {predictor_dir} (fitted on the same rows)")
    else:
        log(f"[2/4] fit: XGBoost predictors on {profile_path}")
        predictor, _ = fit_profile(profile_path, predictor_dir)
        log(predictor.accuracy_table())
    stages["fit_s"] = time.perf_counter() - t0 - sum(stages.values())

    if latency_ms is None:
        parent_ms = parent_measured(profile_path, model_hash, metric)
        latency_ms = round(DEFAULT_FRACTION * parent_ms, 2)
        log(f"no --latency-ms given: using {DEFAULT_FRACTION:.0%} of the parent's measured {metric} on this "
            f"machine ({parent_ms:.2f} ms) = {latency_ms:g} ms")
    log(f"[3/4] search: {metric} <= {latency_ms:g} ms, {evaluations} evaluations, then verification on '{device}'")
    opts = SearchOptions(latency_ms, metric, evaluations=evaluations, seed=seed)
    summary = search(model, device, opts, out, predictor_dir)
    stages["search_s"] = time.perf_counter() - t0 - sum(stages.values())
    if summary.get("parent_is_answer"):
        log(summary["message"])
        return summary
    log("[4/4] report")
    md, html = build_report(out, predictor_dir)
    stages["report_s"] = time.perf_counter() - t0 - sum(stages.values())
    summary["stages"] = {k: round(v, 1) for k, v in stages.items()}
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["report"] = {"markdown": str(md), "html": str(html)}
    (Path(out) / "run.json").write_text(json.dumps({k: summary[k] for k in ("stages", "wall_s", "report")}, indent=2))
    return summary
