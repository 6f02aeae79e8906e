"""Which way of compressing delivers the best model at a measured speedup, at equal time?

At each budget (a fraction of the parent's measured decode_ms), every strategy gets the same
wall-clock time (`--minutes`) from the start of its search to the end of its recovery on
this CPU: search against the predictor, refinement and verification on the device, and
distillation from the parent for whatever time is left. Strategies:

  nas-zero-shot   NAS; the winner chosen by zero-shot calibration perplexity, then distilled
  nas-recovery    NAS with the recovery-aware ranking: a shortlist near the budget (with
                  sub-networks of other depths) distilled for the same few steps before
                  any device timing, the best passing finalist after them then distilled
                  further (latprune's default)
  layers          layer dropping by importance, then the same distillation
  uniform         every width and the depth scaled by one factor, then the same distillation

Per row: the measured decode speedup (paired with the parent), held-out and second-text
perplexity, KL divergence from and top-1 agreement with the parent (40 windows each), wall
and CPU minutes. Needs a profile and predictor for `cpu` (e.g. from `latprune run`); each
row refines on its own copy of that profile, so no row reuses another's device timings.

    python benchmarks/recovery.py --fractions 0.6 --minutes 9
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

STRATEGIES = {"nas-zero-shot": ("nas", 0), "nas-recovery": ("nas", 6), "layers": ("layers", 6),
              "uniform": ("uniform", 6)}  # name -> (search strategy, finalist steps)
WINDOWS = 40


def run_row(prep, record: Path, minutes: float) -> dict:
    """Search, refine, verify, choose and recover within `minutes` of wall time; the winner's figures."""
    t0, c0 = time.perf_counter(), time.process_time()
    cands, tried = rank_by_recovery(prep, candidates(prep, progress=False), progress=False)
    with DeviceSession(prep.ranked.model.config, prep.device, prep.workload, record,
                       baseline=prep.predictor.baseline(prep.workload)) as session:
        refinement, cands = refine_on_device(prep, cands, session, progress=False)
        verified, preferred = verify_finalists(prep, cands, session, refinement, progress=False)
    winner, child, selection = select_by_recovery(prep, passing_finalists(prep, verified, preferred), progress=False,
                                                  tried=tried)
    child = child if child is not None else prep.ranked.extract(winner)
    left = minutes - (time.perf_counter() - t0) / 60
    info = recover(dataclasses.replace(prep, opts=dataclasses.replace(prep.opts, recover_minutes=max(left, 0.0))),
                   child, None, progress=False) if left > 0 else None
    m = prep.opts.metric
    return {"winner": winner.describe(), "parameters": prep.ranked.space.num_params(winner),
            "measured_ms": verified.measured[winner.id][m], "parent_ms": verified.parent["measured"][m],
            "selection_steps": selection.get("steps_each", 0), "recovery_steps": info["steps"] if info else 0,
            "device_timings": refinement.spent + 3 * len(verified.finalists),
            "wall_min": (time.perf_counter() - t0) / 60, "cpu_min": (time.process_time() - c0) / 60,
            "child": child}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="profiles/cpu.parquet")
    ap.add_argument("--predictor", default="out/predictors/cpu")
    ap.add_argument("--fractions", default="0.5,0.7,0.85")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall time per row: search + recovery")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--work", default="out/bench_recovery")
    ap.add_argument("--report-only", action="store_true", help="write the results from WORK/rows.json")
    args = ap.parse_args()
    parent_ms = parent_measured(Path(args.profile), model_identity(load_config("default"))["config_hash"], "decode_ms")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((work / "rows.json").read_text())
        write_results(saved["rows"], saved["parent"], parent_ms, args.minutes)
        return
    rows, held, second, parent_quality = [], None, None, None
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for name in args.strategies.split(","):
            strategy, steps = STRATEGIES[name]
            opts = SearchOptions(round(fraction * parent_ms, 2), strategy=strategy, finalist_steps=steps)
            prep = prepare("default", "cpu", opts, predictor=args.predictor, progress=False)
            if held is None:
                tok, text = prep.ranked.tokenizer, prep.ranked.text
                held, second = heldout_windows(tok, text, WINDOW, WINDOWS), second_windows(tok, WINDOW, WINDOWS)
                parent_quality = quality_report(prep.ranked.model, prep.ranked.model, held, second)
            record = work / f"{fraction}-{name}.parquet"  # each row refines from the same profile
            shutil.copyfile(args.profile, record)
            try:
                row = run_row(prep, record, args.minutes)
                row["quality"] = quality_report(row.pop("child"), prep.ranked.model, held, second)
            except LatpruneError as exc:
                row = {"failed": str(exc)}
            rows.append({"fraction": fraction, "budget_ms": opts.latency_ms, "strategy": name, **row})
            print(json.dumps(rows[-1], default=float), flush=True)
            saved = {"rows": rows, "parent": parent_quality}
            (work / "rows.json").write_text(json.dumps(saved, default=float, indent=1))
    write_results(rows, parent_quality, parent_ms, args.minutes)


def write_results(rows: list[dict], parent: dict, parent_ms: float, minutes: float) -> None:
    lines = [f"Parent: measured decode_ms {parent_ms:.2f} ms (the profile's baseline); held-out perplexity "
             f"{parent['heldout_perplexity']:.2f}, second text {parent['second_text_perplexity']:.2f} "
             f"({WINDOWS} windows of {WINDOW} tokens each). Every row: {minutes:g} minutes of wall time from the "
             "start of its search to the end of its recovery.", "",
             "| budget | strategy | winner | measured speedup | held-out ppl | second-text ppl | KL to parent | "
             "top-1 agreement | distillation steps (finalist + winner) | device timings | wall / CPU min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['fraction']:.2f}x | {r['strategy']} | failed: {r['failed']} | | | | | | | | |")
            continue
        q = r["quality"]
        same = [x for x in rows if x["fraction"] == r["fraction"] and "quality" in x]
        best = min(x["quality"]["heldout_perplexity"] for x in same)
        mark = "**" if q["heldout_perplexity"] == best else ""
        lines.append(f"| {r['fraction']:.2f}x = {r['budget_ms']:.2f} ms | {r['strategy']} | {r['winner']} | "
                     f"{r['parent_ms'] / r['measured_ms']:.2f}x | {mark}{q['heldout_perplexity']:.2f}{mark} | "
                     f"{q['second_text_perplexity']:.2f} | {q['kl_to_parent']:.3f} | {q['top1_agreement']:.1%} | "
                     f"{r['selection_steps']} + {r['recovery_steps']} | {r['device_timings']} | "
                     f"{r['wall_min']:.1f} / {r['cpu_min']:.1f} |")
    lines += ["", "Reference rows not measured by this script (from the project's notes on this VM): the parent "
              "quantized by ONNX Runtime, int8 dynamic: ~1.1x decode, perplexity 24 → 38; int4 weight-only "
              "(MatMulNBits): ~1.3x decode, perplexity 24 → 30."]
    lines += ["", "![held-out and second-text perplexity per strategy](recovery.png)"]
    plot(rows, parent)
    print(_common.write_markdown("recovery", "Recovery: which strategy delivers the best model at equal time",
                                 "\n".join(lines)))


def plot(rows: list[dict], parent: dict) -> None:
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
    fig.savefig(_common.RESULTS / "recovery.png", dpi=120)


if __name__ == "__main__":
    main()
