"""`latprune run`: profile -> fit -> search -> verify -> export -> report in one go,
reusing the profile and predictor when they match."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from latprune.errors import LatpruneError
from latprune.files import PREDICTOR_MARKER, SEARCH_MARKER, check_out
from latprune.models import load_config, model_identity
from latprune.predictors.predictor import default_predictor_dir, fit_profile
from latprune.profiling.dataset import baseline, default_profile, read_profile, usable_rows
from latprune.profiling.devices import check_available, get_device
from latprune.profiling.run import profile
from latprune.profiling.sampling import check_samples

from .options import RUN_SAMPLES, SearchOptions
from .report import build_report
from .workflow import search

DEFAULT_FRACTION = 0.6


def parent_measured(profile_path: Path, model_hash: str, metric: str, generate: int | None = None) -> float:
    """The parent's measured `metric` at the profile's scale (its baseline: the first
    reference timing, which paired timings of every sample are relative to)."""
    rows = read_profile(profile_path)
    scale = baseline(rows, model_hash=model_hash)
    if scale is None:
        raise LatpruneError(f"profile {profile_path} has no reference timing of this model")
    if metric == "e2e_ms":
        generate = generate or int(rows[rows.role == "reference"].generate.iloc[0])
        return scale["prefill_ms"] + generate * scale["decode_ms"]
    return scale[metric]


def _predictor_is_current(folder: Path, profile_path: Path, model_hash: str, device: str) -> bool:
    if not (folder / PREDICTOR_MARKER).is_file():
        return False
    try:
        meta = json.loads((folder / PREDICTOR_MARKER).read_text())
        rows, _ = usable_rows(read_profile(profile_path))
        return (meta["device"] == device and meta["model"]["config_hash"] == model_hash
                and meta["rows"]["used"] == len(rows))
    except (ValueError, KeyError, TypeError):
        return False  # damaged: refit


def run_pipeline(model: str = "default", device: str = "cpu", opts: SearchOptions | None = None, *,
                 samples: int = RUN_SAMPLES, supernet_steps: int = 0, out: str | Path = "out/run", log=print,
                 ) -> dict[str, Any]:
    """The whole pipeline; returns the search summary plus stage timings. `opts.latency_ms`
    None means DEFAULT_FRACTION of the parent's measured latency; `supernet_steps` > 0
    fine-tunes the super-network first (cached) and searches its slices."""
    opts = opts or SearchOptions(latency_ms=None)
    check_samples(samples)
    if supernet_steps < 0:
        raise LatpruneError(f"--supernet-steps must be at least 0; got {supernet_steps}")
    profile_path, predictor_dir = default_profile(device), default_predictor_dir(device)
    check_out(out, SEARCH_MARKER, [model, profile_path, predictor_dir])
    check_out(predictor_dir, PREDICTOR_MARKER, [model, profile_path])
    check_available(get_device(device))
    clock = _Stages()
    model_hash = model_identity(load_config(model))["config_hash"]
    aim = {"aim": DEFAULT_FRACTION} if opts.latency_ms is None else {"aim_ms": opts.latency_ms}
    log(f"[1/4] profile: {samples} sampled architectures on '{device}', half of them aimed at the budget "
        f"(resumes {profile_path})")
    profile(model, device, samples, out=profile_path, seed=opts.seed, aim_metric=opts.metric, **aim)
    clock.lap("profile_s")
    _fit_unless_current(predictor_dir, profile_path, model_hash, device, log)
    clock.lap("fit_s")
    opts = _with_budget(opts, profile_path, model_hash, log)
    folder = None
    if supernet_steps:
        from latprune.compress.workflow import supernet

        log(f"[3/4] super-network: {supernet_steps} sandwich steps of KD from the parent (cached)")
        folder = supernet(model, steps=supernet_steps, seed=opts.seed)["folder"]
        clock.lap("supernet_s")
    log(f"[3/4] search: {opts.metric} <= {opts.latency_ms:g} ms, {opts.evaluations} evaluations, verification on "
        f"'{device}', then recovery")
    summary = search(model, device, opts, out, predictor=predictor_dir, supernet=folder)
    clock.lap("search_s")
    if summary.get("parent_is_answer"):
        log(summary["message"])
        return summary
    log("[4/4] report")
    md, html = build_report(out, predictor_dir)
    clock.lap("report_s")
    summary.update(stages=clock.stages, wall_s=clock.total(), report={"markdown": str(md), "html": str(html)})
    (Path(out) / "run.json").write_text(json.dumps({k: summary[k] for k in ("stages", "wall_s", "report")}, indent=2))
    return summary


class _Stages:
    """Wall-clock seconds per pipeline stage."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self.last, 1)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def _fit_unless_current(predictor_dir: Path, profile_path: Path, model_hash: str, device: str, log) -> None:
    if _predictor_is_current(predictor_dir, profile_path, model_hash, device):
        log(f"[2/4] fit: reusing {predictor_dir} (fitted on the same rows)")
        return
    log(f"[2/4] fit: XGBoost predictors on {profile_path}")
    predictor, _ = fit_profile(profile_path, predictor_dir)
    log(predictor.accuracy_table())


def _with_budget(opts: SearchOptions, profile_path: Path, model_hash: str, log) -> SearchOptions:
    """`opts` with a latency budget: DEFAULT_FRACTION of the parent's measured latency when none was given."""
    if opts.latency_ms is not None:
        return opts
    parent_ms = parent_measured(profile_path, model_hash, opts.metric)
    opts = dataclasses.replace(opts, latency_ms=round(DEFAULT_FRACTION * parent_ms, 2))
    log(f"no --latency-ms given: using {DEFAULT_FRACTION:.0%} of the parent's measured {opts.metric} on this "
        f"machine ({parent_ms:.2f} ms) = {opts.latency_ms:g} ms")
    return opts
