"""Pareto front of perplexity vs predicted latency."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_front(frame: pd.DataFrame, latency: str, quality: str = "perplexity") -> pd.DataFrame:
    """Rows not dominated in (latency, quality), sorted by latency."""
    ordered = frame.sort_values([latency, quality])
    best, keep = np.inf, []
    for idx, q in zip(ordered.index, ordered[quality]):
        if q < best:
            keep.append(idx)
            best = q
    return ordered.loc[keep]


def spread(front: pd.DataFrame, latency: str, k: int) -> pd.DataFrame:
    """At most `k` front points evenly spread in latency (both ends included)."""
    if len(front) <= k:
        return front
    targets = np.linspace(front[latency].min(), front[latency].max(), k)
    picks = sorted({int(np.argmin(np.abs(front[latency].to_numpy() - t))) for t in targets})
    return front.iloc[picks]
