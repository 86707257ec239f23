"""fp32 projections on CPU through oneDNN, with the weight handed to it once in its own format.

Why: the engine's step time is its linear layers (the step profiler: 62-93% of a decode or mixed
step on `small`), and for fp32 aten's F.linear calls MKL's sgemm, which at decode's few rows
reads the weights at about half the machine's read bandwidth. oneDNN's inner product
(`torch.ops.mkldnn._linear_pointwise`, what torch.compile's CPU backend emits for a linear)
over a weight converted once with `to_mkldnn()` was measured on this project's 2-core CPU
(the 32 projections of `small`, 201 MB, medians of 7): 1.8x faster at one row (8.1 vs 14.6
ms, ~25 GB/s), 2.1x at 4, 1.5x at 16, 1.3x at 64, 1.1x at 256 and 1.07x at 2,048 rows, with
results equal to F.linear's on those layers. Reordering the weight once into oneDNN's blocked
layout for a batch of 64 rows (`torch.ops.mkldnn._reorder_linear_weight`, what torch.compile's
freezing pass does for bf16) instead of the plain `to_mkldnn()` layout saves the per-call
reorder (`benchmarks/bench_linear.py`, same layers, medians of 5 interleaved passes): 1.47x
faster at 4 rows (10.2 vs 15.0 ms), 1.47x at 16 (14.5 vs 21.2), 1.15x at 64, 1.03x at 512, 4%
slower at one row (10.8 vs 10.4).
For bf16 / fp16 aten already calls oneDNN (same speed measured), so only fp32 models are
converted.

`pack_linears` swaps the decoder projections and the LM head (not a tied one: that would store
the embedding twice) of a CPU fp32 model for `OneDnnLinear` in place; quantized layers stay as
they are. LLMEngine.from_pretrained applies it unless `EngineConfig(onednn_linear=False)`.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.models.quantize import projections

REORDER_ROWS = 64  # the batch the blocked layout is chosen for: decode batches and chunks


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, op) for op in ("_linear_pointwise", "_reorder_linear_weight"))


class OneDnnLinear(nn.Module):
    """An nn.Linear whose weight lives in oneDNN's format (an mkldnn tensor buffer)."""

    kernel_name = "onednn"

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_onednn", torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach(), REORDER_ROWS))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight_onednn, self.bias, "none",
                                                  [], "")

    def stored_bytes(self) -> int:
        """The weight (the bias is a parameter, counted with the model's)."""
        return self.in_features * self.out_features * 4

    def dense_weight(self) -> torch.Tensor:
        return self.weight_onednn.to_dense()


def pack_linears(model: nn.Module) -> int:
    """Swap `model`'s plain fp32 CPU projections (and an untied LM head) for OneDnnLinear in
    place; return how many were swapped (0 when oneDNN is missing or nothing qualifies)."""
    if not onednn_available():
        return 0
    targets = [(parent, attr) for parent, attr, _ in projections(model)]
    if not model.config.tie_word_embeddings:
        targets.append((model, "lm_head"))
    swapped = 0
    for parent, attr in targets:
        layer = getattr(parent, attr)
        if (type(layer) is nn.Linear and layer.weight.dtype == torch.float32
                and layer.weight.device.type == "cpu"):
            setattr(parent, attr, OneDnnLinear(layer))
            swapped += 1
    return swapped
