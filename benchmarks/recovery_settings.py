"""Which distillation settings recover a pruned model best in a short CPU budget?

The winner of a default `run` at commit 87bf8ca (L=17 heads=9 kv=3 mlp=1152 hidden=576, 57%
of the parameters, importance-ordered) is distilled from its parent on the calibration text with each variant
of `DistillConfig`, then scored on held-out windows (perplexity, KL to the parent, top-1
agreement) and on the second text no stage trains on. Rows at equal steps show what each
setting does per step; the last row gives the default as many steps as fit in the time the
first row took, the comparison that matters when recovery is time-budgeted.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json
import time

from latprune.compress.distill import DistillConfig, distill
from latprune.compress.quality import quality_report
from latprune.compress.ranked import WINDOW, rank_model
from latprune.text import calibration_windows, heldout_windows, second_windows

WINNER = {"layers": 17, "kv_groups": 3, "q_per_kv": 3, "mlp": 1152, "hidden": 576}
BEFORE = {"temperature": 2.0, "train_embedding": True, "autocast_bf16": False}  # the defaults until this benchmark
VARIANTS = {
    "before: T=2, embedding trained, fp32": BEFORE,
    "T=2, embedding frozen, fp32": {**BEFORE, "train_embedding": False},
    "T=1, embedding frozen, fp32": {**BEFORE, "train_embedding": False, "temperature": 1.0},
    "default: T=1, embedding frozen, bf16 autocast": {},
}


def run_variant(ranked, arch, windows: dict, steps: int, settings: dict) -> dict:
    child = ranked.extract(arch)
    cfg = DistillConfig(steps=steps, seed=0, **settings)
    t0 = time.perf_counter()
    distill(child, ranked.model, windows["train"], cfg, progress=False)
    seconds = time.perf_counter() - t0
    quality = quality_report(child, ranked.model, windows["held"], windows["second"])
    return {"steps": steps, "seconds": round(seconds, 1), "settings": settings, **quality}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=24, help="distillation steps of the equal-steps rows")
    args = ap.parse_args()
    ranked = rank_model("default", progress=False)
    arch = ranked.space.from_values(WINNER, ranked.ranking.layer_order)
    windows = {"train": calibration_windows(ranked.tokenizer, ranked.text, WINDOW, max_windows=None),
               "held": heldout_windows(ranked.tokenizer, ranked.text, WINDOW),
               "second": second_windows(ranked.tokenizer, WINDOW)}
    parent = quality_report(ranked.model, ranked.model, windows["held"], windows["second"])
    rows = {}
    for name, settings in VARIANTS.items():
        rows[name] = run_variant(ranked, arch, windows, args.steps, settings)
        print(name, json.dumps(rows[name]), flush=True)
    first, default = rows[next(iter(VARIANTS))], rows[list(VARIANTS)[-1]]
    equal_time = max(1, round(args.steps * first["seconds"] / default["seconds"]))
    name = f"default, in the first row's time ({equal_time} steps)"
    rows[name] = run_variant(ranked, arch, windows, equal_time, {})
    print(name, json.dumps(rows[name]), flush=True)
    write(rows, parent, arch)


def write(rows: dict, parent: dict, arch) -> None:
    lines = [f"Sub-network: `{arch.describe()}` (the winner of a default `run` at commit 87bf8ca, 57% of the "
             "parameters), distilled from SmolLM2-135M-Instruct on the calibration part of the default text; "
             "batch 4 x 2 windows of 128 tokens, "
             "lr 1e-3, seed 0. Held-out: 40 windows of the held-out paragraphs; second text: 40 windows of standard-"
             "library docstrings (never trained on). Every row uses the chunked loss with its analytic gradient (the "
             "autograd formula's value and gradient, tested), so the first row is faster per step than the code "
             "before it was.", "",
             f"Parent: held-out ppl {parent['heldout_perplexity']:.2f}, second-text ppl "
             f"{parent['second_text_perplexity']:.2f}.", "",
             "| variant | steps | seconds | s/step | held-out ppl | second-text ppl | KL to parent | top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['steps']} | {r['seconds']:.0f} | {r['seconds'] / r['steps']:.2f} | "
                     f"{r['heldout_perplexity']:.2f} | {r['second_text_perplexity']:.2f} | {r['kl_to_parent']:.3f} | "
                     f"{r['top1_agreement']:.1%} |")
    print(_common.write_markdown("recovery_settings", "Distillation settings for a short recovery", "\n".join(lines)))


if __name__ == "__main__":
    main()
