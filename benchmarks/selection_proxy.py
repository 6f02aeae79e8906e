"""How many short-distillation steps does the recovery-aware choice need to rank candidates
the way a full recovery ranks them?

The search chooses among candidates near its budget by calibration perplexity after a short
distillation (`--finalist-steps`, 6 by default), and then gives the winner a long one. This
takes the candidates the layer-dropping and per-layer searches weigh at one budget, all
predicted (median, by `--predictor`) under `--fraction` x the parent's decode latency: the
deepest layer-dropped one that fits (every width kept), the depth family one to three layers
deeper (every head, the widest uniform MLP predicted at 95-99% of the limit), and the
per-layer `fill` and `taper`s of that layer-dropped one (1-3 more layers, the MLPs of the
least important layers narrowed), so that uniform and importance-guided narrowing meet at
each depth. Each gets separate
short distillations of each length in `--short` (the search's own configuration) and one
recovery of `--steps` steps, scored on held-out windows (perplexity, KL, top-1) and the
second text. The Spearman correlation of each short figure with the held-out perplexity
after the recovery says how well that many steps choose. No timing is involved: every
figure is deterministic (seed 0), whatever else runs on the machine.

    python benchmarks/selection_proxy.py --predictor out/predictors/cpu-160 --fraction 0.7
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

from latprune.architecture import Architecture
from latprune.compress.distill import distill
from latprune.compress.quality import perplexity, quality_report
from latprune.compress.ranked import rank_model
from latprune.files import atomic_file
from latprune.predictors.predictor import Predictor
from latprune.search.evaluate import SEARCH_WINDOWS, Evaluator
from latprune.search.per_layer import EXTRA_LAYERS, fill, taper
from latprune.search.recovery import short_distillation
from latprune.search.refine import BAND
from latprune.search.strategies import depth_family, layer_dropping

METRIC = "decode_ms"


def candidates(ranked, predictor: Predictor, fraction: float, calib) -> tuple[float, list[tuple[str, Architecture]]]:
    """The limit (ms) and the named candidates in the budget band (`calib`: the search's
    calibration windows)."""
    workload = predictor.default_workload()
    limit = fraction * predictor.baseline(workload)[METRIC]
    ev = Evaluator(ranked, predictor, calib, workload, METRIC, limit, bound="median")
    deepest = layer_dropping(ev)[0]  # not a band round (floor 0): the deepest depth that fits, all widths kept
    family = [a for a in depth_family(ev, BAND[0] * limit, BAND[1] * limit)
              if deepest.num_layers < a.num_layers <= deepest.num_layers + EXTRA_LAYERS[-1]]
    out = [(f"layer dropping, L={deepest.num_layers}", deepest)]
    out += [(f"depth family, {a.num_layers} layers", a) for a in family]
    grown = [("fill", fill(ev, deepest)), *((f"taper +{k}", taper(ev, deepest, k)) for k in EXTRA_LAYERS)]
    out += [(f"{name} of L={deepest.num_layers}", a) for name, a in grown if a is not None]
    return limit, out


def score(ranked, arch: Architecture, windows: dict, short: list[int], steps: int) -> dict:
    """Short-distillation calibration perplexities and the recovered model's quality."""
    row = {"arch": arch.describe(), "arch_id": arch.id, "params": ranked.space.num_params(arch), "short": {}}
    for n in short:
        child = distill(ranked.extract(arch), ranked.model, windows["train"], short_distillation(n), progress=False)
        row["short"][str(n)] = perplexity(child, windows["calib"])  # str: as JSON keys come back
    row["long"] = _common.recovered_quality(ranked, arch, windows, steps)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--predictor", required=True, help="predictor folder for cpu (e.g. out/predictors/cpu-160)")
    ap.add_argument("--fraction", type=float, default=0.7, help="budget: this fraction of the parent's decode_ms")
    ap.add_argument("--short", default="6,24", help="lengths of the short distillations, comma-separated")
    ap.add_argument("--steps", type=int, default=120, help="steps of the recovery")
    ap.add_argument("--rows", default="/tmp/selection_proxy.json", help="JSON file of finished rows (resumed)")
    args = ap.parse_args()
    short = [int(s) for s in args.short.split(",") if s]
    if not 0 < args.fraction < 1 or args.steps < 1 or not short or min(short) < 1:
        ap.error("--fraction must lie in (0, 1), --steps and every --short length must be at least 1")
    if not Path(args.predictor, "metadata.json").is_file():
        ap.error(f"no predictor in {args.predictor}: fit one with `latprune fit PROFILE --out {args.predictor}`")
    ranked = rank_model("default", progress=False)
    windows = _common.scoring_windows(ranked)
    limit, cands = candidates(ranked, Predictor.load(args.predictor), args.fraction, windows["calib"])
    saved = Path(args.rows)
    rows = json.loads(saved.read_text()) if saved.is_file() else {}
    for name, arch in cands:
        print(name, arch.describe(), flush=True)
    for name, arch in cands:
        if not _reusable(rows.get(name), arch, short, args.steps):
            rows[name] = score(ranked, arch, windows, short, args.steps)
            with atomic_file(saved) as tmp:
                Path(tmp).write_text(json.dumps(rows, indent=1))
            print(name, json.dumps(rows[name]), flush=True)
    rows = {name: rows[name] for name, _ in cands}  # this run's candidates only
    parent = quality_report(ranked.model, ranked.model, windows["held"], windows["second"])
    write(rows, parent, args, limit, short)


def _reusable(row: dict | None, arch: Architecture, short: list[int], steps: int) -> bool:
    """Whether a saved row scored `arch` with these short lengths and recovery steps."""
    return (row is not None and row["arch_id"] == arch.id and row["long"]["steps"] == steps
            and all(str(n) in row["short"] for n in short))


def write(rows: dict, parent: dict, args, limit: float, short: list[int]) -> None:
    held = [r["long"]["heldout_perplexity"] for r in rows.values()]
    lines = [f"Budget {args.fraction}x of the parent's predicted decode latency = {limit:.2f} ms; every candidate "
             f"predicted (median) under it. Parent: held-out perplexity "
             f"{parent['heldout_perplexity']:.2f}, second text {parent['second_text_perplexity']:.2f}. Short "
             f"distillations: the search's own configuration; calibration perplexity on its {SEARCH_WINDOWS} windows. "
             f"Recovery: {args.steps} steps, distillation defaults, seed 0.", "",
             "| candidate | parameters | " + " | ".join(f"calibration ppl after {n} steps" for n in short)
             + f" | held-out ppl after {args.steps} | second text | KL | top-1 |",
             "|---|---|" + "---|" * (len(short) + 4)]
    for name, r in rows.items():
        lo = r["long"]
        lines.append(f"| {name}: {r['arch']} | {r['params'] / 1e6:.1f}M | "
                     + " | ".join(f"{r['short'][str(n)]:.1f}" for n in short)
                     + f" | {lo['heldout_perplexity']:.2f} | {lo['second_text_perplexity']:.2f} | "
                       f"{lo['kl_to_parent']:.3f} | {lo['top1_agreement']:.1%} |")
    lines += ["", "Spearman ρ of each short figure with the held-out perplexity after the recovery:", ""]
    for n in short:
        proxy = [r["short"][str(n)] for r in rows.values()]
        lines.append(f"- {n} steps: ρ = {spearmanr(proxy, held).statistic:.2f}")
    print(_common.write_markdown(f"selection_proxy_{args.fraction}", "Short distillation as a selection proxy",
                                 "\n".join(lines)))


if __name__ == "__main__":
    main()
