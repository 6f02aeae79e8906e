"""`search`: the best sub-network under a latency budget on a device, verified there, written out."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.compress.checkpoint import save_compressed
from latprune.compress.quality import perplexity
from latprune.compress.workflow import WINDOW, RankedModel, rank_model
from latprune.errors import LatpruneError
from latprune.files import atomic_dir
from latprune.models import load_config, model_identity
from latprune.predictors.predictor import Predictor
from latprune.profiling.devices import check_available, get_device
from latprune.profiling.export import export_onnx
from latprune.profiling.run import default_out
from latprune.profiling.timing import STEPS, stat_column
from latprune.text import calibration_windows, heldout_windows
from latprune.workload import METRICS, Workload

from .evaluate import Evaluator
from .pareto import pareto_front, spread
from .strategies import DEFAULT_OPTIMIZER, run_strategy
from .verify import ROUNDS, measure_all

SEARCH_WINDOWS = 8


@dataclass
class SearchOptions:
    latency_ms: float
    metric: str = "decode_ms"
    margin: float = 0.0  # the predicted upper bound must be <= budget x (1 - margin)
    evaluations: int = 60
    strategy: str = "nas"
    optimizer: str = DEFAULT_OPTIMIZER
    seed: int = 0
    finalists: int = 3
    pareto: int = 0

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise LatpruneError(f"--metric must be one of {', '.join(METRICS)}; got '{self.metric}'")
        if not self.latency_ms > 0:
            raise LatpruneError(f"--latency-ms must be positive; got {self.latency_ms}")
        if not 0 <= self.margin < 1:
            raise LatpruneError(f"--margin must be in [0, 1); got {self.margin}")

    @property
    def limit_ms(self) -> float:
        return self.latency_ms * (1 - self.margin)


def find_candidates(ranked: RankedModel, predictor: Predictor, windows: torch.Tensor, workload: Workload,
                    opts: SearchOptions, progress: bool = True) -> Evaluator:
    """Run the strategy; every evaluated architecture is in the returned evaluator's records.
    Raises when even the smallest sub-network is predicted over the budget."""
    ev = Evaluator(ranked, predictor, windows, workload, opts.metric, opts.limit_ms)
    floor = ev.upper_ms(ranked.space.smallest())
    if floor > opts.limit_ms:
        raise LatpruneError(f"--latency-ms {opts.latency_ms:g} is infeasible: the smallest sub-network's predicted "
                            f"{opts.metric} (upper bound) is {floor:.3f} ms; raise the budget or lower --margin")
    bar = tqdm(total=opts.evaluations, desc=f"search {opts.strategy}", unit="eval", disable=not progress)

    def report(e: Evaluator) -> None:
        bar.n = len(e.records)
        if e.records:
            best = min(e.records.values(), key=lambda r: r["perplexity"])
            bar.set_postfix_str(f"best ppl {best['perplexity']:.2f} at predicted {best[f'pred_{opts.metric}']:.2f} ms")
        bar.refresh()

    try:
        run_strategy(ev, opts.strategy, opts.evaluations, opts.seed, opts.optimizer, report)
        report(ev)
    finally:
        bar.close()
    return ev


def _load_predictor(path: str | Path | None, device: str, config, allow_mismatch: bool) -> Predictor:
    path = Path(path) if path else Path("out") / "predictors" / device
    if not (path / "metadata.json").is_file():
        raise LatpruneError(f"no predictor at '{path}'; run 'latprune profile --device {device}' and "
                            f"'latprune fit {default_out(device)}' first (or pass --predictor)")
    return Predictor.load(path, device=device, model_hash=model_identity(config)["config_hash"],
                          allow_mismatch=allow_mismatch)


def search(model: str | Path, device: str, opts: SearchOptions, out: str | Path, predictor: str | Path | None = None,
           text: str | Path | None = None, workload: Workload | None = None, devices_file: str | Path | None = None,
           allow_mismatch: bool = False, profile_record: str | Path | None = None, distill_steps: int = 0,
           progress: bool = True) -> dict[str, Any]:
    """Search, verify the finalists on `device`, and write `out` (model/, onnx/,
    candidates.parquet, summary.json). Raises (writing nothing) when no finalist meets the
    budget on the device."""
    dev = get_device(device, devices_file)
    check_available(dev)
    config = load_config(model)
    pred = _load_predictor(predictor, dev.name, config, allow_mismatch)
    workload = workload or Workload(**{k: v[0] for k, v in pred.meta["workload_range"].items()})
    pred.check_workload(workload, allow_mismatch)
    t_start = time.perf_counter()
    ranked = rank_model(model, text, progress=progress)
    space = ranked.space
    parent = space.largest()
    parent_pred = pred.predict([parent], workload).iloc[0]
    if parent_pred[f"{opts.metric}_upper"] <= opts.limit_ms:
        return {"parent_is_answer": True, "metric": opts.metric, "budget_ms": opts.latency_ms,
                "parent_predicted_ms": float(parent_pred[opts.metric]),
                "message": f"the parent's predicted {opts.metric} ({parent_pred[opts.metric]:.2f} ms, upper bound "
                           f"{parent_pred[f'{opts.metric}_upper']:.2f} ms) already meets {opts.latency_ms:g} ms: "
                           "the parent is the answer; nothing to compress"}
    calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    ev = find_candidates(ranked, pred, calib, workload, opts, progress)
    if not ev.records:
        raise LatpruneError(f"strategy '{opts.strategy}' found no architecture predicted to meet {opts.metric} <= "
                            f"{opts.limit_ms:.3f} ms (e.g. width scaling alone cannot go below the full depth's "
                            "latency); try --strategy nas or a larger budget")
    cands = ev.frame().sort_values("perplexity")
    finalists = [space.validate(Architecture.from_json(r)) for r in cands.head(opts.finalists).arch_json]
    t_search = time.perf_counter() - t_start

    record = profile_record or default_out(dev.name)
    vbar = tqdm(total=len(finalists) * ROUNDS, desc=f"verify on {dev.name}", unit="timing",
                disable=not progress)
    try:
        measured, parent_row = measure_all(config, dev, workload, finalists, record, lambda _r: vbar.update(1),
                                           baseline=pred.meta.get("baseline_ms", {}).get(workload.key))
    finally:
        vbar.close()
    for col in METRICS:
        cands[f"measured_{col}"] = cands.arch_id.map(lambda i, c=col: measured.get(i, {}).get(c))
    cands["finalist"] = cands.arch_id.isin([a.id for a in finalists])
    passing = [a for a in finalists if measured[a.id][opts.metric] <= opts.latency_ms]
    if not passing:
        figures = ", ".join(f"{a.describe()}: measured {measured[a.id][opts.metric]:.2f} ms" for a in finalists)
        raise LatpruneError(f"no finalist meets {opts.metric} <= {opts.latency_ms:g} ms on {dev.name} ({figures}); "
                            "rerun with a safety margin (e.g. --margin 0.05) or profile more samples and refit")
    winner = passing[0]
    raw = measured[winner.id].get(stat_column(opts.metric, "raw_ms"))
    if raw is not None and raw > opts.latency_ms:
        print(f"latprune: warning: the winner's raw {opts.metric} now is {raw:.2f} ms, over the {opts.latency_ms:g} ms "
              f"budget: the machine runs {parent_row['drift'][opts.metric] - 1:+.0%} off its speed when profiled; "
              "the budget is checked on the drift-corrected figure (ratio to the parent x the parent's profiled "
              "latency)", file=sys.stderr)
    child = ranked.extract(winner)
    held = heldout_windows(ranked.tokenizer, ranked.text, WINDOW, 40)
    summary = _summary(ranked, parent_pred, workload, opts, winner, cands, measured[winner.id], parent_row,
                       perplexity(ranked.model, held), perplexity(child, held), held, dev.name, t_search)
    if distill_steps:
        from latprune.compress.distill import DistillConfig, distill

        cfg = DistillConfig(steps=distill_steps, seed=opts.seed)
        train = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, max_windows=100_000)
        distill(child, ranked.model, train, cfg, Path(str(out) + ".distill-checkpoint"), progress)
        summary["winner"]["heldout_perplexity_before_distill"] = summary["winner"]["heldout_perplexity"]
        summary["winner"]["heldout_perplexity"] = perplexity(child, held)
        summary["distill"] = {"steps": distill_steps, "tokens": cfg.tokens(WINDOW)}

    with atomic_dir(out) as tmp:
        save_compressed(child, winner, tmp / "model", ranked.model.config, ranked.tokenizer, {"search": summary})
        export_onnx(child, tmp / "onnx")
        cands.to_parquet(tmp / "candidates.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    shutil.rmtree(str(out) + ".distill-checkpoint", ignore_errors=True)
    return summary


def _summary(ranked, parent_pred: pd.Series, workload, opts, winner, cands: pd.DataFrame, measured: dict,
             parent_row: dict,
             ppl_parent: float, ppl_child: float, held, device: str, search_s: float) -> dict[str, Any]:
    space, m = ranked.space, opts.metric
    win = cands.set_index("arch_id").loc[winner.id]
    summary = {
        "latprune_summary_version": 2,
        "measured_means": "ratio to the parent, timed side by side, x the parent's latency when profiled "
                          "(drift-corrected); raw figures are under measured_raw",
        "device": device, "metric": m, "budget_ms": opts.latency_ms, "margin": opts.margin,
        "workload": workload.to_dict(), "strategy": opts.strategy,
        "optimizer": opts.optimizer if opts.strategy == "nas" else None, "seed": opts.seed,
        "evaluations": len(cands),
        "device_measurements": len(measured_ids := cands[cands.finalist].arch_id) * ROUNDS,
        "verification_rounds": ROUNDS,
        "search_seconds": round(search_s, 1),
        "eval": {"heldout_windows": int(held.shape[0]), "window": WINDOW, "search_windows": SEARCH_WINDOWS},
        "parent": {"architecture": space.largest().to_dict(), "parameters": space.num_params(space.largest()),
                   "heldout_perplexity": ppl_parent,
                   "predicted": {k: float(parent_pred[k]) for k in METRICS},
                   "measured": {k: float(v) for k, v in parent_row["measured"].items()},
                   "measured_raw": {k: float(v) for k, v in parent_row["raw"].items()},
                   "drift": {k: float(v) for k, v in parent_row["drift"].items()}},
        "winner": {"architecture": winner.to_dict(), "architecture_id": winner.id, "describe": winner.describe(),
                   "parameters": space.num_params(winner), "heldout_perplexity": ppl_child,
                   "calibration_perplexity": float(win.perplexity),
                   "predicted": {k: float(win[f"pred_{k}"]) for k in METRICS},
                   "predicted_upper": {k: float(win[f"pred_{k}_upper"]) for k in STEPS},
                   "measured": {k: float(measured[k]) for k in METRICS},
                   "measured_raw": {k: float(measured[stat_column(k, "raw_ms")]) for k in STEPS}},
        "finalists": list(measured_ids),
    }
    pp, pm = summary["parent"], summary["winner"]
    summary["speedup"] = {k: {"predicted": pp["predicted"][k] / pm["predicted"][k],
                              "measured": pp["measured"][k] / pm["measured"][k]} for k in METRICS}
    if opts.pareto:
        summary["pareto"] = spread(pareto_front(cands, f"pred_{m}"), f"pred_{m}", opts.pareto)[
            ["arch_id", "describe", "perplexity", f"pred_{m}"]].to_dict("records")
    return summary
