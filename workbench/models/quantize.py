"""Weight-only quantization of the decoder's linear layers: int8, int4 (plain and AWQ), fp8.

Which layers: the projections of every decoder layer (fused qkv, o, fused gate/up, down). The
token embeddings, the norms and the LM head stay in the model's dtype, as AWQ / GPTQ / vLLM do
(the LM head's error lands directly on the logits; embeddings are a lookup, not a matmul).
Scales and zeros are stored in the model's dtype (the kernels take them in the activations').

Formats
- int8: symmetric, one scale per output channel (absmax / 127), as vLLM's and gpt-fast's
  weight-only int8. CPU kernel: `torch._weight_int8pack_mm` (int8 weights read as they are,
  the scale applied to the output).
- int4: asymmetric, one scale and zero per group of `group_size` input channels, in the
  tinygemm convention w = (q - 8) * scale + zero, q in 0..15 (gpt-fast, torchao). CPU kernel:
  `torch._weight_int4pack_mm_for_cpu` over the weight packed once by
  `_convert_weight_to_int4pack_for_cpu` (two codes per byte in the kernel's own order).
- int4-awq: int4 whose input channels were scaled by activation-aware factors and whose groups
  were clipped, both searched on calibration activations (workbench.models.awq); the inverse
  factors multiply the activations before the matmul.
- fp8: float8_e4m3fn with one scale per output channel (absmax / 448). No CPU (or pre-Hopper)
  matmul reads fp8 weights, so the weight is dequantized to the activations' dtype at each
  call: it saves memory, not time (the report names the kernel "dequantize").

Kernels and their fallback. torchao (0.18, on torch 2.13) does not pack int4 for CPU any more
(its int4 formats need CUDA or the `mslk` package), and its int8 CPU path dispatches to the
same `_weight_int8pack_mm`; so these modules call torch's kernels directly and need no extra
package. The kernels run where they pay, measured on this project's 2-core CPU (bf16, layers
768 -> 2304 and 2048 -> 768, medians of 50): their time grows linearly with the rows (about
0.045 ms a row for both), while a dense bf16 GEMM is ~0.16 ms at one row and 0.37 at 16. So at
one row int8 and int4 take 0.09-0.10 ms against dense 0.16, at 4 rows they are even, and past
that the layer is cheaper dense over the dequantized weight, which costs ~0.35 ms to form for
int8 and ~2 ms for int4 (unpacking nibbles): the kernel is used up to `kernel_max_rows` (16
for int8, 64 for int4, where the two paths cross). With fp32 activations both kernels are
5-60x slower than dequantizing and a dense fp32 GEMM, so an fp32 model never uses them:
quantization then saves memory, not time. `benchmarks/bench_linear.py` reprints the cross-over
over all of `small`'s projections (bf16, medians of 5): int8 kernel vs dequantize + dense 4.3 vs
16.1 ms at 1 row, 15.3 vs 17.0 at 16, 51.8 vs 39.8 at 64; int4 g64 2.0 vs 170 at 1 row, 45.8 vs
210 at 64, 353 vs 289 at 512. Everything else (more rows, fp32, a shape a kernel
cannot take: int4 with out_features not a multiple of 64 or a group size outside
32/64/128/256; any device but CPU) runs the reference path: dequantize the weight to the
activations' dtype and F.linear. `kernel_name` says whether a layer has a kernel at all;
tests compare every kernel against the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.engine.config import check_quantization

INT8_MAX = 127
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
INT4_GROUP_SIZES_KERNEL = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # activations the CPU kernels are fast for
INT4_KERNEL_BLOCK = 64  # output channels per block of the CPU kernel's packed layout
# The decoder projections that are quantized: (sub-module, attribute) of each layer.
QUANTIZED_PROJECTIONS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"),
                         ("mlp", "gate_up_proj"), ("mlp", "down_proj"))


def quantize_int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> (int8 [out, in], scale [out] in the weight's dtype). With the stored scale s,
    |w - q * s| <= s / 2 for every weight of the row."""
    scale = (weight.float().abs().amax(1) / INT8_MAX).to(weight.dtype)
    q = torch.round(weight.float() / scale.float().clamp_min(1e-12).unsqueeze(1))
    return q.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def check_group_divides(group_size: int, in_features: int, layer: str = "a layer") -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"quantization_group_size: must be an integer >= 1, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"quantization_group_size: {group_size} does not divide the "
                         f"{in_features} input features of {layer}; use a divisor of it "
                         f"(32, 64 or 128 usually are)")


def quantize_int4_weight(weight: torch.Tensor, group_size: int,
                         clip: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[out, in] -> (codes uint8 [out, in] in 0..15, scale, zero [out, in / group_size] in the
    weight's dtype), w ~ (q - 8) * scale + zero. `clip` [out, groups]: the largest |w| kept in
    each group (AWQ's clipping search); weights beyond it are clamped before quantizing."""
    out_f, in_f = weight.shape
    check_group_divides(group_size, in_f)
    w = weight.float().reshape(out_f, in_f // group_size, group_size)
    if clip is not None:
        c = clip.float().unsqueeze(-1)
        w = torch.maximum(torch.minimum(w, c), -c)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-6).to(weight.dtype)
    zero = (lo + 8 * scale.float()).to(weight.dtype)
    # Codes from the stored (rounded) scale and zero, so rounding them costs nothing extra.
    q = torch.round((w - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1) + 8)
    return q.clamp_(0, 15).to(torch.uint8).reshape(out_f, in_f), scale, zero


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    dtype) -> torch.Tensor:
    out_f, in_f = codes.shape
    groups = scale.shape[1]
    w = (codes.float().reshape(out_f, groups, -1) - 8) * scale.float().unsqueeze(-1)
    return (w + zero.float().unsqueeze(-1)).reshape(out_f, in_f).to(dtype)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 [out, in] (in even) -> [out, in / 2], the even column in the low half."""
    return codes[:, ::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def unpack_int4_kernel_layout(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `_convert_weight_to_int4pack_for_cpu` for out_features a multiple of 64:
    per block of 64 output channels and per input channel k, 32 bytes; byte d holds channel d
    (low half) and channel d + 32 (high half). A test checks it against the kernel's packing."""
    out_f, half_in = packed.shape
    blocks = packed.reshape(out_f // INT4_KERNEL_BLOCK, 2 * half_in, INT4_KERNEL_BLOCK // 2)
    low, high = (blocks & 15).transpose(1, 2), (blocks >> 4).transpose(1, 2)
    return torch.cat([low, high], dim=1).reshape(out_f, 2 * half_in)


class QuantizedLinear(nn.Module):
    """Common to the formats: the bias, an optional per-input-channel activation scale (AWQ),
    the kernel-or-reference dispatch and the byte count."""

    kernel_name = "dequantize"
    kernel_max_rows = 0  # more rows than this: dequantize + dense GEMM is faster (measured)

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        # AWQ: x / s per input channel, stored as the multiplier 1 / s.
        self.register_buffer("input_scale", input_scale)

    def dequantized(self, dtype) -> torch.Tensor:  # [out, in] in `dtype`
        raise NotImplementedError

    def _kernel_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            flat = flat * self.input_scale.to(flat.dtype)
        if (self.kernel_name != "dequantize" and flat.device.type == "cpu"
                and flat.dtype in KERNEL_DTYPES and flat.shape[0] <= self.kernel_max_rows):
            out = self._kernel_matmul(flat.contiguous())
        else:
            out = F.linear(flat, self.dequantized(flat.dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def stored_bytes(self) -> int:
        """Every buffer: codes, scales, zeros, AWQ's input scale (the bias is a parameter,
        counted with the model's)."""
        return sum(t.numel() * t.element_size() for t in self.buffers(recurse=False))


class Int8Linear(QuantizedLinear):
    """A weight-only int8 nn.Linear: int8 weight and per-output-channel scale as buffers."""

    kernel_max_rows = 16

    def __init__(self, linear: nn.Linear, kernel: bool = True):
        w = linear.weight.detach()
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        q, scale = quantize_int8_weight(w)
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("scale", scale)
        if kernel and w.device.type == "cpu" and w.dtype in KERNEL_DTYPES:
            self.kernel_name = "int8pack_mm"

    def dequantized(self, dtype) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.scale.to(dtype).unsqueeze(1)

    def _kernel_matmul(self, flat):
        return torch._weight_int8pack_mm(flat, self.weight_int8, self.scale.to(flat.dtype))


class Int4Linear(QuantizedLinear):
    """A weight-only int4 nn.Linear, group-wise scale and zero. Holds either the kernel's packed
    weight (when the CPU kernel takes the shape) or plainly packed nibbles (the reference),
    never both: the bytes are the same."""

    kernel_max_rows = 64

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None, kernel: bool = True,
                 input_scale: torch.Tensor | None = None):
        out_f, in_f = codes.shape
        super().__init__(in_f, out_f, bias, input_scale)
        self.group_size = group_size
        usable = (kernel and codes.device.type == "cpu" and scale.dtype in KERNEL_DTYPES
                  and out_f % INT4_KERNEL_BLOCK == 0 and in_f % 2 == 0
                  and group_size in INT4_GROUP_SIZES_KERNEL)
        if usable:
            self.kernel_name = "int4pack_mm"
            pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu
            self.register_buffer("weight_packed", pack(codes.to(torch.int32).contiguous(), 1))
        else:
            self.register_buffer("weight_nibbles", pack_nibbles(codes).contiguous())
        # [groups, out, 2]: the kernel's layout of scale and zero.
        self.register_buffer("scales_and_zeros",
                             torch.stack([scale, zero], -1).transpose(0, 1).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, kernel: bool = True,
                    input_scale: torch.Tensor | None = None,
                    clip: torch.Tensor | None = None, name: str = "a layer") -> Int4Linear:
        """Quantize `linear`; with AWQ, `input_scale` is 1 / s and the weight is taken times s."""
        check_group_divides(group_size, linear.in_features, name)
        w = linear.weight.detach()
        if input_scale is not None:
            w = (w.float() / input_scale.float()).to(w.dtype)
        codes, scale, zero = quantize_int4_weight(w, group_size, clip)
        return cls(codes, scale, zero, group_size, linear.bias, kernel,
                   None if input_scale is None else input_scale.to(w.dtype))

    def dequantized(self, dtype) -> torch.Tensor:
        return dequantize_int4(self.codes(), self.scales_and_zeros[..., 0].t(),
                               self.scales_and_zeros[..., 1].t(), dtype)

    def codes(self) -> torch.Tensor:
        """The uint8 codes 0..15 [out, in], from whichever layout the layer holds."""
        if self.kernel_name == "int4pack_mm":
            return unpack_int4_kernel_layout(self.weight_packed)
        return unpack_nibbles(self.weight_nibbles)

    def _kernel_matmul(self, flat):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.weight_packed, self.group_size, self.scales_and_zeros.to(flat.dtype))


class Fp8Linear(QuantizedLinear):
    """A weight-only fp8 (e4m3fn) nn.Linear with per-output-channel scales; dequantized per
    call (no kernel here reads fp8 weights)."""

    def __init__(self, linear: nn.Linear):
        w = linear.weight.detach()
        super().__init__(linear.in_features, linear.out_features, linear.bias)
        scale = (w.float().abs().amax(1) / FP8_MAX).clamp_min(1e-12).to(w.dtype)
        q = (w.float() / scale.float().unsqueeze(1)).clamp(-FP8_MAX, FP8_MAX)
        self.register_buffer("weight_fp8", q.to(torch.float8_e4m3fn).contiguous())
        self.register_buffer("scale", scale)

    def dequantized(self, dtype) -> torch.Tensor:
        return (self.weight_fp8.float() * self.scale.float().unsqueeze(1)).to(dtype)


def projections(model: nn.Module):
    """(parent module, attribute, name) of every projection that quantization replaces."""
    for i, layer in enumerate(model.layers):
        for sub, attr in QUANTIZED_PROJECTIONS:
            yield getattr(layer, sub), attr, f"layers.{i}.{sub}.{attr}"


def quantize_model(model: nn.Module, quantization: str, group_size: int = 128,
                   kernel: bool = True, awq: dict | None = None) -> nn.Module:
    """Quantize the decoder layers' projections in place; embeddings and LM head stay.
    `awq`: name -> (input_scale, clip) from workbench.models.awq.search, for "int4-awq"."""
    check_quantization(quantization)
    if quantization == "none":
        return model
    if quantization == "int4-awq" and awq is None:
        raise ValueError("quantization: int4-awq needs calibration (workbench.models.awq); "
                         "LLMEngine.from_pretrained runs it")
    for parent, attr, name in projections(model):
        linear = getattr(parent, attr)
        if quantization == "int8":
            new = Int8Linear(linear, kernel)
        elif quantization == "fp8":
            new = Fp8Linear(linear)
        else:
            input_scale, clip = awq[name] if quantization == "int4-awq" else (None, None)
            new = Int4Linear.from_linear(linear, group_size, kernel, input_scale, clip, name)
        setattr(parent, attr, new)
    model.quantization = quantization
    return model


def kernel_names(model: nn.Module) -> list[str]:
    """The distinct matmul paths of the model's projections ("dense": F.linear; "onednn":
    workbench.models.cpu_linear; the quantized formats' kernels or "dequantize")."""
    return sorted({getattr(getattr(parent, attr), "kernel_name", "dense")
                   for parent, attr, _ in projections(model)})
