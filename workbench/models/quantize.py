"""Weight-only quantization of the decoder's linear layers (issue 13, first increment: int8).

int8: symmetric, one scale per output channel (absmax / 127, computed in fp32, stored in the
model's dtype), as vLLM's and gpt-fast's weight-only int8. The projections of every decoder
layer (fused qkv, o, fused gate/up, down) are quantized; the token embeddings, the final norm
and the LM head stay in the model's dtype (the LM head's error lands directly on the logits,
and embeddings are a lookup, not a matmul: quantizing them saves memory but no bandwidth that
matters at these sizes).

Matmul: on CPU, `torch._weight_int8pack_mm` (the kernel torchao's int8 weight-only path
dispatches to on CPU: int8 weights read as-is, scales applied to the output). It needs no
extra package, so torchao is not a dependency for int8. Elsewhere (or with `kernel=False`)
the reference path dequantizes the weight to the activation dtype and calls F.linear; tests
compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.engine.config import check_quantization

INT8_MAX = 127


def quantize_int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (int8 [out, in], scale [out] in the weight's dtype). With the stored scale s,
    |w - q * s| <= s / 2 for every weight of the row."""
    scale = (weight.float().abs().amax(1) / INT8_MAX).to(weight.dtype)
    q = torch.round(weight.float() / scale.float().clamp_min(1e-12).unsqueeze(1))
    return q.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A weight-only int8 nn.Linear: int8 weight and per-output-channel scale as buffers."""

    def __init__(self, linear: nn.Linear, kernel: bool = True):
        super().__init__()
        q, scale = quantize_int8_weight(linear.weight.detach())
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel

    def dequantized(self, dtype) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.scale.to(dtype).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.kernel and flat.device.type == "cpu":
            out = torch._weight_int8pack_mm(flat.contiguous(), self.weight_int8,
                                            self.scale.to(flat.dtype))
        else:
            out = F.linear(flat, self.dequantized(flat.dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def stored_bytes(self) -> int:
        """The int8 weight and its scales (the bias is a parameter, counted with the rest)."""
        return sum(t.numel() * t.element_size() for t in (self.weight_int8, self.scale))


def quantize_model(model: nn.Module, quantization: str, kernel: bool = True) -> nn.Module:
    """Quantize the decoder layers' projections in place; embeddings and LM head stay."""
    check_quantization(quantization)
    if quantization == "none":
        return model
    for layer in model.layers:
        for parent, name in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                             (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")):
            setattr(parent, name, Int8Linear(getattr(parent, name), kernel))
    model.quantization = quantization
    return model
