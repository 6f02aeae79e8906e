"""`search`: the best sub-network under a latency budget on a device, verified there, written out.

Phases, each a function: `prepare` (device, predictor, ranked parent) -> `find_candidates`
(the strategy against the predictor) -> `verify_finalists` (paired timings on the device) ->
`choose_winner` (best calibration perplexity that meets the budget on the device) ->
`recover` (distillation of the winner from the parent, time-budgeted by default) ->
`SearchResult.write` (model/ in bf16, onnx/, candidates.parquet, summary.json).
"""

from __future__ import annotations

import functools
import json
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.compress.block_damage import PROBE_WINDOWS, BlockDamage, block_damage
from latprune.compress.checkpoint import cast_copy, save_compressed
from latprune.compress.quality import perplexity, quality_report
from latprune.compress.ranked import WINDOW, RankedModel, rank_model
from latprune.errors import LatpruneError
from latprune.files import CHECKPOINT_MARKER, SEARCH_MARKER, atomic_dir, check_out, remove_output
from latprune.models import load_config, model_identity
from latprune.predictors.predictor import Predictor, load_for
from latprune.profiling.dataset import STEPS, default_profile, read_profile, stat_column
from latprune.profiling.devices import Device, check_available, get_device
from latprune.profiling.export import export_onnx
from latprune.profiling.fingerprint import hardware_difference
from latprune.profiling.run import check_same_host
from latprune.profiling.verify import ROUNDS, DeviceSession, Verification, measure_finalists
from latprune.space import SearchSpace
from latprune.text import calibration_windows, heldout_windows, second_windows
from latprune.workload import METRICS, Workload

from .evaluate import SEARCH_WINDOWS, Evaluator
from .options import SearchOptions
from .pareto import pareto_front, spread
from .per_layer import check_per_layer, run_per_layer
from .recovery import rank_by_recovery, recover, select_by_recovery
from .refine import Refinement, by_rank, refine_on_device
from .strategies import resolve_auto, run_strategy

HELDOUT_WINDOWS = 40
SUMMARY_VERSION = 2


@dataclass
class Prepared:
    """What every phase needs: the device, the predictor and the ranked parent."""

    device: Device
    predictor: Predictor
    workload: Workload
    ranked: RankedModel
    opts: SearchOptions  # its strategy resolved (never "auto")
    started: float = field(default_factory=time.perf_counter)
    requested_strategy: str = ""  # what the user asked for, when it differs (e.g. "auto")


def prepare(model: str | Path, device: str, opts: SearchOptions, *, predictor: str | Path | None = None,
            text: str | Path | None = None, workload: Workload | None = None,
            devices_file: str | Path | None = None, allow_mismatch: bool = False, supernet: str | Path | None = None,
            progress: bool = True) -> Prepared:
    """Check the device and predictor (cheap) before loading and ranking the parent (and
    attaching the fine-tuned super-network sub-networks are cut from, when given)."""
    if opts.latency_ms is None:
        raise LatpruneError("search needs a latency budget (--latency-ms)")
    dev = get_device(device, devices_file)
    check_available(dev)
    config = load_config(model)
    if opts.space == "per-layer":
        check_per_layer(SearchSpace.from_config(config))
    pred = load_for(predictor, dev.name, model_identity(config)["config_hash"], allow_mismatch)
    workload = workload or pred.default_workload()
    pred.check_workload(workload, allow_mismatch)
    check_predictor_host(pred, allow_mismatch)
    started = time.perf_counter()
    ranked = rank_model(model, text, progress=progress)
    if supernet is not None:
        from latprune.compress.supernet import attach_supernet

        ranked = attach_supernet(ranked, supernet)
    return _resolved(Prepared(dev, pred, workload, ranked, opts, started))


def check_predictor_host(pred: Predictor, allow_mismatch: bool = False) -> None:
    """Refuse, in one line, a predictor fitted on another machine's timings (CPU model, cores,
    GPU): the device timings of refinement and verification here would be scaled by that
    machine's parent. With `allow_mismatch`, a warning."""
    if not (diff := hardware_difference(pred.meta.get("host", {}))):
        return
    msg = (f"the predictor for '{pred.meta['device']}' was fitted on timings taken {diff}: profile and fit on this "
           "host")
    if not allow_mismatch:
        raise LatpruneError(msg + " (or pass --allow-mismatch)")
    warnings.warn(msg, stacklevel=3)


def _resolved(prep: Prepared) -> Prepared:
    """`prep` with strategy `auto` replaced by the one it stands for under the budget
    (`strategies.resolve_auto`, on the predicted upper bound, as the safe round uses)."""
    opts = prep.opts
    if opts.strategy != "auto":
        return prep
    ev = Evaluator(prep.ranked, prep.predictor, torch.empty(0, dtype=torch.long), prep.workload, opts.metric,
                   opts.limit_ms)
    chosen = replace(opts, strategy=resolve_auto(ev))
    return replace(prep, opts=chosen, requested_strategy="auto")


def parent_answer(prep: Prepared) -> dict[str, Any] | None:
    """The summary saying the parent already meets the budget (predicted upper bound), or None."""
    m, budget = prep.opts.metric, prep.opts.latency_ms
    pred = prep.predictor.predict([prep.ranked.space.largest()], prep.workload).iloc[0]
    if pred[f"{m}_upper"] > prep.opts.limit_ms:
        return None
    return {"parent_is_answer": True, "metric": m, "budget_ms": budget, "parent_predicted_ms": float(pred[m]),
            "message": f"the parent's predicted {m} ({pred[m]:.2f} ms, upper bound {pred[f'{m}_upper']:.2f} ms) "
                       f"already meets {budget:g} ms: the parent is the answer; nothing to compress"}


def find_candidates(ranked: RankedModel, predictor: Predictor, windows: torch.Tensor, workload: Workload,
                    opts: SearchOptions, progress: bool = True, *, bound: str = "upper",
                    perplexities: dict[str, float] | None = None,
                    band: tuple[float, float] | None = None, seeds: list[Architecture] | None = None) -> Evaluator:
    """Run the strategy (or, given `seeds`, the per-layer search started from them) with the
    limit on the predicted upper bound (`bound` "upper"), or on the predicted median
    ("median"; "band": also at least `band[0]` x the limit, and at most `band[1]` x it);
    every evaluated architecture is in the returned evaluator's records. `perplexities` may
    be shared with an earlier round. Raises when even the smallest sub-network is predicted
    over the budget."""
    low, high = band or (0.0, 1.0)
    ev = Evaluator(ranked, predictor, windows, workload, opts.metric, opts.limit_ms * high, bound=bound,
                   perplexities={} if perplexities is None else perplexities, floor_ms=opts.limit_ms * low)
    smallest_ms = ev.upper_ms(ranked.space.smallest())
    if smallest_ms > opts.limit_ms:
        raise LatpruneError(f"--latency-ms {opts.latency_ms:g} is infeasible: the smallest sub-network's predicted "
                            f"{opts.metric} ({bound}) is {smallest_ms:.3f} ms; raise the budget or lower --margin")
    where = {"upper": "", "median": " near the budget", "band": " in the budget band"}[bound]
    desc = f"search {'per-layer' if seeds else opts.strategy}{where}"
    bar = tqdm(total=opts.evaluations, desc=desc, unit="eval", disable=not progress)

    def report(e: Evaluator) -> None:
        bar.n = len(e.records)
        if e.records:
            best = min(e.records.values(), key=lambda r: r["perplexity"])
            bar.set_postfix_str(f"best ppl {best['perplexity']:.2f} at predicted {best[f'pred_{opts.metric}']:.2f} ms")
        bar.refresh()

    try:
        if seeds:
            run_per_layer(ev, seeds, opts.evaluations, opts.seed, opts.optimizer, report,
                          damage=_block_damage(ranked, windows, progress))
        else:
            run_strategy(ev, opts.strategy, opts.evaluations, opts.seed, opts.optimizer, report)
        report(ev)
    finally:
        bar.close()
    return ev


def _block_damage(ranked: RankedModel, windows: torch.Tensor, progress: bool) -> BlockDamage:
    """The block damage table of the model sub-networks are cut from, on the first calibration
    windows (cached for the parent; a fine-tuned super-network's is computed each time)."""
    weights = ranked.weights if ranked.weights is not None else ranked.model
    return block_damage(weights, ranked.ranking, windows[:PROBE_WINDOWS], progress, cache=ranked.weights is None)


def candidates(prep: Prepared, progress: bool = True) -> pd.DataFrame:
    """Every evaluated architecture, best calibration perplexity first: a safe round (the
    predicted upper bound meets the budget) and, when refinement may measure candidates on
    the device, a round near the budget (the predicted median meets it; the device decides).
    Column `bound` tells which. With `--space per-layer`, the last round (the one the
    finalists come from) is followed by a per-layer search seeded by its two best
    candidates (column `strategy` "per-layer")."""
    ranked, opts = prep.ranked, prep.opts
    calib = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    shared: dict[str, float] = {}
    frames = []
    bounds = ("upper", "median") if opts.device_measurements else ("upper",)
    for bound in bounds:
        found = find_candidates(ranked, prep.predictor, calib, prep.workload, opts, progress, bound=bound,
                                perplexities=shared).frame()
        if bound == "upper" and found.empty:
            raise LatpruneError(f"strategy '{opts.strategy}' found no architecture predicted to meet {opts.metric} "
                                f"<= {opts.limit_ms:.3f} ms (e.g. width scaling alone cannot go below the full "
                                "depth's latency); raise the budget or try another --strategy")
        frames.append(found)
        if opts.space == "per-layer" and bound == bounds[-1] and not found.empty:
            seeds = [Architecture.from_json(j) for j in found.sort_values("perplexity").arch_json.head(2)]
            frames.append(find_candidates(ranked, prep.predictor, calib, prep.workload, opts, progress, bound=bound,
                                          perplexities=shared, seeds=seeds).frame())
    cands = pd.concat(frames, ignore_index=True).drop_duplicates("arch_id", keep="first")
    return cands.sort_values("perplexity", kind="stable")


def pick_finalists(prep: Prepared, cands: pd.DataFrame, refinement: Refinement) -> tuple[list[Architecture], int]:
    """Up to `opts.finalists` refined candidates measured under the budget (landed ones
    first, then those fewer others of them `cover`, then `by_rank`: at 0.5x a short-distilled
    L=11 had gone before L=12 at full width, measured at 91% and 94% of the budget), then the
    fallbacks: the next such refined candidate, and the best
    safe candidate (`opts.finalists` of them when nothing was refined under the budget).
    Returns the finalists and how many of them come first (the preferred ones)."""
    opts, limit = prep.opts, prep.opts.limit_ms
    landed = set(refinement.landed(limit))
    near = cands[cands.arch_id.isin(refinement.under(limit))]
    under = [Architecture.from_json(j) for j in near.arch_json]
    covered = {a.id: sum(b != a and b.covers(a) for b in under) for a in under}
    near = by_rank(near).assign(_later=~near.arch_id.isin(landed), _covered=near.arch_id.map(covered))
    near = near.sort_values(["_later", "_covered"], kind="stable")
    near = near.head(opts.finalists + 1)
    safe = cands[(cands.bound == "upper") & ~cands.arch_id.isin(near.arch_id)].head(1 if len(near) else opts.finalists)
    validate = prep.ranked.space.validate
    chosen = [validate(Architecture.from_json(j)) for j in pd.concat([near, safe]).arch_json]
    return chosen, min(len(near), opts.finalists) or len(chosen)


def verify_finalists(prep: Prepared, cands: pd.DataFrame, session: DeviceSession, refinement: Refinement,
                     progress: bool = True) -> tuple[Verification, int]:
    """Time the preferred finalists (`pick_finalists`) on the device, paired with the parent,
    then the fallbacks one at a time while none timed meets the budget (the device can put a
    candidate refinement measured under the budget over it: a rerun of one model differs by a
    few percent); marks the timed ones and their measured latencies in `cands`. Returns the
    verification and the number of preferred finalists."""
    finalists, preferred = pick_finalists(prep, cands, refinement)
    verified = _verify(prep, session, finalists[:preferred], progress)
    for fallback in finalists[preferred:]:
        if any(_meets_budget(prep, v) for v in verified.measured.values()):
            break
        more = _verify(prep, session, [fallback], progress)
        verified = Verification(verified.finalists + more.finalists, {**verified.measured, **more.measured},
                                verified.parent)
    for col in METRICS:
        cands[f"measured_{col}"] = cands.arch_id.map(lambda i, c=col: verified.measured.get(i, {}).get(c))
    cands["finalist"] = cands.arch_id.isin([a.id for a in verified.finalists])
    return verified, preferred


def _verify(prep: Prepared, session: DeviceSession, archs: list[Architecture], progress: bool) -> Verification:
    bar = tqdm(total=len(archs) * ROUNDS, desc=f"verify on {prep.device.name}", unit="timing", disable=not progress)
    try:
        return measure_finalists(session, archs, progress=lambda _r: bar.update(1))
    finally:
        bar.close()


def _meets_budget(prep: Prepared, measured: dict[str, Any]) -> bool:
    """Whether a verified (drift-corrected) latency meets the budget."""
    return measured[prep.opts.metric] <= prep.opts.latency_ms


def passing_finalists(prep: Prepared, verified: Verification, preferred: int) -> list[Architecture]:
    """The preferred finalists whose measured latency meets the budget (or, when none does,
    the fallback ones that do), best first: nothing over the budget on the device ever
    wins. Raises naming every finalist's figure when none does."""
    m, budget = prep.opts.metric, prep.opts.latency_ms
    meets = [a for a in verified.finalists if _meets_budget(prep, verified.measured[a.id])]
    first = [a for a in meets if a in verified.finalists[:preferred]]
    if not meets:
        figures = ", ".join(f"{a.describe()}: measured {verified.measured[a.id][m]:.2f} ms"
                            for a in verified.finalists)
        raise LatpruneError(f"no finalist meets {m} <= {budget:g} ms on {prep.device.name} ({figures}); "
                            "rerun with a safety margin (e.g. --margin 0.05) or profile more samples and refit")
    passing = first or meets
    raw = verified.measured[passing[0].id].get(stat_column(m, "raw_ms"))
    if raw is not None and raw > budget:
        print(f"latprune: warning: finalist {passing[0].describe()}'s raw {m} now is {raw:.2f} ms, over the "
              f"{budget:g} ms budget: the machine runs {verified.parent['drift'][m] - 1:+.0%} off its speed when "
              "profiled; the budget is checked on the drift-corrected figure (ratio to the parent x the parent's "
              "profiled latency)",
              file=sys.stderr)
    return passing


def search(model: str | Path, device: str, opts: SearchOptions, out: str | Path, *,
           predictor: str | Path | None = None, text: str | Path | None = None, workload: Workload | None = None,
           devices_file: str | Path | None = None, allow_mismatch: bool = False,
           profile_record: str | Path | None = None, supernet: str | Path | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Search, verify the finalists on `device`, and write `out` (model/, onnx/,
    candidates.parquet, summary.json). Raises (writing nothing) when no finalist meets the
    budget on the device. Returns the summary."""
    inputs = [model, predictor, text, profile_record, supernet]
    check_out(out, SEARCH_MARKER, inputs)
    name = get_device(device, devices_file).name
    record = Path(profile_record or default_profile(name))
    if not allow_mismatch:
        check_same_host(read_profile(record), f"profile '{record}'", device=name)
    prep = prepare(model, device, opts, predictor=predictor, text=text, workload=workload,
                   devices_file=devices_file, allow_mismatch=allow_mismatch, supernet=supernet, progress=progress)
    answer = parent_answer(prep)
    if answer is not None:
        return answer
    cands = candidates(prep, progress)
    search_s = time.perf_counter() - prep.started
    cands, tried = rank_by_recovery(prep, cands, progress)
    with DeviceSession(prep.ranked.model.config, prep.device, prep.workload, record,
                       baseline=prep.predictor.baseline(prep.workload), check_host=not allow_mismatch) as session:
        refinement, cands = refine_on_device(prep, cands, session, progress)
        verified, preferred = verify_finalists(prep, cands, session, refinement, progress)
    passing = passing_finalists(prep, verified, preferred)
    winner, selected, selection = select_by_recovery(prep, passing, progress, tried)
    del tried  # the other distilled candidates
    result = SearchResult(prep, cands, verified, winner, prep.ranked.extract(winner), search_s, refinement)
    result.measure_quality("before_recovery")
    if selected is not None:
        result.child, result.quality["selection"] = selected, selection
    checkpoint = Path(str(out) + ".distill-checkpoint")
    if (info := recover(prep, result.child, checkpoint, progress, spent_s=selection.get("seconds", 0.0))) is not None:
        result.quality["recovery"] = info
    if selected is not None or info is not None:
        result.measure_quality("after_recovery")
    result.write(out, inputs)
    remove_output(checkpoint, CHECKPOINT_MARKER)
    return result.summary()


@dataclass
class SearchResult:
    """A finished search: candidates, verification, the winner and its (extracted) model."""

    prep: Prepared
    cands: pd.DataFrame
    verified: Verification
    winner: Architecture
    child: nn.Module
    search_s: float
    refinement: Refinement
    quality: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(held-out windows of the text, windows of the second text), tokenized once."""
        tokenizer = self.prep.ranked.tokenizer
        return (heldout_windows(tokenizer, self.prep.ranked.text, WINDOW, HELDOUT_WINDOWS),
                second_windows(tokenizer, WINDOW, HELDOUT_WINDOWS))

    def measure_quality(self, stage: str) -> None:
        """Quality of the winner at `stage` (and of the parent, once): held-out perplexity,
        KL and top-1 agreement with the parent, second-text perplexity."""
        ranked = self.prep.ranked
        held, second = self.windows
        if "parent" not in self.quality:
            self.quality.update(parent=quality_report(ranked.model, ranked.model, held, second),
                                windows=int(held.shape[0]))
        self.quality[stage] = quality_report(self.child, ranked.model, held, second)
        self.quality["final"] = self.quality[stage]

    def write(self, out: str | Path, inputs: list) -> None:
        """Write model/ (in `opts.dtype`), onnx/, candidates.parquet and summary.json atomically
        into `out`; the perplexity change of the dtype cast is measured and recorded first."""
        ranked, dtype = self.prep.ranked, self.prep.opts.dtype
        saved = cast_copy(self.child, dtype)
        self.quality["saved"] = {"dtype": dtype,
                                 "heldout_perplexity": perplexity(cast_copy(saved, "fp32"), self.windows[0])}
        summary = self.summary()
        with atomic_dir(out, SEARCH_MARKER, inputs) as tmp:
            save_compressed(saved, self.winner, tmp / "model", ranked.model.config, ranked.tokenizer,
                            extra={"search": summary})
            export_onnx(self.child, tmp / "onnx", final=True)
            self.cands.to_parquet(tmp / "candidates.parquet", index=False)
            (tmp / SEARCH_MARKER).write_text(json.dumps(summary, indent=2, default=float))

    def summary(self) -> dict[str, Any]:
        """The summary.json dict: parent vs winner, predicted vs measured, quality."""
        opts, m = self.prep.opts, self.prep.opts.metric
        summary = {
            "latprune_summary_version": SUMMARY_VERSION,
            "measured_means": "ratio to the parent, timed side by side, x the parent's latency when profiled "
                              "(drift-corrected); raw figures are under measured_raw",
            "device": self.prep.device.name, "metric": m, "budget_ms": opts.latency_ms,
            "margin": opts.safety_margin, "workload": self.prep.workload.to_dict(), "strategy": opts.strategy,
            "strategy_requested": self.prep.requested_strategy or opts.strategy, "space": opts.space,
            "optimizer": opts.optimizer if opts.uses_optimizer else None, "seed": opts.seed,
            "evaluations": len(self.cands),
            "device_measurements": self.refinement.spent + len(self.verified.finalists) * ROUNDS,
            "refinement": self._refinement(),
            "verification_rounds": ROUNDS, "search_seconds": round(self.search_s, 1),
            "supernet": self.prep.ranked.weights is not None,
            "eval": {"heldout_windows": self.quality["windows"], "window": WINDOW, "search_windows": SEARCH_WINDOWS},
            "parent": self._parent(), "winner": self._winner(),
            "finalists": [a.id for a in self.verified.finalists],
            "finalists_measured": [{"arch_id": a.id, "describe": a.describe(),
                                    m: float(self.verified.measured[a.id][m])} for a in self.verified.finalists],
        }
        pp, pm = summary["parent"], summary["winner"]
        summary["budget_use"] = {"measured_over_budget": pm["measured"][m] / opts.latency_ms,
                                 "predicted_interval_ms": [pm["predicted"][m], pm["predicted_upper"].get(m)],
                                 "chosen_from": str(self.cands.set_index("arch_id").loc[self.winner.id, "bound"]),
                                 "device_measurements": summary["device_measurements"],
                                 "in_refinement": self.refinement.spent,
                                 "in_verification": len(self.verified.finalists) * ROUNDS}
        summary["speedup"] = {k: {"predicted": pp["predicted"][k] / pm["predicted"][k],
                                  "measured": pp["measured"][k] / pm["measured"][k]} for k in METRICS}
        for key in ("selection", "recovery"):
            if key in self.quality:
                summary[key] = self.quality[key]
        if opts.pareto:
            summary["pareto"] = spread(pareto_front(self.cands, f"pred_{m}"), f"pred_{m}", opts.pareto)[
                ["arch_id", "describe", "perplexity", f"pred_{m}"]].to_dict("records")
        return summary

    def _refinement(self) -> dict[str, Any]:
        return {"measured_ms": self.refinement.measured, "refits": self.refinement.refits,
                "reused_from_profile": self.refinement.reused, "band_rounds": self.refinement.band_rounds,
                "landed": self.refinement.landed(self.prep.opts.limit_ms),
                "allowance": self.prep.opts.device_measurements}

    def _parent(self) -> dict[str, Any]:
        space, parent = self.prep.ranked.space, self.verified.parent
        predicted = self.prep.predictor.predict([space.largest()], self.prep.workload).iloc[0]
        return {"architecture": space.largest().to_dict(), "parameters": space.num_params(space.largest()),
                "heldout_perplexity": self.quality["parent"]["heldout_perplexity"],
                "quality": self.quality["parent"],
                "predicted": {k: float(predicted[k]) for k in METRICS},
                "measured": {k: float(v) for k, v in parent["measured"].items()},
                "measured_raw": {k: float(v) for k, v in parent["raw"].items()},
                "drift": {k: float(v) for k, v in parent["drift"].items()}}

    def _winner(self) -> dict[str, Any]:
        w, space = self.winner, self.prep.ranked.space
        row, measured = self.cands.set_index("arch_id").loc[w.id], self.verified.measured[w.id]
        out = {"architecture": w.to_dict(), "architecture_id": w.id, "describe": w.describe(),
               "parameters": space.num_params(w), "heldout_perplexity": self.quality["final"]["heldout_perplexity"],
               "quality": self.quality["final"], "quality_before_recovery": self.quality["before_recovery"],
               "calibration_perplexity": float(row.perplexity),
               "predicted": {k: float(row[f"pred_{k}"]) for k in METRICS},
               "predicted_upper": {k: float(row[f"pred_{k}_upper"]) for k in METRICS},
               "measured": {k: float(measured[k]) for k in METRICS},
               "measured_raw": {k: float(measured[stat_column(k, "raw_ms")]) for k in STEPS}}
        if "saved" in self.quality:
            out["saved"] = self.quality["saved"]
        return out
