"""Extraction: parent + ranking + Architecture -> a genuinely smaller torch model.

The child is a copy of the parent whose parameters are replaced by the kept rows/columns
(embeddings, norms, q/k/v/o, MLP, LM head; tied weights stay tied). The ranking decides
*which* structures are kept; they stay in the parent's order, so the full architecture is
bit-for-bit the parent (a permutation would change float summation order).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from latprune.architecture import Architecture
from latprune.families import Family
from latprune.space import SearchSpace

from .ranking import Ranking, as_index


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=True)


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor | None) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx.to(t.device))


def slice_linear(lin: nn.Linear, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    """Keep rows `out_idx` and columns `in_idx` of an nn.Linear (weight [out, in])."""
    lin.weight = _param(_select(_select(lin.weight.data, 0, out_idx), 1, in_idx))
    if lin.bias is not None:
        lin.bias = _param(_select(lin.bias.data, 0, out_idx))
    lin.out_features, lin.in_features = lin.weight.shape


def slice_conv1d(conv: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    """Same for transformers' GPT-2 Conv1D (weight [in, out])."""
    conv.weight = _param(_select(_select(conv.weight.data, 1, out_idx), 0, in_idx))
    conv.bias = _param(_select(conv.bias.data, 0, out_idx))
    conv.nf = conv.weight.shape[1]
    if hasattr(conv, "nx"):
        conv.nx = conv.weight.shape[0]


def slice_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    """RMSNorm or LayerNorm over the kept hidden channels."""
    norm.weight = _param(norm.weight.data.index_select(0, idx))
    if getattr(norm, "bias", None) is not None:
        norm.bias = _param(norm.bias.data.index_select(0, idx))
    if hasattr(norm, "normalized_shape"):
        norm.normalized_shape = (len(idx),)


def slice_embedding(emb: nn.Embedding, idx: torch.Tensor) -> None:
    emb.weight = _param(emb.weight.data.index_select(1, idx))
    emb.embedding_dim = len(idx)


def head_channels(heads: list[int], width: int) -> torch.Tensor:
    """Channel indices of whole heads of `width` channels each."""
    return torch.cat([torch.arange(h * width, (h + 1) * width) for h in heads])


def _slice_attention(family: Family, layer: nn.Module, q: list[int], kv: list[int], ch: torch.Tensor, *,
                     head_dim: int, parent_heads: int) -> None:
    attn = family.attention(layer)
    q_ch = head_channels(q, head_dim)
    if family.kind == "llama":
        kv_ch = head_channels(kv, head_dim)
        slice_linear(attn.q_proj, q_ch, ch)
        slice_linear(attn.k_proj, kv_ch, ch)
        slice_linear(attn.v_proj, kv_ch, ch)
        slice_linear(attn.o_proj, ch, q_ch)
        attn.num_key_value_groups = len(q) // len(kv)
    elif family.kind == "gpt2":
        width = parent_heads * head_dim
        slice_conv1d(attn.c_attn, torch.cat([q_ch, q_ch + width, q_ch + 2 * width]), ch)
        slice_conv1d(attn.c_proj, ch, q_ch)
        attn.split_size = attn.embed_dim = len(q_ch)
        attn.num_heads = len(q)
    else:  # gpt_neox: fused QKV laid out head by head as [q, k, v]
        slice_linear(attn.query_key_value, head_channels(q, 3 * head_dim), ch)
        slice_linear(attn.dense, ch, q_ch)


def _slice_mlp(family: Family, layer: nn.Module, neurons: torch.Tensor, ch: torch.Tensor) -> None:
    mlp = layer.mlp
    if family.kind == "llama":
        slice_linear(mlp.gate_proj, neurons, ch)
        slice_linear(mlp.up_proj, neurons, ch)
        slice_linear(mlp.down_proj, ch, neurons)
    elif family.kind == "gpt2":
        slice_conv1d(mlp.c_fc, neurons, ch)
        slice_conv1d(mlp.c_proj, ch, neurons)
    else:
        slice_linear(mlp.dense_h_to_4h, neurons, ch)
        slice_linear(mlp.dense_4h_to_h, ch, neurons)


def _unshare(child: nn.Module, parent: nn.Module) -> None:
    """Clone any tensor still shared with the parent, so training the child never touches it."""
    shared = {id(t) for t in (*parent.parameters(), *parent.buffers())}
    for module in child.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in shared:
                module._parameters[name] = _param(p.data.clone())
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) in shared:
                module._buffers[name] = b.clone()


def extract(parent: nn.Module, arch: Architecture, ranking: Ranking | None = None,
            space: SearchSpace | None = None) -> nn.Module:
    """A smaller copy of `parent` with the structures of `arch`, chosen by `ranking`
    (prefix order when None). The parent is left unchanged."""
    space = space or SearchSpace.from_config(parent.config)
    space.validate(arch)
    ranking = (ranking or Ranking.identity(space)).check(space)
    family, p = space.family, space.parent
    q_per_group = p["heads"] // p["kv_groups"]

    memo = {id(t): t for t in (*parent.parameters(), *parent.buffers())}
    child = copy.deepcopy(parent, memo)
    ch = as_index(sorted(ranking.channel_order[: arch.hidden]))
    old_layers = family.layers(child)
    kept = []
    for pos, parent_idx in enumerate(arch.layers):
        layer = old_layers[parent_idx]
        q, kv = ranking.layer_heads(parent_idx, arch.heads[pos], arch.kv_groups[pos], q_per_group)
        _slice_attention(family, layer, q, kv, ch, head_dim=p["head_dim"], parent_heads=p["heads"])
        _slice_mlp(family, layer, as_index(sorted(ranking.neuron_order[parent_idx][: arch.mlp[pos]])), ch)
        for norm in family.layer_norms(layer):
            slice_norm(norm, ch)
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = pos
        kept.append(layer)
    family.set_layers(child, kept)
    for emb in family.embeddings(child):
        slice_embedding(emb, ch)
    slice_norm(family.final_norm(child), ch)
    head = child.get_output_embeddings()
    if space.tied_embeddings:
        head.weight = family.embeddings(child)[0].weight
    else:
        slice_linear(head, None, ch)
    head.in_features = arch.hidden
    _unshare(child, parent)
    space.apply_to_config(child.config, arch)
    return child
