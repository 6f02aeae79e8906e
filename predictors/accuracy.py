"""Accuracy of latency predictions: share within ±5% / ±10%, MAPE, Spearman rho."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def accuracy(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    rel = np.abs(predicted / actual - 1)
    rho = float(spearmanr(actual, predicted).statistic) if len(actual) > 2 else float("nan")
    return {"n": int(len(actual)), "within_5pct": float(np.mean(rel <= 0.05)),
            "within_10pct": float(np.mean(rel <= 0.10)), "mape": float(np.mean(rel)), "spearman": rho}


BANDS = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.01))  # latency as a share of the parent's


def accuracy_by_band(actual: np.ndarray, predicted: np.ndarray, parent_ms: float) -> dict[str, dict[str, float]]:
    """`accuracy` within bands of the actual latency relative to the parent's (0-10%, 10-30%,
    30-60%, 60-100%): small sub-networks time noisily, so one overall figure hides where the
    errors are."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    share = actual / parent_ms
    out = {}
    for lo, hi in BANDS:
        sel = (share >= lo) & (share < hi)
        if sel.any():
            out[f"{lo:.0%}-{min(hi, 1):.0%}"] = accuracy(actual[sel], predicted[sel])
    return out


def format_band_table(rows: dict[str, dict[str, dict[str, float]]], split: str = "5-fold CV") -> str:
    """Markdown table: rows[metric][band] = accuracy dict."""
    lines = [f"| metric | latency / parent's | n | within ±10% ({split}) | MAPE |", "|---|---|---|---|---|"]
    for metric, bands in rows.items():
        for band, a in bands.items():
            lines.append(f"| {metric} | {band} | {a['n']} | {a['within_10pct']:.1%} | {a['mape']:.2%} |")
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
