"""Shared helpers for benchmark scripts: environment, Markdown writing, host description,
scoring windows and a scored recovery."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"

# latency bands, as a share of the parent's latency, for "where are the errors" tables; ALL spans every band
BANDS = ((0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.01))
ALL = (0, 1.01)


def band_label(lo: float, hi: float) -> str:
    return "all" if (lo, hi) == ALL else f"{lo:.0%}-{min(hi, 1):.0%}"


def spread(values) -> float:
    """Run-to-run spread of repeated measurements: (max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def host_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def write_markdown(name: str, title: str, body: str) -> Path:
    """Write benchmarks/results/NAME.md with the command that produced it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\nCommand: `{command}`  \nHost: {host_line()}\n\n{body}\n")
    return path


def require_files(ap, *paths: str) -> None:
    """One line through `ap.error` naming any of `paths` (profiles the script reads) that is
    not a file: `read_profile` reads a missing file as empty, for profiling to resume."""
    if missing := [p for p in paths if not Path(p).is_file()]:
        ap.error(f"no such profile: {', '.join(missing)}")


def first_rows(frame, n: int):
    """The profile's first `n` usable sample rows (plan order, what a profile of `n` samples
    would have) and its parent's reference row per workload (a resumed profile records one
    more each session; `Predictor.fit` trains on one, and so must a fit from scratch)."""
    import pandas as pd

    from latprune.profiling.dataset import reference_rows, usable_rows

    samples, _ = usable_rows(frame)
    return pd.concat([samples.iloc[:n], reference_rows(frame)], ignore_index=True)


def scoring_windows(ranked) -> dict:
    """The windows recovery benchmarks use: train (calibration part), calib (the search's
    windows), held (held-out) and second (the second text)."""
    from latprune.compress.ranked import WINDOW
    from latprune.search.evaluate import SEARCH_WINDOWS
    from latprune.text import calibration_windows, heldout_windows, second_windows

    tok, text = ranked.tokenizer, ranked.text
    return {"train": calibration_windows(tok, text, WINDOW, max_windows=None),
            "calib": calibration_windows(tok, text, WINDOW, SEARCH_WINDOWS),
            "held": heldout_windows(tok, text, WINDOW), "second": second_windows(tok, WINDOW)}


def recovered_quality(ranked, arch, windows: dict, steps: int) -> dict:
    """`arch` extracted and distilled `steps` steps (defaults, seed 0), scored on held-out
    windows and the second text, with the seconds the distillation took."""
    import time

    from latprune.compress.distill import DistillConfig, distill
    from latprune.compress.quality import quality_report

    t0 = time.perf_counter()
    long = distill(ranked.extract(arch), ranked.model, windows["train"], DistillConfig(steps=steps), progress=False)
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 1),
            **quality_report(long, ranked.model, windows["held"], windows["second"])}
