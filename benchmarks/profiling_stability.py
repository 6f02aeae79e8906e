"""Run-to-run stability and throughput of the profiling harness on this machine.

Five architectures (stratified, seeded) are measured three times each, round-robin
(A B C D E A B C D E ...), exactly as `latprune profile` measures a sample: paired with the
parent (interleaved bursts) and recorded as ratio x the baseline. Spread of a metric for one
architecture = (max - min) / median of its three recorded values; an experiment's figure is
the median spread over the five, beside the same for the raw (unpaired) medians of the same
timings. A shared VM's noise changes from one quarter-hour to the next, so the whole
experiment is repeated (`--repeats`, each with a fresh profiler and baseline) and every
repeat is reported, not the best one. `--versus FIELD=VALUE ...` compares a second timing
policy, alternated with the first in every repeat (A B A B ...) so that both see the same
stretches of machine noise. Throughput counts the first round of the first repeat
(export + timing, including the reference bursts), i.e. what a fresh `latprune profile`
sample costs.
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from latprune.architecture import Architecture
from latprune.models import load_config
from latprune.profiling.dataset import STEPS, ProfileWriter, stat_column
from latprune.profiling.devices import Device, get_device
from latprune.profiling.run import Profiler
from latprune.profiling.sampling import profile_plan
from latprune.workload import Workload

TARGET = 0.03
POLICY = ("threads", "warmup", "bursts", "max_bursts", "ratio_tolerance", "min_repeats", "min_time_s", "max_repeats",
          "busy_tolerance", "busy_retries")


def with_overrides(ap: argparse.ArgumentParser, device: Device, items: list[str], flag: str) -> Device:
    """The device with FIELD=VALUE timing overrides applied (argparse error for a bad one)."""
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in POLICY:
            ap.error(f"{flag} {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(POLICY)}")
        try:
            device = dataclasses.replace(device, **{field: type(getattr(device, field))(value)})
        except ValueError:
            ap.error(f"{flag} {item!r}: {value!r} is not a valid {type(getattr(device, field)).__name__}")
    return device


def experiment(device: Device, archs: list[Architecture], rounds: int, folder: Path) -> dict[str, list[dict]]:
    """Rows of every architecture over `rounds` round-robin rounds, with a fresh profiler."""
    prof = Profiler(load_config("default"), device, Workload(), ProfileWriter(folder / "p.parquet"), keep_onnx=True)
    runs: dict[str, list[dict]] = {a.id: [] for a in archs}
    try:
        for r in range(rounds):
            for a in archs:
                row = prof.measure(a, "stability")
                assert row["status"] == "ok", row["error"]
                runs[a.id].append(row)
                print(r, a.describe(), round(row["prefill_ms"], 2), round(row["decode_ms"], 3),
                      f"drift {row['drift']:.3f}", f"attempts {row['attempts']}", flush=True)
    finally:
        prof.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="independent repeats of the whole experiment")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override device timing fields, e.g. bursts=9 threads=1")
    ap.add_argument("--versus", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="a second policy (these overrides on top of --set), alternated with the first in every "
                         "repeat (A B A B ...); written to profiling_stability_versus.md")
    args = ap.parse_args()
    policies = {"A": with_overrides(ap, get_device(args.device), args.set, "--set")}
    if args.versus:
        policies["B"] = with_overrides(ap, policies["A"], args.versus, "--versus")
    experiments: list[tuple[str, dict[str, list[dict]]]] = []  # (policy, runs) in the order run
    with tempfile.TemporaryDirectory() as tmp:
        cache = Profiler(load_config("default"), policies["A"], Workload(), ProfileWriter(Path(tmp) / "unused.parquet"),
                         keep_onnx=True)  # the shared graph folder the experiments keep their graphs in
        space = cache.space
        archs = profile_plan(space, args.archs, seed=7)
        try:
            for k in range(args.repeats):
                for name, device in policies.items():
                    folder = Path(tmp) / f"{k}{name}"
                    folder.mkdir()
                    experiments.append((name, experiment(device, archs, args.rounds, folder)))
        finally:  # the graphs were kept across rounds and repeats; none are kept after
            for a in [*archs, space.largest()]:
                shutil.rmtree(cache.folder(a), ignore_errors=True)

    kinds = [col for m in STEPS for col in (m, stat_column(m, "raw_ms"))]
    # per experiment: column -> per-architecture spreads
    spreads = [{col: [_common.spread([r[col] for r in runs[a.id]]) for a in archs] for col in kinds}
               for _, runs in experiments]

    lines = [f"Device `{args.device}`, workload {Workload().to_dict()}; {args.archs} architectures x {args.rounds} "
             f"rounds, round-robin; the whole experiment repeated {args.repeats} times (fresh profiler and baseline "
             "each time)" + (", alternating the two policies (A B A B ...)." if args.versus else "."), ""]
    for name, device in policies.items():
        lines.append(f"- policy {name}: {device.intra_threads} threads, "
                     + ", ".join(f"{k}={getattr(device, k)}" for k in POLICY if k != "threads"))
    lines += ["", "Median run-to-run spread over the architectures, per experiment (recorded = paired ratio x "
              "baseline; raw = unpaired medians of the same timings); timing seconds per sample (export excluded):",
              "", "| repeat | policy | prefill recorded | prefill raw | decode recorded | decode raw | reference drift "
              "| timing s/sample | retried (host busy) |", "|---|---|---|---|---|---|---|---|---|"]
    for i, ((name, runs), s) in enumerate(zip(experiments, spreads)):
        rows = [r for rs in runs.values() for r in rs]
        cells = [f"{statistics.median(s[col]):.1%}" for col in kinds]
        lines.append(f"| {i // len(policies) + 1} | {name} | " + " | ".join(cells)
                     + f" | {min(r['drift'] for r in rows):.3f} to {max(r['drift'] for r in rows):.3f} | "
                     f"{statistics.mean(r['timing_s'] for r in rows):.1f} | "
                     f"{statistics.mean(r['attempts'] > 1 for r in rows):.0%} |")
    lines += ["", "Per architecture, recorded spread in each experiment:", "",
              "| architecture | params | policy | prefill ms (first repeat) | prefill spread "
              "| decode ms (first repeat) | decode spread |", "|---|---|---|---|---|---|---|"]
    for i, a in enumerate(archs):
        for name in policies:
            mine = [(runs, s) for (n, runs), s in zip(experiments, spreads) if n == name]
            cells = []
            for m in STEPS:
                first = mine[0][0][a.id]
                cells += [", ".join(f"{r[m]:.2f}" for r in first), ", ".join(f"{s[m][i]:.1%}" for _, s in mine)]
            lines.append(f"| {a.describe()} | {space.num_params(a):,} | {name} | " + " | ".join(cells) + " |")
    lines += ["", f"| metric | policy | median over repeats of the median spread | repeats with ≤{TARGET:.0%} |",
              "|---|---|---|---|"]
    for m in STEPS:
        for name in policies:
            per_repeat = [statistics.median(s[m]) for (n, _), s in zip(experiments, spreads) if n == name]
            met = sum(v <= TARGET for v in per_repeat)
            lines.append(f"| {m} (recorded) | {name} | **{statistics.median(per_repeat):.1%}** (range "
                         f"{min(per_repeat):.1%}-{max(per_repeat):.1%}) | {met} of {len(per_repeat)} |")
    first_round = [rows[0] for rows in experiments[0][1].values()]
    export = sum(r["export_s"] for r in first_round)
    timing = sum(r["timing_s"] for r in first_round)
    total = export + timing
    lines += ["", f"Throughput (policy A, first round of the first repeat, fresh samples): "
                  f"**{len(first_round) / total * 60:.1f} samples/min**; export {export / total:.0%} of the time, "
                  f"timing {timing / total:.0%} ({total / len(first_round):.1f} s per sample)."]
    name = "profiling_stability_versus" if args.versus else "profiling_stability"
    print(_common.write_markdown(name, "Profiling stability and throughput", "\n".join(lines)))


if __name__ == "__main__":
    main()
