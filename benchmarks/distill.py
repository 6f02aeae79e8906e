"""Quality recovery by distillation on the real default model.

The importance-ordered sub-network with about 50% of the parameters (`SearchSpace.scaled`)
is distilled from the parent on the calibration part of the default text, through
`latprune distill` itself; held-out perplexity before/after and the wall time are reported.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import shutil
import time
from pathlib import Path

from latprune.architecture import Architecture
from latprune.compress.workflow import compress, distill_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=90)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--work", default="out/bench_distill")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    summary = compress("default", work / "student", keep=args.keep)
    t0 = time.perf_counter()
    info = distill_model(work / "student", "default", work / "distilled", steps=args.steps, lr=args.lr)
    wall = time.perf_counter() - t0
    gain = 1 - info["heldout_perplexity_after"] / info["heldout_perplexity_before"]
    body = (f"Student: {summary['parameters']:,} of {summary['parent_parameters']:,} parameters "
            f"({summary['parameters'] / summary['parent_parameters']:.1%}), architecture "
            f"`{Architecture.from_dict(summary['architecture']).describe()}` (importance-ordered). "
            f"Distillation: forward KL (T={info['config']['temperature']}) + "
            f"{info['config']['lm_weight']} x LM loss, AdamW lr {args.lr}, batch {info['config']['batch_size']} x "
            f"accumulation {info['config']['grad_accum']} windows of 128 tokens, cosine schedule. Held-out: "
            f"{info['eval']['windows']} windows x 128 tokens.\n\n"
            "| steps | tokens | distillation time | wall incl. evaluation | perplexity before | after | "
            "relative improvement | parent perplexity |\n|---|---|---|---|---|---|---|---|\n"
            f"| {args.steps} | {info['tokens']:,} | {info['seconds_this_run'] / 60:.1f} min | {wall / 60:.1f} min | "
            f"{info['heldout_perplexity_before']:.2f} | **{info['heldout_perplexity_after']:.2f}** | "
            f"**{gain:.1%}** | {info['parent_heldout_perplexity']:.2f} |")
    print(body)
    print(_common.write_markdown("distill", "Distillation of a 50% sub-network", body))


if __name__ == "__main__":
    main()
