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


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: rows[metric][split] = accuracy dict."""
    lines = ["| metric | evaluation | n | within ±5% | within ±10% | MAPE | Spearman ρ |",
             "|---|---|---|---|---|---|---|"]
    for metric, splits in rows.items():
        for split, a in splits.items():
            lines.append(f"| {metric} | {split} | {a['n']} | {a['within_5pct']:.1%} | {a['within_10pct']:.1%} | "
                         f"{a['mape']:.2%} | {a['spearman']:.3f} |")
    return "\n".join(lines)
