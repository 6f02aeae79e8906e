"""Features of (architecture, workload) pairs, shared by fit and predict.

Raw dimensions plus derived quantities that carry the physics of a decoder forward:
parameters, weight bytes read per decode step, FLOPs per token, KV-cache bytes and the
attention cost at the prompt length. Everything is vectorised over numpy columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from latprune.architecture import Architecture
from latprune.space import SearchSpace

FEATURE_SCHEMA = 1
RAW = ["layers", "heads", "kv_groups", "mlp", "hidden", "batch", "prompt"]
DERIVED = ["params", "weight_bytes", "token_flops", "prefill_flops", "prefill_attn_flops", "decode_attn_flops",
           "kv_bytes", "lm_head_flops"]
FEATURES = RAW + DERIVED
BYTES = {"fp32": 4, "fp16": 2}


def arch_columns(archs: list[Architecture]) -> pd.DataFrame:
    """Uniform architectures as columns (the first layer's widths)."""
    return pd.DataFrame({"layers": [a.num_layers for a in archs], "heads": [a.heads[0] for a in archs],
                         "kv_groups": [a.kv_groups[0] for a in archs], "mlp": [a.mlp[0] for a in archs],
                         "hidden": [a.hidden for a in archs]})


def features(space: SearchSpace, cols: pd.DataFrame, dtype: str = "fp32") -> pd.DataFrame:
    """Feature frame for columns layers, heads, kv_groups, mlp, hidden, batch, prompt."""
    f = pd.DataFrame({k: np.asarray(cols[k], dtype=np.float64) for k in RAW})
    hd, vocab, bpe = space.parent["head_dim"], space.parent["vocab"], BYTES[dtype]
    layer = space.layer_params(f.hidden, f.heads, f.kv_groups, f.mlp)
    body = f.layers * layer
    f["params"] = body + space.embedding_params(f.hidden)
    f["lm_head_flops"] = 2.0 * vocab * f.hidden
    f["weight_bytes"] = (body + vocab * f.hidden) * bpe  # read once per decode step
    f["token_flops"] = 2.0 * body + f.lm_head_flops
    attn_per_pair = 4.0 * f.layers * f.heads * hd  # QK^T and AV, per (query, key) pair
    f["prefill_attn_flops"] = attn_per_pair * f.prompt**2 / 2 * f.batch
    f["prefill_flops"] = f.token_flops * f.prompt * f.batch + f.prefill_attn_flops
    f["decode_attn_flops"] = attn_per_pair * f.prompt * f.batch
    f["kv_bytes"] = 2.0 * f.layers * f.kv_groups * hd * f.prompt * f.batch * bpe
    return f[FEATURES]


def roofline_terms(f: pd.DataFrame, metric: str) -> np.ndarray:
    """[bytes, flops, layers, 1] columns of the analytic roofline model for a metric."""
    if metric == "prefill_ms":
        terms = [f.weight_bytes + f.kv_bytes, f.prefill_flops, f.layers]
    else:
        terms = [f.weight_bytes + f.kv_bytes, f.token_flops * f.batch + f.decode_attn_flops, f.layers]
    return np.column_stack([*(np.asarray(t, dtype=np.float64) for t in terms), np.ones(len(f))])


def context_term(f: pd.DataFrame, metric: str) -> np.ndarray:
    """The context's own cost, which a runtime pays at another rate than the weights' and
    which grows with the prompt while theirs does not, as columns: for prefill the attention
    FLOPs over the prompt (compute-bound); for a decode step the KV-cache bytes it reads
    (memory-bound) and the bytes of the cache's copy repeated to every query head, which
    grouped-query attention makes each step and attention without grouping (heads equal to
    KV groups) does not."""
    if metric == "prefill_ms":
        return np.asarray(f.prefill_attn_flops, dtype=np.float64)[:, None]
    kv = np.asarray(f.kv_bytes, dtype=np.float64)
    repeated = np.where(f.heads > f.kv_groups, kv * f.heads / f.kv_groups, 0.0)
    return np.column_stack([kv, repeated])
