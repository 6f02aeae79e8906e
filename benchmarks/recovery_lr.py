"""Learning rate of a short recovery: the default `latprune run` winner (L=16 heads=9 kv=3
mlp=384 hidden=576, importance-ordered) distilled from the parent for a few steps at
several peak learning rates; held-out and second-text perplexity, KL and top-1 agreement
with the parent on 16 windows each.

    python benchmarks/recovery_lr.py --steps 40 --lrs 2e-4,1e-3,3e-3
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import copy

from latprune import Architecture
from latprune.compress.distill import DistillConfig, distill
from latprune.compress.quality import quality_report
from latprune.compress.ranked import WINDOW, rank_model
from latprune.text import calibration_windows, heldout_windows, second_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lrs", default="2e-4,1e-3,3e-3")
    ap.add_argument("--windows", type=int, default=16)
    args = ap.parse_args()
    ranked = rank_model("default", progress=False)
    arch = Architecture.uniform(sorted(ranked.ranking.layer_order[:16].tolist()), 9, 3, 384, 576)
    train = calibration_windows(ranked.tokenizer, ranked.text, WINDOW, None)
    held = heldout_windows(ranked.tokenizer, ranked.text, WINDOW, args.windows)
    second = second_windows(ranked.tokenizer, WINDOW, args.windows)
    base = ranked.extract(arch)
    rows = [("zero-shot", quality_report(base, ranked.model, held, second))]
    for lr in (float(x) for x in args.lrs.split(",")):
        child = copy.deepcopy(base)
        distill(child, ranked.model, train, DistillConfig(steps=args.steps, lr=lr, warmup=min(10, args.steps // 4)),
                progress=False)
        rows.append((f"lr {lr:g}, {args.steps} steps", quality_report(child, ranked.model, held, second)))
        print(rows[-1], flush=True)
    lines = [f"Student `{arch.describe()}` ({train.shape[0]} calibration windows of {WINDOW} tokens to train on; "
             f"{args.windows} held-out and {args.windows} second-text windows). Batch 4 x accumulation 2, "
             "warm-up then cosine, forward KL (T=2) + 0.1 x LM loss.", "",
             "| recovery | held-out ppl | second-text ppl | KL to parent | top-1 agreement |", "|---|---|---|---|---|"]
    for name, q in rows:
        lines.append(f"| {name} | {q['heldout_perplexity']:.1f} | {q['second_text_perplexity']:.1f} | "
                     f"{q['kl_to_parent']:.3f} | {q['top1_agreement']:.1%} |")
    print(_common.write_markdown("recovery_lr", "Learning rate of a short recovery", "\n".join(lines)))


if __name__ == "__main__":
    main()
