"""Accuracy of latency predictions: share within ±5% / ±10%, MAPE, Spearman rho."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def accuracy(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    rel = np.abs(predicted / actual - 1)
    rho = float(spearmanr(actual, predicted).statistic) if len(actual) > 2 else float("nan")
    return {"n": int(len(actual)), "within_5pct": float(np.mean(rel <= 0.05)),
            "within_10pct": float(np.mean(rel <= 0.10)), "mape": float(np.mean(rel)), "spearman": rho}


BANDS = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.01))  # latency as a share of the parent's
ABOVE = 0.3  # the share from which budgets are usual: the union of the bands above it is reported too
ABOVE_LABEL = f"≥{ABOVE:.0%} (all above)"


def _bands(share: np.ndarray):
    """(label, mask) of every band of BANDS that `share` (latency / the parent's) has values
    in, then of the union of those at or above ABOVE."""
    for lo, hi in BANDS:
        sel = (share >= lo) & (share < hi)
        if sel.any():
            yield f"{lo:.0%}-{min(hi, 1):.0%}", sel
    if (share >= ABOVE).any():
        yield ABOVE_LABEL, share >= ABOVE


def accuracy_by_band(actual: np.ndarray, predicted: np.ndarray, parent_ms: float) -> dict[str, dict[str, float]]:
    """`accuracy` within bands of the actual latency relative to the parent's (0-10%, 10-30%,
    30-60%, 60-100%): small sub-networks time noisily, so one overall figure hides where the
    errors are."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    return {label: accuracy(actual[sel], predicted[sel]) for label, sel in _bands(actual / parent_ms)}


def repeatability_by_band(timings: pd.DataFrame, metric: str, parent_ms: float) -> dict[str, dict[str, float]]:
    """The test-retest ceiling of the labels, by band: over architectures timed more than once
    (column `arch_id`; a search's verification and refinement re-time candidates), the share of
    timings within ±10% of the median of that architecture's other timings. No predictor
    scored against single timings can do much better."""
    share, rel = [], []
    for _, group in timings.groupby("arch_id"):
        values = group[metric].to_numpy(float)
        if len(values) < 2:
            continue
        for i, v in enumerate(values):
            share.append(float(np.median(values)) / parent_ms)
            rel.append(abs(v / np.median(np.delete(values, i)) - 1))
    rel_arr = np.array(rel)
    return {label: {"n": int(sel.sum()), "within_10pct": float(np.mean(rel_arr[sel] <= 0.10))}
            for label, sel in _bands(np.array(share))}


def format_band_table(rows: dict[str, dict[str, dict[str, float]]],
                      split: str = "5-fold CV, against each architecture's median timing",
                      ceiling: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """Markdown table: rows[metric][band] = accuracy dict; with `ceiling[metric][band]`
    (`repeatability_by_band`), the labels' own test-retest agreement beside it."""
    ceiling = ceiling or {}
    lines = [f"| metric | latency / parent's | n | within ±10% ({split}) | MAPE | repeated timings within ±10% of "
             "their median (n) |", "|---|---|---|---|---|---|"]
    for metric, bands in rows.items():
        for band, a in bands.items():
            c = ceiling.get(metric, {}).get(band)
            beside = f"{c['within_10pct']:.1%} ({c['n']})" if c else "no repeats"
            lines.append(f"| {metric} | {band} | {a['n']} | {a['within_10pct']:.1%} | {a['mape']:.2%} | {beside} |")
    return "\n".join(lines)


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: rows[metric][split] = accuracy dict."""
    lines = ["| metric | evaluation | n | within ±5% | within ±10% | MAPE | Spearman ρ |",
             "|---|---|---|---|---|---|---|"]
    for metric, splits in rows.items():
        for split, a in splits.items():
            lines.append(f"| {metric} | {split} | {a['n']} | {a['within_5pct']:.1%} | {a['within_10pct']:.1%} | "
                         f"{a['mape']:.2%} | {a['spearman']:.3f} |")
    return "\n".join(lines)
