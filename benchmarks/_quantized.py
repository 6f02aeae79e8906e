"""Reference rows for benchmarks/recovery.py: the parent, unpruned, quantized by ONNX Runtime.

What a CPU user would do instead of pruning: int8 dynamic quantization (`quantize_dynamic`)
or int4 weight-only quantization of every MatMul (`MatMulNBitsQuantizer`, MatMulNBits
nodes, block 32, symmetric, int8 compute). Speedup is paired with the same parent exported
in fp32 (interleaved bursts, `profiling.timing.time_steps`); quality is measured on the
graph itself, fed each window with an empty KV cache.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from latprune.profiling.devices import Device
from latprune.profiling.export import export_onnx
from latprune.profiling.timing import TimedModel, make_session, time_steps
from latprune.workload import Workload

KINDS = ("int8-dynamic", "int4-weight-only")


class OrtCausalLM(nn.Module):
    """An exported text-generation-with-past graph as a module with `model(input_ids=...).logits`,
    so `compress.quality` can score it like a torch model."""

    def __init__(self, onnx_path: str | Path, device: Device):
        super().__init__()
        self.session = make_session(onnx_path, device)
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        batch, length = input_ids.shape
        feeds = {"input_ids": input_ids.numpy().astype(np.int64),
                 "attention_mask": np.ones((batch, length), dtype=np.int64),
                 "position_ids": np.tile(np.arange(length, dtype=np.int64), (batch, 1))}
        for name, meta in self.inputs.items():
            if name.startswith("past_key_values"):
                feeds[name] = np.zeros((batch, meta.shape[1], 0, meta.shape[3]), dtype=np.float32)
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        logits = self.session.run(["logits"], feeds)[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


def quantize(src: Path, kind: str, out_dir: Path) -> Path:
    """`src` (an fp32 graph) quantized as `kind`, written to `out_dir/model.onnx` (reused when there)."""
    out = out_dir / "model.onnx"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.onnx.partial"
    if kind == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    elif kind == "int4-weight-only":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    else:
        raise ValueError(f"unknown quantization {kind!r}; one of {KINDS}")
    tmp.rename(out)
    return out


def reference_rows(parent: nn.Module, device: Device, workload: Workload, work: Path, quality) -> list[dict]:
    """One row per quantization of `parent`: its paired decode speedup over the fp32 graph and
    `quality(model)` (a function scoring a module against the parent)."""
    fp32 = work / "parent-fp32" / "model.onnx"
    if not fp32.is_file():
        export_onnx(parent, fp32.parent)
    reference = TimedModel(fp32, device, workload)
    rows = []
    for kind in KINDS:
        path = quantize(fp32, kind, work / kind)
        timing = time_steps(TimedModel(path, device, workload), device, reference=reference)
        rows.append({"strategy": kind, "decode_speedup": 1 / timing["decode_ms"].ratio,
                     "prefill_speedup": 1 / timing["prefill_ms"].ratio, "size_mb": path.stat().st_size / 2**20,
                     "fp32_size_mb": fp32.stat().st_size / 2**20, "quality": quality(OrtCausalLM(path, device))})
    return rows
