"""Quality: perplexity on fixed token windows.

Perplexity = exp(mean next-token negative log-likelihood over every predicted position of
every window); each window is scored independently from its first token (no carried
context), so figures are comparable only at equal window length and text.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = False) -> float:
    """Held-out perplexity of `model` on token `windows` [n, T]."""
    model.eval()
    total, count = 0.0, 0
    for batch in tqdm(list(windows.split(batch_size)), desc="perplexity", unit="batch", disable=not progress):
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)
