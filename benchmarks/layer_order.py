"""Which layers should layer dropping keep? Block influence against measured drop damage.

Layer dropping (`--strategy layers`, what the default run picks) keeps the first L layers of
the ranking's layer order: by default block influence (how much a block turns its input).
The orders of `compress/drop_order.py` measure instead the KL to the parent when layers are
skipped: each alone (`one-shot` on `--order-windows` windows; `drop-kl`, the ranking's under
`layer_criterion="drop-kl"`, on 8 evenly spaced ones), or removed greedily one at a time
(`greedy`). At each depth
every order's sub-network keeps every width, so all have the same latency; each is scored
zero-shot and after the same distillation as the pipeline's recovery (`--steps`, defaults,
seed 0) on held-out windows and the second text. Rows are saved to `--work` as they finish,
and a rerun resumes there.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import json
import time
from pathlib import Path

import numpy as np

from latprune.compress.drop_order import greedy_order, one_shot_order
from latprune.compress.quality import quality_report
from latprune.compress.ranked import RankedModel, rank_model
from latprune.files import atomic_file

ORDERS = ("influence", "one-shot", "drop-kl", "greedy")


def layer_orders(ranked: RankedModel, windows, names: list[str]) -> dict[str, dict]:
    """Each named order (most important first) with the seconds it took to compute."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        if name == "influence":
            order = ranked.ranking.layer_order
        elif name == "drop-kl":
            order = rank_model("default", progress=False, layer_criterion="drop-kl").ranking.layer_order
        elif name == "one-shot":
            order = one_shot_order(ranked.model, windows)
        else:
            order = greedy_order(ranked.model, windows)
        out[name] = {"order": [int(i) for i in order], "seconds": round(time.perf_counter() - t0, 1)}
        print(name, out[name], flush=True)
    return out


def score(ranked: RankedModel, order: list[int], depth: int, windows: dict, steps: int) -> dict:
    """Zero-shot and recovered quality of the first `depth` layers of `order`, widths whole."""
    space = ranked.space
    arch = space.from_values({**space.values_of(space.largest()), "layers": depth}, order)
    zero = quality_report(ranked.extract(arch), ranked.model, windows["held"], windows["second"])
    return {"layers": sorted(arch.layers), "zero_shot": zero,
            "recovered": _common.recovered_quality(ranked, arch, windows, steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depths", default="12,19,25", help="layers kept, comma-separated")
    ap.add_argument("--orders", default="influence,one-shot,greedy", help=f"comma-separated, of {', '.join(ORDERS)}")
    ap.add_argument("--steps", type=int, default=120, help="distillation steps of every sub-network")
    ap.add_argument("--order-windows", type=int, default=2, help="calibration windows the drop orders are measured on")
    ap.add_argument("--work", default="out/bench_layer_order", help="folder for finished rows (resumed)")
    ap.add_argument("--name", default="layer_order")
    args = ap.parse_args()
    names = args.orders.split(",")
    if unknown := [n for n in names if n not in ORDERS]:
        ap.error(f"unknown order(s) {', '.join(unknown)}; choose from {', '.join(ORDERS)}")
    try:
        depths = [int(d) for d in args.depths.split(",")]
    except ValueError:
        ap.error(f"--depths must be comma-separated integers, got '{args.depths}'")
    if args.steps < 1 or args.order_windows < 1:
        ap.error("--steps and --order-windows must be at least 1")
    ranked = rank_model("default", progress=False, layer_criterion="influence")
    if bad := [d for d in depths if not 1 <= d < ranked.space.parent["layers"]]:
        ap.error(f"depths {bad} are outside 1..{ranked.space.parent['layers'] - 1}")
    windows = _common.scoring_windows(ranked)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    saved_file = work / "rows.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {"orders": {}, "rows": {}}
    missing = [n for n in names if n not in saved["orders"]]
    saved["orders"].update(layer_orders(ranked, windows["train"][:args.order_windows], missing))
    _save(saved, saved_file)
    for depth in depths:
        for name in names:
            key = f"{depth}-{name}"
            if key not in saved["rows"]:
                saved["rows"][key] = {"depth": depth, "order": name,
                                      **score(ranked, saved["orders"][name]["order"], depth, windows, args.steps)}
                _save(saved, saved_file)
                print(key, json.dumps(saved["rows"][key]), flush=True)
    parent = quality_report(ranked.model, ranked.model, windows["held"], windows["second"])
    write(saved, parent, depths, names, args)


def _save(saved: dict, path: Path) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(saved, indent=1))


def write(saved: dict, parent: dict, depths: list[int], names: list[str], args) -> None:
    rows = [saved["rows"][f"{d}-{n}"] for d in depths for n in names]
    lines = [f"Parent: held-out perplexity {parent['heldout_perplexity']:.2f}, second text "
             f"{parent['second_text_perplexity']:.2f}. Every sub-network keeps every width; recovery: "
             f"{args.steps} distillation steps (defaults, seed 0). Drop orders measured on "
             f"{args.order_windows} calibration windows of 128 tokens. Bold: the best at that depth.", "",
             "Orders (most important first; seconds to compute):", ""]
    lines += [f"- {n}: {saved['orders'][n]['order']} ({saved['orders'][n]['seconds']} s)" for n in names]
    lines += ["", "| layers kept | order | zero-shot held-out ppl | zero-shot KL | held-out ppl after recovery | "
              "second-text ppl | KL to parent | top-1 agreement | layers |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = min(x["recovered"]["heldout_perplexity"] for x in rows if x["depth"] == r["depth"])
        z, q = r["zero_shot"], r["recovered"]
        held = f"{q['heldout_perplexity']:.2f}"
        lines.append(f"| {r['depth']} | {r['order']} | {z['heldout_perplexity']:.1f} | {z['kl_to_parent']:.3f} | "
                     f"{f'**{held}**' if q['heldout_perplexity'] == best else held} | "
                     f"{q['second_text_perplexity']:.2f} | {q['kl_to_parent']:.3f} | {q['top1_agreement']:.1%} | "
                     f"{r['layers']} |")
    plot(rows, parent, depths, names, args.name)
    lines += ["", f"![held-out perplexity after recovery per order]({args.name}.png)"]
    print(_common.write_markdown(args.name, "Layer order for layer dropping: block influence vs drop damage",
                                 "\n".join(lines)))


def plot(rows: list[dict], parent: dict, depths: list[int], names: list[str], name: str) -> None:
    """Held-out perplexity after recovery, one group of bars per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        ys = [next(r for r in rows if r["depth"] == d and r["order"] == n)["recovered"]["heldout_perplexity"]
              for d in depths]
        ax.bar(np.arange(len(depths)) + k * width, ys, width, label=n)
    ax.axhline(parent["heldout_perplexity"], color="tab:red", linestyle="--", label="parent")
    ax.set_xticks(np.arange(len(depths)) + width * (len(names) - 1) / 2, [f"{d} layers" for d in depths])
    ax.set_ylabel("held-out perplexity after recovery")
    ax.legend()
    fig.tight_layout()
    fig.savefig(_common.RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
