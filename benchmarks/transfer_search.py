"""A search with a transferred predictor, verified on the new device.

The target device (`cpu-1t` of benchmarks/data/devices.toml: this CPU with one thread) gets
a predictor transferred from the 2-thread CPU predictor with the first `--rows` rows of its
`--plan transfer` profile (what `latprune profile --samples N --plan transfer` would have).
Then `latprune search` runs on it at each budget (a fraction of the target parent's measured
decode latency), with the default strategy, budget-directed refinement (refitting the
transferred predictor on its own timings) and verification on the target, without recovery:
the winner's measured latency as a share of the budget, predicted vs measured speedup, and
the device timings spent.

    python benchmarks/transfer_search.py --rows 20 --fractions 0.5,0.7,0.85

The target profile must have been recorded on this machine (verification times here).
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
from latprune.predictors.predictor import Predictor
from latprune.predictors.transfer import load_sources
from latprune.profiling.dataset import read_profile, write_profile
from latprune.search.pipeline import parent_measured
from latprune.search.workflow import SearchOptions, search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", nargs="+", default=["out/predictors/cpu-160"])
    ap.add_argument("--target", default="benchmarks/data/cpu-1t-transfer.parquet")
    ap.add_argument("--devices-file", default="benchmarks/data/devices.toml")
    ap.add_argument("--rows", type=int, default=20, help="target rows the transfer uses (the profile's first)")
    ap.add_argument("--fractions", default="0.5,0.7,0.85")
    ap.add_argument("--work", default="out/bench_transfer_search")
    ap.add_argument("--name", default="transfer_search", help="results file: benchmarks/results/NAME.md")
    args = ap.parse_args()
    if args.rows < 1:
        ap.error("--rows must be at least 1")
    try:
        target = read_profile(args.target)
        train = _common.first_rows(target, args.rows)
        predictor = Predictor.fit(train, "transfer", sources=load_sources(args.source))
    except LatpruneError as exc:
        ap.error(str(exc))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = str(target.device.iloc[0])
    record = work / f"{device}-{args.rows}.parquet"  # refinement refits on these rows and appends its own
    if not record.is_file():
        write_profile(record, train)
    predictor_dir = work / f"predictor-{args.rows}"
    predictor.save(predictor_dir)
    parent_ms = parent_measured(record, model_identity(load_config("default"))["config_hash"], "decode_ms")
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        opts = SearchOptions(round(fraction * parent_ms, 2), recover_minutes=0, finalist_steps=0)
        try:
            s = search("default", device, opts, work / f"search-{fraction}", predictor=predictor_dir,
                       profile_record=record, devices_file=args.devices_file)
        except LatpruneError as exc:
            rows.append(f"| {fraction:.2f}x | failed: {exc} | | | | | |")
            continue
        use, speed = s["budget_use"], s["speedup"]["decode_ms"]
        rows.append(f"| {fraction:.2f}x = {opts.latency_ms:.2f} ms | {s['winner']['describe']} | "
                    f"{s['winner']['measured']['decode_ms']:.2f} ms | {use['measured_over_budget']:.1%} | "
                    f"{speed['measured']:.2f}x / {speed['predicted']:.2f}x | "
                    f"{use['in_refinement']} + {use['in_verification']} | {_finalists(s, opts.latency_ms)} |")
        print(rows[-1], flush=True)
        shutil.rmtree(work / f"search-{fraction}" / "onnx", ignore_errors=True)
    meta = json.loads((predictor_dir / "metadata.json").read_text())
    lines = [f"Target device `{device}`; parent's measured decode_ms {parent_ms:.2f} ms (median of the target "
             f"profile's reference timings). Predictor: transferred from {', '.join(f'`{s}`' for s in args.source)} "
             f"with the first {args.rows} rows of `{args.target}` (+ the parent's reference timing; "
             f"{meta['transfer']['target_rows']} rows). Search: the default strategy, refinement on, no recovery.", "",
             "| budget | winner | measured decode | budget used | speedup measured / predicted | "
             "device timings (refinement + verification) | finalists verified, in order (% of budget) |",
             "|---|---|---|---|---|---|---|", *rows]
    print(_common.write_markdown(args.name, "Search with a transferred predictor", "\n".join(lines)))


def _finalists(summary: dict, budget_ms: float) -> str:
    """Each verified finalist, in the order timed, with its drift-corrected decode as a share of the budget."""
    return "; ".join(f"{f['describe']} {f['decode_ms'] / budget_ms:.0%}"
                     for f in summary["finalists_measured"])


if __name__ == "__main__":
    main()
