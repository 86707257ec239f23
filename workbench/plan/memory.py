"""Analytic memory: weight bytes by precision and KV bytes per token and per request.

Everything is counted in bytes; outputs named `*_gb` are decimal GB (1e9 bytes). GPU memory
sizes come from workbench.plan.hardware in bytes (a GPU's "80 GB" is ~80 GiB, not 80e9):
compare bytes with bytes, never a spec sheet's "GB" with 1e9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

from workbench.engine.kv_dtype import kv_bytes_per_token as engine_kv_bytes_per_token
from workbench.plan.models_catalog import ModelArch

# Storage bits of one linear-layer weight, before per-channel / per-group scale overhead.
WEIGHT_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4}
KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
              "fp8_e4m3": "fp8", "w8a16": "int8", "w4a16": "int4", "awq": "int4",
              "gptq": "int4", "int4-awq": "int4"}
SCALE_BYTES = 2  # quantization scales and zeros are bf16, as in AWQ / GPTQ / gpt-fast
# INT4 weights per scale/zero group: 128, the default of AWQ, GPTQ and vLLM's checkpoints.
DEFAULT_GROUP_SIZE = 128


def canonical_precision(precision: str, field: str = "precision",
                        table: dict | None = None) -> str:
    table = WEIGHT_BITS if table is None else table
    p = _SPELLINGS.get(str(precision).lower(), str(precision).lower())
    if p not in table:
        raise ValueError(f"{field}: unknown {precision!r}; allowed: {', '.join(table)}")
    return p


def bits_per_weight(precision: str, group_size: int = DEFAULT_GROUP_SIZE,
                    in_features: int | None = None) -> float:
    """Storage bits per linear weight including scale overhead.

    int4: a bf16 scale and a bf16 zero per group of g weights -> 4 + 32/g (g=128: 4.25).
    int8: one bf16 scale per output channel -> 8 + 16/in_features (8 when not given).
    """
    p = canonical_precision(precision)
    if p == "int4":
        check_group_size(group_size)
        return 4 + 8 * 2 * SCALE_BYTES / group_size
    if p == "int8" and in_features:
        return 8 + 8 * SCALE_BYTES / in_features
    return float(WEIGHT_BITS[p])


def check_group_size(group_size) -> None:
    """INT4 groups hold a positive whole number of weights (AWQ / GPTQ use 32, 64 or 128)."""
    if isinstance(group_size, bool) or not isinstance(group_size, Integral) or group_size < 1:
        raise ValueError(f"group_size: must be a whole number of weights >= 1 (AWQ / GPTQ use "
                         f"32, 64 or 128), got {group_size!r}")


def _linear_shapes(m: ModelArch) -> list[tuple[int, int, int]]:
    """(out_features, in_features, count) of every transformer-block linear layer."""
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    h, inter, L = m.hidden_size, m.intermediate_size, m.num_layers
    mlp = L * m.num_experts
    return [(q, h, L), (kv, h, 2 * L), (h, q, L), (inter, h, 2 * mlp), (h, inter, mlp)]


def _other_params(m: ModelArch) -> dict[str, int]:
    """Parameters that stay in 16-bit (or fp32) under weight quantization."""
    h, L = m.hidden_size, m.num_layers
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    return {
        "embeddings": m.vocab_size * h,
        "lm_head": 0 if m.tie_word_embeddings else m.vocab_size * h,  # tied: counted once
        "norms": (2 * L + 1) * h,
        "biases": L * ((q + 2 * kv) * m.qkv_bias + h * m.o_bias),
        "router": L * h * m.num_experts if m.is_moe else 0,
    }


def param_count(m: ModelArch) -> int:
    """Total parameters (every expert of an MoE)."""
    return sum(o * i * n for o, i, n in _linear_shapes(m)) + sum(_other_params(m).values())


def active_param_count(m: ModelArch) -> int:
    """Parameters one token touches: only experts_per_token experts of an MoE layer."""
    idle = m.num_experts - m.experts_per_token
    per_expert = 3 * m.hidden_size * m.intermediate_size
    return param_count(m) - m.num_layers * idle * per_expert


def weight_bytes(m: ModelArch, precision: str = "bf16",
                 group_size: int = DEFAULT_GROUP_SIZE, unquantized: str | None = None) -> int:
    """Bytes of all weights: block linears at `precision`, the rest in `unquantized`.

    Embeddings, lm_head, norms, biases and routers are kept unquantized, as AWQ / GPTQ / vLLM do.
    `unquantized` (default: fp32 for fp32, else bf16) is also the dtype of the quantization
    scales and zeros: int8 and fp8 one per output channel, int4 a scale and a zero per group
    (the workbench engine stores them so; workbench.quant_report checks the agreement).
    """
    p = canonical_precision(precision)
    if p == "int4":
        check_group_size(group_size)
    base_name = unquantized or ("fp32" if p == "fp32" else "bf16")
    base = WEIGHT_BITS[canonical_precision(base_name, "unquantized")] // 8
    total = sum(_other_params(m).values()) * base
    for out_f, in_f, count in _linear_shapes(m):
        if p == "int4":
            groups = out_f * math.ceil(in_f / group_size)
            total += count * (out_f * in_f // 2 + groups * 2 * base)
        elif p in ("int8", "fp8"):
            total += count * (out_f * in_f + out_f * base)
        else:
            total += count * out_f * in_f * WEIGHT_BITS[p] // 8
    return total


def weight_bytes_per_gpu(m: ModelArch, precision: str = "bf16", tp: int = 1,
                         group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """Tensor parallelism shards everything but the norms, which every GPU keeps."""
    _check_tp(m, tp)
    p = canonical_precision(precision)
    norms = _other_params(m)["norms"] * (4 if p == "fp32" else 2)
    return (weight_bytes(m, p, group_size) - norms) / tp + norms


def _check_tp(m: ModelArch, tp: int) -> None:
    # vLLM and TensorRT-LLM split attention heads evenly across GPUs.
    if tp < 1 or m.num_heads % tp:
        raise ValueError(f"tp: must be >= 1 and divide {m.name}'s {m.num_heads} attention "
                         f"heads, got {tp}")


def kv_dtype_for(precision: str, kv_dtype: str = "auto") -> str:
    """'auto' = the activations' dtype: fp32 for fp32 weights, else 16-bit."""
    if kv_dtype == "auto":
        p = canonical_precision(precision)
        return "fp32" if p == "fp32" else ("fp16" if p == "fp16" else "bf16")
    return canonical_precision(kv_dtype, "kv_dtype", KV_BYTES)


def kv_bytes_per_token(m: ModelArch, kv_dtype: str = "fp16", tp: int = 1) -> int:
    """2 (K and V) x layers x KV heads x head dim x bytes, on one GPU of a TP group: the
    engine's formula (workbench.engine.kv_dtype), with no per-token scales.

    fp8 is the engine's fp8_e4m3 byte for byte (scales per layer and head, as vLLM's per-tensor
    k/v scales). int8 is priced as the GPU frameworks store it, one byte per value under a
    per-tensor scale (TensorRT-LLM's INT8 KV cache): the planner sizes GPU deployments. The
    engine's int8 adds a per-token, per-head scale in the model dtype instead (no calibration
    step): 2 more bytes per head per token in 16-bit, ~3% of a 64-dim head's bytes.
    With tp > KV heads each GPU still holds one KV head (they are replicated, not split).
    """
    _check_tp(m, tp)
    heads = math.ceil(m.num_kv_heads / tp)
    value_bytes = KV_BYTES[canonical_precision(kv_dtype, "kv_dtype", KV_BYTES)]
    return engine_kv_bytes_per_token(m.num_layers, heads, m.head_dim, value_bytes)


def kv_tokens_held(m: ModelArch, context: int) -> int:
    """A sliding-window model keeps only the last `window` tokens' K and V."""
    return min(context, m.sliding_window) if m.sliding_window else context


@dataclass(frozen=True, slots=True)
class KVEstimate:
    model: str
    attention_kind: str       # MHA | GQA | MQA: says which kind of model the figure fits
    num_heads: int
    num_kv_heads: int
    kv_dtype: str
    context: int
    tokens_held: int
    bytes_per_token: int
    bytes_per_request: int
    mha_bytes_per_request: int  # the same model with one KV head per query head
    tp: int = 1                 # bytes_per_* are per GPU of a group of tp GPUs

    @property
    def bytes_per_request_replica(self) -> int:
        """The whole tensor-parallel group's KV bytes for one request: per GPU x tp (KV heads
        replicated when tp exceeds them count on every GPU that holds them)."""
        return self.bytes_per_request * self.tp

    @property
    def note(self) -> str:
        ratio = self.mha_bytes_per_request / self.bytes_per_request
        if self.attention_kind == "MHA":
            return f"MHA: every one of the {self.num_heads} query heads has its own K and V"
        return (f"{self.attention_kind}: {self.num_kv_heads} KV heads shared by "
                f"{self.num_heads} query heads; an MHA model of this shape needs {ratio:.0f}x "
                f"({self.mha_bytes_per_request / 1e9:.2f} GB)")


def kv_estimate(m: ModelArch, context: int, kv_dtype: str = "fp16", tp: int = 1) -> KVEstimate:
    """KV bytes for one request of `context` tokens (per GPU when tp > 1)."""
    if context < 0:
        raise ValueError(f"context: must be >= 0, got {context}")
    held = kv_tokens_held(m, context)
    per_token = kv_bytes_per_token(m, kv_dtype, tp)
    mha = kv_bytes_per_token(m.with_kv_heads(m.num_heads), kv_dtype, tp)
    return KVEstimate(m.name, m.attention_kind, m.num_heads, m.num_kv_heads,
                      canonical_precision(kv_dtype, "kv_dtype", KV_BYTES), context, held,
                      per_token, per_token * held, mha * held, tp)
