"""Which nevergrad optimizer should `latprune search` use by default?

Each candidate optimizer searches the real default model under the same predicted
decode_ms budget (a fraction of the parent's prediction) with the same number of
perplexity evaluations, for several seeds; we compare the best calibration perplexity found.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import statistics

from latprune.compress.ranked import WINDOW, rank_model
from latprune.predictors.predictor import Predictor
from latprune.search.workflow import SEARCH_WINDOWS, SearchOptions, find_candidates
from latprune.text import calibration_windows

CANDIDATES = ("PortfolioDiscreteOnePlusOne", "DiscreteLenglerOnePlusOne", "NGOpt", "RandomSearch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--predictor", default="out/predictors/cpu")
    ap.add_argument("--fraction", type=float, default=0.6, help="budget as a fraction of the parent's prediction")
    ap.add_argument("--evaluations", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()

    ranked = rank_model("default")
    predictor = Predictor.load(args.predictor)
    workload = predictor.default_workload()
    budget = args.fraction * float(predictor.predict([ranked.space.largest()], workload).decode_ms.iloc[0])
    windows = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, SEARCH_WINDOWS)
    results = {}
    for name in CANDIDATES:
        best = []
        for seed in range(args.seeds):
            opts = SearchOptions(budget, evaluations=args.evaluations, optimizer=name, seed=seed, strategy="nas")
            frame = find_candidates(ranked, predictor, windows, workload, opts, progress=False).frame()
            best.append(float(frame.perplexity.min()))
            print(name, seed, best[-1], flush=True)
        results[name] = best
    lines = [f"Default model, predicted decode_ms budget {budget:.2f} ms ({args.fraction:.0%} of the parent's "
             f"prediction), {args.evaluations} perplexity evaluations per run ({SEARCH_WINDOWS} calibration windows "
             f"of {WINDOW} tokens), seeds 0..{args.seeds - 1}. Lower is better.", "",
             "| optimizer | best calibration perplexity per seed | mean |", "|---|---|---|"]
    for name, best in sorted(results.items(), key=lambda kv: statistics.mean(kv[1])):
        lines.append(f"| {name} | {', '.join(f'{b:.2f}' for b in best)} | **{statistics.mean(best):.2f}** |")
    print(_common.write_markdown("optimizer_choice", "Choice of the default nevergrad optimizer", "\n".join(lines)))


if __name__ == "__main__":
    main()
