"""Quality: perplexity on fixed token windows, and closeness to the parent.

Perplexity = exp(mean next-token negative log-likelihood over every predicted position of
every window); each window is scored independently from its first token (no carried
context), so figures are comparable only at equal window length and text. Closeness to the
parent, on the same windows: the mean per-token KL divergence KL(parent || model) of the
next-token distributions, and top-1 agreement (the share of positions where both predict
the same next token). Neither can be gamed by adapting to one text.
"""

from __future__ import annotations

import math
from typing import Any

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


@torch.inference_mode()
def closeness(model: nn.Module, parent: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Perplexity of `model`, its mean per-token KL(parent || model) in nats, and its top-1
    agreement with the parent, on `windows`."""
    model.eval()
    parent.eval()
    nll = kl = agree = 0.0
    count = 0
    for batch in windows.split(batch_size):
        logp = torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), -1)
        logq = torch.log_softmax(parent(input_ids=batch, use_cache=False).logits[:, :-1].float(), -1)
        target = batch[:, 1:]
        nll -= float(logp.gather(-1, target.unsqueeze(-1)).sum())
        kl += float((logq.exp() * (logq - logp)).sum())
        agree += float((logp.argmax(-1) == logq.argmax(-1)).sum())
        count += target.numel()
    return {"perplexity": math.exp(nll / count), "kl_to_parent": kl / count, "top1_agreement": agree / count}


def quality_report(model: nn.Module, parent: nn.Module, heldout: torch.Tensor, second: torch.Tensor,
                   ) -> dict[str, Any]:
    """Held-out perplexity, KL and top-1 agreement with the parent, and second-text perplexity."""
    if model is parent:  # exactly what `closeness` would find, at half the cost
        held = {"perplexity": perplexity(model, heldout), "kl_to_parent": 0.0, "top1_agreement": 1.0}
    else:
        held = closeness(model, parent, heldout)
    return {"heldout_perplexity": held["perplexity"], "kl_to_parent": held["kl_to_parent"],
            "top1_agreement": held["top1_agreement"], "second_text_perplexity": perplexity(model, second)}
