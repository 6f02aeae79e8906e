"""latprune's search against baselines at three latency budgets, on this CPU.

Budgets are fractions (0.5, 0.7, 0.85) of the parent's *measured* decode_ms (median of the
reference timings in the profile). Every strategy runs through `latprune search` itself
(same predictor, same budget-directed refinement, same verification), without recovery: the
winner's zero-shot held-out perplexity, its measured latency as a share of the budget, and the
on-device timings used (refinement + verification, each paired with the parent).
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json
import shutil
from pathlib import Path

from latprune.errors import LatpruneError
from latprune.models import load_config, model_identity
from latprune.search.pipeline import parent_measured
from latprune.search.workflow import SearchOptions, search

STRATEGIES = {  # row name -> its SearchOptions
    "nas": {"strategy": "nas", "finalists": 3}, "random": {"strategy": "random", "finalists": 3},
    "uniform": {"strategy": "uniform", "finalists": 1}, "layers": {"strategy": "layers", "finalists": 1},
    "per-layer": {"strategy": "layers", "space": "per-layer", "finalists": 3},  # a per-layer round after layers
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="benchmarks/data/cpu-160.parquet")
    ap.add_argument("--predictor", default="out/predictors/cpu-160", help="fitted on --profile")
    ap.add_argument("--evaluations", type=int, default=60)
    ap.add_argument("--fractions", default="0.5,0.7,0.85")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="the rows to (re)run, comma-separated")
    ap.add_argument("--work", default="out/bench_search")
    args = ap.parse_args()
    _common.require_files(ap, args.profile)
    parent_ms = parent_measured(Path(args.profile), model_identity(load_config("default"))["config_hash"], "decode_ms")
    fractions = [float(f) for f in args.fractions.split(",")]
    strategies = args.strategies.split(",")
    if unknown := set(strategies) - set(STRATEGIES):
        ap.error(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = kept_rows(Path(args.work) / "rows.json", fractions, strategies)
    for fraction in fractions:
        budget = round(fraction * parent_ms, 2)
        for strategy in strategies:
            out = Path(args.work) / f"{fraction}-{strategy}"
            opts = SearchOptions(budget, evaluations=args.evaluations, recover_minutes=0, finalist_steps=0,
                                 **STRATEGIES[strategy])
            record = Path(args.work) / f"{fraction}-{strategy}.parquet"  # refinement refits on the profile's rows
            shutil.copyfile(args.profile, record)  # + its own timings: no row reuses another's
            try:
                s = search("default", "cpu", opts, out, predictor=args.predictor, profile_record=record)
                w, use = s["winner"], s["budget_use"]
                rows.append((fraction, budget, strategy, w["describe"], w["heldout_perplexity"],
                             w["measured"]["decode_ms"], s["speedup"]["decode_ms"]["measured"],
                             s["speedup"]["decode_ms"]["predicted"], s["evaluations"],
                             f"{use['in_refinement']} + {use['in_verification']}", use["measured_over_budget"]))
            except LatpruneError as exc:
                rows.append((fraction, budget, strategy, f"failed: {exc}", float("nan"), float("nan"),
                             float("nan"), float("nan"), 0, "0", float("nan")))
            print(rows[-1], flush=True)
            (Path(args.work) / "rows.json").write_text(json.dumps(rows))
            shutil.rmtree(out / "onnx", ignore_errors=True)
    rows.sort(key=lambda r: (r[0], list(STRATEGIES).index(r[2])))
    lines = [f"Parent measured decode_ms (median of the profile's reference timings): {parent_ms:.2f} ms. "
             f"Evaluations per search: {args.evaluations}. Metric: decode_ms (one token with a 128-token cache).", "",
             "| budget | strategy | winner | held-out ppl (zero-shot) | measured decode | budget used | "
             "speedup measured / predicted | evaluations | device timings (refinement + verification) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f, b, strat, desc, ppl, ms, sm, sp, ev, dm, used in rows:
        best = min(r[4] for r in rows if r[0] == f)
        mark = "**" if ppl == best else ""
        lines.append(f"| {f:.2f}x = {b:.2f} ms | {strat} | {desc} | {mark}{ppl:.2f}{mark} | {ms:.2f} ms | "
                     f"{used:.1%} | {sm:.2f}x / {sp:.2f}x | {ev} | {dm} |")
    kept = sorted({(r[0], r[2]) for r in rows} - {(f, s) for f in fractions for s in strategies})
    if kept:
        lines += ["", f"Rows {', '.join(f'{f:g}x {s}' for f, s in kept)}: from an earlier run of this script in the "
                  "same --work folder (its saved rows.json), with the same profile and predictor."]
    print(_common.write_markdown("search_vs_baselines", "Search vs baselines", "\n".join(lines)))


def kept_rows(saved: Path, fractions: list[float], strategies: list[str]) -> list:
    """The rows of an earlier run in the same --work folder that are not rerun now."""
    if not saved.is_file():
        return []
    return [row for row in json.loads(saved.read_text()) if row[0] not in fractions or row[2] not in strategies]


if __name__ == "__main__":
    main()
