"""Which way of compressing delivers the best model at a measured speedup, at equal time?

At each budget (a fraction of the parent's measured decode_ms), every strategy gets the same
wall-clock time (`--minutes`) from the start of its search to the end of its recovery on
this CPU: search against the predictor, refinement and verification on the device, and
distillation from the parent for whatever time is left. Strategies:

  nas-zero-shot   NAS; the winner chosen by zero-shot calibration perplexity, then distilled
  nas-recovery    NAS with the recovery-aware ranking: a shortlist near the budget (with
                  sub-networks of other depths) distilled for the same few steps before
                  any device timing, the best passing finalist after them then distilled
                  further (the default until this benchmark)
  layers          layer dropping by importance, then the same distillation (what the
                  default `--strategy auto` does wherever some depth meets the budget)
  per-layer       layer dropping, then a per-layer search (`--space per-layer`, 20
                  evaluations) seeded by it; the best of each space gets the same few
                  steps, the better one goes on
  uniform         every width and the depth scaled by one factor, then the same distillation
  supernet        the super-network fine-tuned first (`latprune supernet`, sandwich rule, KD
                  from the parent; its training time is charged to every row that uses it),
                  then nas-recovery on its slices

Reference rows (`--references`, on by default): the parent quantized by ONNX Runtime, int8
dynamic and int4 weight-only, timed paired with its fp32 graph and scored the same way
(`_quantized.py`).

With `--steps N` every row gets the same recovery instead of the same time: the same short
distillation of its candidates (6 steps each), then exactly N steps for its winner, however
long its search took. That compares what each search delivers after the default pipeline's
recovery, free of this VM's speed drift between rows and sessions.

Per row: the measured decode speedup (paired with the parent), held-out and second-text
perplexity, KL divergence from and top-1 agreement with the parent (40 windows each), wall
and CPU minutes. Needs a profile and predictor for `cpu` (e.g. from `latprune run`); each
row refines on its own copy of that profile, so no row reuses another's device timings.

    python benchmarks/recovery.py --profile benchmarks/data/cpu-160.parquet \
        --predictor out/predictors/cpu-160 --minutes 6
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from latprune.architecture import Architecture
from latprune.compress.quality import quality_report
from latprune.compress.ranked import WINDOW
from latprune.errors import LatpruneError
from latprune.models import load_config, model_identity
from latprune.profiling.verify import DeviceSession
from latprune.search.pipeline import parent_measured
from latprune.search.recovery import rank_by_recovery, recover, select_by_recovery
from latprune.search.refine import refine_on_device
from latprune.search.workflow import SearchOptions, candidates, passing_finalists, prepare, verify_finalists
from latprune.text import heldout_windows, second_windows

STRATEGIES = {  # name -> its SearchOptions
    "nas-zero-shot": {"strategy": "nas", "finalist_steps": 0}, "nas-recovery": {"strategy": "nas", "finalist_steps": 6},
    "layers": {"strategy": "layers", "finalist_steps": 6}, "uniform": {"strategy": "uniform", "finalist_steps": 6},
    "supernet": {"strategy": "nas", "finalist_steps": 6},
    "per-layer": {"strategy": "layers", "finalist_steps": 6, "space": "per-layer", "evaluations": 20},
}
WINDOWS = 40


def run_row(prep, record: Path, minutes: float) -> dict:
    """Search, refine, verify, choose and recover within `minutes` of wall time (or for
    `prep.opts.distill_steps` steps when set); the winner's figures."""
    t0, c0 = time.perf_counter(), time.process_time()
    cands, tried = rank_by_recovery(prep, candidates(prep, progress=False), progress=False)
    with DeviceSession(prep.ranked.model.config, prep.device, prep.workload, record,
                       baseline=prep.predictor.baseline(prep.workload)) as session:
        refinement, cands = refine_on_device(prep, cands, session, progress=False)
        verified, preferred = verify_finalists(prep, cands, session, refinement, progress=False)
    passing = passing_finalists(prep, verified, preferred)
    winner, child, selection = select_by_recovery(prep, passing, progress=False, tried=tried)
    child = child if child is not None else prep.ranked.extract(winner)
    left = minutes - (time.perf_counter() - t0) / 60
    info = recover(dataclasses.replace(prep, opts=dataclasses.replace(prep.opts, recover_minutes=max(left, 0.0))),
                   child, None, progress=False) if left > 0 or prep.opts.distill_steps else None
    m = prep.opts.metric
    return {"winner": winner.describe(), "parameters": prep.ranked.space.num_params(winner),
            "measured_ms": verified.measured[winner.id][m], "parent_ms": verified.parent["measured"][m],
            "selection_steps": selection.get("steps_each", 0), "recovery_steps": info["steps"] if info else 0,
            "selection": _selection(cands, tried, passing, winner),
            "device_timings": refinement.spent + 3 * len(verified.finalists),
            "wall_min": (time.perf_counter() - t0) / 60, "cpu_min": (time.process_time() - c0) / 60,
            "child": child}


def _selection(cands, tried, passing: list, winner) -> dict:
    """What decided the winner: each short-distilled candidate's calibration perplexity after
    the short distillation (named with the strategy that proposed it), which finalists passed
    on the device, and the one chosen."""
    names = {i: f"{i} {Architecture.from_json(j).describe()} ({s})"
             for i, j, s in zip(cands.arch_id, cands.arch_json, cands.strategy)}
    return {"short_distilled": {names.get(i, i): ppl for i, (ppl, _) in tried.models.items()},
            "passing": [names.get(a.id, a.id) for a in passing], "chosen": names.get(winner.id, winner.id)}


def supernet_cost(work: Path, steps: int) -> tuple[str, dict]:
    """The super-network of the default parent after `steps` sandwich steps (trained once, in
    WORK/supernet) and what its training cost, charged to every row that searches it."""
    from latprune.compress.workflow import supernet

    cost_file = work / "supernet-cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    t0, c0 = time.perf_counter(), time.process_time()
    info = supernet("default", work / "supernet", steps=steps, progress=False)
    if not info["reused"] or cost.get("steps") != steps:
        cost = {"steps": steps, "wall_min": (time.perf_counter() - t0) / 60, "cpu_min": (time.process_time() - c0) / 60,
                "full_slice_heldout_perplexity": info["quality"]["full_slice_heldout_perplexity"]}
        cost_file.write_text(json.dumps(cost, indent=1))
    return info["folder"], cost


def strategy_row(name: str, fraction: float, parent_ms: float, args, work: Path) -> tuple[object, dict]:
    """Prepare one strategy at one budget and run its row; (prep, row with the child model)."""
    opts = SearchOptions(round(fraction * parent_ms, 2), distill_steps=args.steps, **STRATEGIES[name])
    folder, cost = supernet_cost(work, args.supernet_steps) if name == "supernet" else (None, None)
    prep = prepare("default", "cpu", opts, predictor=args.predictor, supernet=folder, progress=False)
    record = work / f"{fraction}-{name}.parquet"  # each row refines from the same profile
    shutil.copyfile(args.profile, record)
    try:
        row = run_row(prep, record, args.minutes - (cost["wall_min"] if cost else 0.0))
    except LatpruneError as exc:
        row = {"failed": str(exc)}
    if cost and "failed" not in row:
        row.update(wall_min=row["wall_min"] + cost["wall_min"], cpu_min=row["cpu_min"] + cost["cpu_min"],
                   supernet=cost)
    return prep, {"fraction": fraction, "budget_ms": opts.latency_ms, "strategy": name, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="profiles/cpu.parquet")
    ap.add_argument("--predictor", default="out/predictors/cpu")
    ap.add_argument("--fractions", default="0.5,0.7,0.85")
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time per row: search + recovery")
    ap.add_argument("--steps", type=int, default=0,
                    help="> 0: every winner gets exactly this many recovery steps instead of --minutes")
    ap.add_argument("--name", default="recovery", help="results file: benchmarks/results/NAME.md and NAME.png")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--supernet-steps", type=int, default=20, help="sandwich steps of the supernet row")
    ap.add_argument("--no-references", action="store_true", help="skip the quantized reference rows")
    ap.add_argument("--work", default="out/bench_recovery")
    ap.add_argument("--report-only", action="store_true", help="write the results from WORK/rows.json")
    args = ap.parse_args()
    _common.require_files(ap, args.profile)
    if args.steps < 0:
        ap.error(f"--steps must be >= 0; got {args.steps}")
    parent_ms = parent_measured(Path(args.profile), model_identity(load_config("default"))["config_hash"], "decode_ms")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    saved_file = work / "rows.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {"rows": [], "references": []}
    if not args.report_only:
        run_all(args, parent_ms, work, saved, saved_file)
    write_results(saved, parent_ms, args)


def run_all(args, parent_ms: float, work: Path, saved: dict, saved_file: Path) -> None:
    """Every (budget, strategy) row not yet in `saved`, then the reference rows; saved after each."""
    done = {(r["fraction"], r["strategy"]) for r in saved["rows"]}
    held = second = None
    for fraction in [float(f) for f in args.fractions.split(",") if f]:
        for name in [n for n in args.strategies.split(",") if n]:
            if (fraction, name) in done:
                continue
            prep, row = strategy_row(name, fraction, parent_ms, args, work)
            if held is None:
                tok, text = prep.ranked.tokenizer, prep.ranked.text
                held, second = heldout_windows(tok, text, WINDOW, WINDOWS), second_windows(tok, WINDOW, WINDOWS)
                saved["parent"] = quality_report(prep.ranked.model, prep.ranked.model, held, second)
            if "child" in row:
                row["quality"] = quality_report(row.pop("child"), prep.ranked.model, held, second)
            saved["rows"].append(row)
            print(json.dumps(row, default=float), flush=True)
            saved_file.write_text(json.dumps(saved, default=float, indent=1))
    if not args.no_references and not saved["references"]:
        from _quantized import reference_rows

        prep = prepare("default", "cpu", SearchOptions(parent_ms), predictor=args.predictor, progress=False)
        tok, text = prep.ranked.tokenizer, prep.ranked.text
        held, second = heldout_windows(tok, text, WINDOW, WINDOWS), second_windows(tok, WINDOW, WINDOWS)
        parent = prep.ranked.model
        saved.setdefault("parent", quality_report(parent, parent, held, second))
        saved["references"] = reference_rows(parent, prep.device, prep.workload, work,
                                             lambda model: quality_report(model, parent, held, second))
        saved_file.write_text(json.dumps(saved, default=float, indent=1))


def _row_line(r: dict, rows: list[dict]) -> str:
    if "failed" in r:
        return f"| {r['fraction']:.2f}x | {r['strategy']} | failed: {r['failed']} | | | | | | | | |"
    q = r["quality"]
    same = [x["quality"] for x in rows if x["fraction"] == r["fraction"] and "quality" in x]
    best_ppl = min(x["heldout_perplexity"] for x in same)
    best_kl = min(x["kl_to_parent"] for x in same)
    ppl = f"{q['heldout_perplexity']:.2f}"
    kl = f"{q['kl_to_parent']:.3f}"
    supernet = f"{r['supernet']['steps']} supernet + " if "supernet" in r else ""
    return (f"| {r['fraction']:.2f}x = {r['budget_ms']:.2f} ms | {r['strategy']} | {r['winner']} | "
            f"{r['parent_ms'] / r['measured_ms']:.2f}x | {_bold(ppl, q['heldout_perplexity'] == best_ppl)} | "
            f"{q['second_text_perplexity']:.2f} | {_bold(kl, q['kl_to_parent'] == best_kl)} | "
            f"{q['top1_agreement']:.1%} | {supernet}{r['selection_steps']} + {r['recovery_steps']} | "
            f"{r['device_timings']} | {r['wall_min']:.1f} / {r['cpu_min']:.1f} |")


def _row_budget(args) -> str:
    if args.steps:
        return (f"Every row: the same recovery, {args.steps} distillation steps for its winner after the same "
                "short distillation of its candidates, however long its search took.")
    return (f"Every row: {args.minutes:g} minutes of wall time from the start of its search (or of its "
            "super-network training) to the end of its recovery.")


def _bold(text: str, yes: bool) -> str:
    return f"**{text}**" if yes else text


def write_results(saved: dict, parent_ms: float, args) -> None:
    rows, parent = saved["rows"], saved.get("parent")
    if parent is None:
        raise SystemExit(f"no rows in {args.work}/rows.json yet")
    lines = [f"Parent: measured decode_ms {parent_ms:.2f} ms (the profile's baseline); held-out perplexity "
             f"{parent['heldout_perplexity']:.2f}, second text {parent['second_text_perplexity']:.2f} "
             f"({WINDOWS} windows of {WINDOW} tokens each). {_row_budget(args)} Bold: the best held-out perplexity "
             "and the best KL at that budget.", "",
             "| budget | strategy | winner | measured speedup | held-out ppl | second-text ppl | KL to parent | "
             "top-1 agreement | distillation steps (finalist + winner) | device timings | wall / CPU min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row_line(r, rows) for r in rows]
    if saved["references"]:
        lines += ["", "Reference rows: the parent, unpruned, quantized by ONNX Runtime (speedup paired with its "
                  "fp32 graph; quality of the quantized graph itself).", "",
                  "| reference | decode speedup | prefill speedup | held-out ppl | second-text ppl | KL to parent | "
                  "top-1 agreement | graph MB (fp32) |", "|---|---|---|---|---|---|---|---|"]
        for r in saved["references"]:
            q = r["quality"]
            lines.append(f"| {r['strategy']} | {r['decode_speedup']:.2f}x | {r['prefill_speedup']:.2f}x | "
                         f"{q['heldout_perplexity']:.2f} | {q['second_text_perplexity']:.2f} | "
                         f"{q['kl_to_parent']:.3f} | {q['top1_agreement']:.1%} | {r['size_mb']:.0f} "
                         f"({r['fp32_size_mb']:.0f}) |")
    lines += ["", f"![held-out and second-text perplexity per strategy]({args.name}.png)"]
    plot(rows, parent, args.name)
    equal = "equal recovery steps" if args.steps else "equal time"
    print(_common.write_markdown(args.name, f"Recovery: which strategy delivers the best model at {equal}",
                                 "\n".join(lines)))


def plot(rows: list[dict], parent: dict, name: str) -> None:
    """Held-out and second-text perplexity per strategy, grouped by budget (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "quality" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in zip(axes, ("heldout_perplexity", "second_text_perplexity"), ("held-out", "second text")):
        labels = [f"{r['fraction']:.2f}x\n{r['strategy']}" for r in done]
        ax.bar(range(len(done)), [r["quality"][key] for r in done], color="tab:blue")
        ax.axhline(parent[key], color="tab:red", linestyle="--", label="parent")
        ax.set_xticks(range(len(done)), labels, rotation=60, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{title} perplexity after recovery")
        ax.legend()
    fig.tight_layout()
    fig.savefig(_common.RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
