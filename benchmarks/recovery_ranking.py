"""Does zero-shot perplexity rank sub-networks the way they rank after recovery?

Sub-networks of about the same predicted decode latency (60% of the parent's on this CPU,
by the committed 160-sample profile's predictor) that trade depth against width differently:
the winner of a default `run` at commit 68a378f (21 layers, MLP cut to 640), two members of
the depth family (every head, full hidden size, fewer layers with a wider MLP) and one that
cuts heads instead. Each is scored zero-shot, after the short distillation the search's
recovery-aware ranking gives (`--finalist-steps`, 6 steps; calibration perplexity on the
search's 8 windows, as the search scores it), and after a longer one (`--steps`), on held-out
windows (perplexity, KL to the parent, top-1 agreement) and on the second text.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json

from latprune.compress.distill import distill
from latprune.compress.quality import perplexity, quality_report
from latprune.compress.ranked import rank_model
from latprune.search.evaluate import SEARCH_WINDOWS
from latprune.search.recovery import short_distillation

ARCHS = {  # name -> (layers, kv_groups, q_per_kv, mlp, hidden)
    "run winner (MLP-pruned)": (21, 3, 3, 640, 576),
    "depth family, 17 layers": (17, 3, 3, 1152, 576),
    "depth family, 15 layers": (15, 3, 3, 1536, 576),
    "heads cut, 18 layers": (18, 1, 3, 1536, 576),
}
SHORT_STEPS = 6


def score(ranked, values: tuple, windows: dict, steps: int) -> dict:
    """Zero-shot, short-distillation and long-distillation figures of one sub-network."""
    keys = ("layers", "kv_groups", "q_per_kv", "mlp", "hidden")
    arch = ranked.space.from_values(dict(zip(keys, values)), ranked.ranking.layer_order)
    zero = ranked.extract(arch)
    row = {"arch": arch.describe(), "params": ranked.space.num_params(arch),
           "zero_shot": {"calibration_perplexity": perplexity(zero, windows["calib"]),
                         **quality_report(zero, ranked.model, windows["held"], windows["second"])}}
    short = short_distillation(SHORT_STEPS)  # the search's own ranking configuration
    row["short"] = perplexity(distill(ranked.extract(arch), ranked.model, windows["train"], short, progress=False),
                              windows["calib"])
    row["long"] = _common.recovered_quality(ranked, arch, windows, steps)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=48, help="steps of the longer distillation")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    ranked = rank_model("default", progress=False)
    windows = _common.scoring_windows(ranked)
    parent = quality_report(ranked.model, ranked.model, windows["held"], windows["second"])
    rows = {}
    for name, values in ARCHS.items():
        rows[name] = score(ranked, values, windows, args.steps)
        print(name, json.dumps(rows[name]), flush=True)
    write(rows, parent, args.steps)


def write(rows: dict, parent: dict, steps: int) -> None:
    lines = [f"Parent: held-out perplexity {parent['heldout_perplexity']:.2f}, second text "
             f"{parent['second_text_perplexity']:.2f}. Distillation defaults (T=1, frozen embedding, bf16 autocast "
             f"where native), seed 0. Calibration perplexity: the search's {SEARCH_WINDOWS} windows.", "",
             "| sub-network | parameters | zero-shot calibration ppl | zero-shot held-out / second-text ppl | "
             f"calibration ppl after {SHORT_STEPS} steps | held-out ppl after {steps} | "
             f"second-text ppl after {steps} | KL after {steps} | top-1 after {steps} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        z, lo = r["zero_shot"], r["long"]
        lines.append(f"| {name}: {r['arch']} | {r['params'] / 1e6:.1f}M | {z['calibration_perplexity']:.1f} | "
                     f"{z['heldout_perplexity']:.1f} / {z['second_text_perplexity']:.1f} | {r['short']:.1f} | "
                     f"{lo['heldout_perplexity']:.2f} | {lo['second_text_perplexity']:.2f} | "
                     f"{lo['kl_to_parent']:.3f} | {lo['top1_agreement']:.1%} |")
    print(_common.write_markdown("recovery_ranking", "Zero-shot ranking vs ranking after recovery", "\n".join(lines)))


if __name__ == "__main__":
    main()
