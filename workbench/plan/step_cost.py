"""Step cost on hardware that is not at hand: the one roofline model every part calls.

A step takes the longer of moving its bytes and doing its FLOPs, at the hardware's peaks
scaled by efficiency factors, plus a fixed per-step overhead (Williams, Waterman, Patterson,
'Roofline', CACM 2009; applied to LLM inference as in Pope et al., 'Efficiently Scaling
Transformer Inference', 2022):

    seconds = overhead_s + max(bytes / (bandwidth x MBU), flops / (peak x MFU))

What a step moves and computes, per GPU of a tensor-parallel group of `tp`:
- weights, read once per step. MoE: only the experts the step's tokens touch. With k of E
  experts routed per token and uniform routing, a layer's expected distinct experts for T
  tokens is E x (1 - (1 - k/E)^T): k at T = 1, all E at large T. The input embedding table
  is not read (a step looks up only its tokens' rows, counted as such); the LM head is read
  in full (for tied embeddings the table IS the LM head).
- K/V: every decode reads its cached context; every prefill token writes its K and V.
- FLOPs: 2 per active (routed) block parameter per token; the LM head's 2 x vocab x hidden
  only for the rows that sample a token (one per decode and one per prefill chunk, as the
  engine and vLLM compute logits); attention 4 x layers x heads x head_dim per query-key pair.
A sliding-window model attends to at most `window` keys per query; from batch sums that cap
is applied as min(pairs, queries x window), an upper bound when contexts are mixed.
Not counted: K/V of the cached prefix read by a later prefill chunk, activations, all-reduce.

The batch is described with the engine's own telemetry fields (workbench.engine.telemetry),
so a step record, a simulator step and a planning question are priced by the same function,
and published measurements can be fitted to the parameters (MBU, MFU, overhead).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from workbench.plan.hardware import Hardware
from workbench.plan.memory import (
    DEFAULT_GROUP_SIZE,
    active_param_count,
    canonical_precision,
    kv_bytes_per_token,
    kv_dtype_for,
    param_count,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_positive

# Per-step fixed cost (scheduling, sampling, kernel launches) on top of the roofline. Zero by
# default because the default MBU below was derived from end-to-end TPOT, which already
# includes it: adding a separate overhead would count it twice. A fit to measurements sets both.
DEFAULT_STEP_OVERHEAD_S = 0.0


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achieved share of peak bandwidth (MBU) and of peak FLOPs (MFU)."""

    memory: float = 0.6
    compute: float = 0.5
    source: str = ("defaults: MBU ~0.6 for decode as reported in Databricks' 'LLM Inference "
                   "Performance Engineering: Best Practices' (2023), measured from end-to-end "
                   "TPOT; MFU 0.5, a conservative figure below the ~0.76 prefill MFU in Pope "
                   "et al., 'Efficiently Scaling Transformer Inference' (2022)")

    def __post_init__(self) -> None:
        for name in ("memory", "compute"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"efficiency.{name}: must be in (0, 1], got {value}")


PEAK = Efficiency(1.0, 1.0, "the pure roofline bound: spec-sheet peaks")
DEFAULT_EFFICIENCY = Efficiency()


def efficiency_from_measurement(bound_s: float, measured_s: float) -> float:
    """Share of the roofline achieved, e.g. engine decode 9.57 ms vs an 8.03 ms bound -> 0.84.

    Returned as measured, not capped: above 1 means the hardware's peak figures are too low
    for the machine that ran it, which the caller must report rather than hide."""
    check_positive(bound_s=bound_s, measured_s=measured_s)
    return bound_s / measured_s


def compute_dtype(precision: str) -> str:
    """Weight-only int8 / int4 dequantize to 16-bit, so their math runs at the bf16 peak."""
    p = canonical_precision(precision)
    return {"fp32": "fp32", "fp16": "fp16", "fp8": "fp8"}.get(p, "bf16")


@dataclass(frozen=True, slots=True)
class Batch:
    """What one step processes, in the engine's StepRecord field names (sums over sequences)."""

    num_prefill_tokens: int = 0
    num_prefill_seqs: int = 0
    prefill_attention: float = 0   # query-key pairs of the prefill chunks (causal)
    num_decode_seqs: int = 0
    decode_context: float = 0      # K/V tokens the decodes attend to, summed
    decode_max_context: int = 0    # unused by the roofline; fitted models read it

    @classmethod
    def decode(cls, seqs: int, context: int) -> Batch:
        """`seqs` sequences each with `context` tokens cached, one new token each."""
        return cls(num_decode_seqs=seqs, decode_context=seqs * context,
                   decode_max_context=context)

    @classmethod
    def prefill(cls, prompt_tokens: int, seqs: int = 1) -> Batch:
        """`seqs` whole prompts of `prompt_tokens` (causal: n(n+1)/2 pairs each)."""
        n = prompt_tokens
        return cls(num_prefill_tokens=n * seqs, num_prefill_seqs=seqs,
                   prefill_attention=seqs * n * (n + 1) / 2)

    @property
    def tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs


@dataclass(frozen=True, slots=True)
class StepCost:
    """One step's terms, per GPU, so a figure can be explained and checked by hand.

    phase and batch name the question when one was asked (workbench.plan.roofline's
    decode_step / prefill_step: "decode" | "prefill" and its sequences); a mixed step leaves
    them empty."""

    tokens: int
    bytes_moved: float
    flops: float
    memory_time_s: float
    compute_time_s: float
    overhead_s: float
    phase: str = ""
    batch: int = 0

    @property
    def time_s(self) -> float:
        return self.overhead_s + max(self.memory_time_s, self.compute_time_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_time_s >= self.compute_time_s else "compute"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s

    def as_dict(self) -> dict:
        return {**asdict(self), "time_s": self.time_s, "bound": self.bound,
                "tokens_per_s": self.tokens_per_s}


def _without_vocab(m: ModelArch) -> ModelArch:
    return replace(m, vocab_size=0)


def _one_expert(m: ModelArch) -> ModelArch:
    return replace(m, num_experts=1, experts_per_token=1)


class StepCostModel:
    """The roofline of one (model, hardware, precision, tp) with its parameters (efficiency,
    overhead). Per-model constants are computed once: the simulator prices millions of steps."""

    def __init__(self, arch: ModelArch, hw: Hardware, precision: str = "bf16",
                 kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency = DEFAULT_EFFICIENCY,
                 overhead_s: float = DEFAULT_STEP_OVERHEAD_S,
                 group_size: int = DEFAULT_GROUP_SIZE):
        if overhead_s < 0:
            raise ValueError(f"overhead_s: must be >= 0, got {overhead_s}")
        p = canonical_precision(precision)
        self.arch, self.hw, self.precision, self.tp = arch, hw, p, tp
        self.kv_dtype = kv_dtype_for(p, kv_dtype)
        self.efficiency, self.overhead_s = efficiency, overhead_s
        total = weight_bytes_per_gpu(arch, p, tp, group_size)
        vocab = total - weight_bytes_per_gpu(_without_vocab(arch), p, tp, group_size)
        # Untied: embedding table + LM head, equal halves; only the head is read in full.
        table = 0.0 if arch.tie_word_embeddings else vocab / 2
        self.embedding_row_bytes = table / arch.vocab_size if arch.vocab_size else 0.0
        if arch.is_moe:
            dense = weight_bytes_per_gpu(_one_expert(arch), p, tp, group_size)
            self.expert_bytes = (total - dense) / (arch.num_experts - 1)
        else:
            self.expert_bytes = 0.0
        self.fixed_bytes = total - table - self.expert_bytes * arch.num_experts
        self.kv_per_token = kv_bytes_per_token(arch, self.kv_dtype, tp)
        head = arch.vocab_size * arch.hidden_size   # the LM head's multiply-adds per row
        block_params = active_param_count(arch) - (param_count(arch)
                                                   - param_count(_without_vocab(arch)))
        self.flops_per_token = 2 * block_params / tp
        self.flops_per_sampled_row = 2 * head / tp
        self.flops_per_pair = 4 * arch.num_layers * arch.num_heads * arch.head_dim / tp
        self.bandwidth = hw.bandwidth_bytes_s * efficiency.memory
        self.peak = hw.peak_flops(compute_dtype(p)) * efficiency.compute

    def experts_touched(self, tokens: float) -> float:
        """Expected distinct experts per layer that `tokens` tokens route to: E(1-(1-k/E)^T)."""
        m = self.arch
        if not m.is_moe:
            return 1.0
        return m.num_experts * (1 - (1 - m.experts_per_token / m.num_experts) ** tokens)

    def _terms(self, prefill_tokens, prefill_seqs, prefill_pairs, decode_seqs, decode_pairs
               ) -> tuple[float, float, float]:
        """(tokens, bytes, FLOPs) of a step: the formulas of the module docstring."""
        m = self.arch
        tokens = prefill_tokens + decode_seqs
        if m.sliding_window:
            decode_pairs = min(decode_pairs, decode_seqs * m.sliding_window)
            prefill_pairs = min(prefill_pairs, prefill_tokens * m.sliding_window)
        moved = (self.fixed_bytes + self.expert_bytes * self.experts_touched(tokens)
                 + self.embedding_row_bytes * tokens
                 + self.kv_per_token * (decode_pairs + prefill_tokens))
        flops = (self.flops_per_token * tokens
                 + self.flops_per_sampled_row * (decode_seqs + prefill_seqs)
                 + self.flops_per_pair * (decode_pairs + prefill_pairs))
        return tokens, moved, flops

    def cost(self, b: Batch) -> StepCost:
        tokens, moved, flops = self._terms(b.num_prefill_tokens, b.num_prefill_seqs,
                                           b.prefill_attention, b.num_decode_seqs,
                                           b.decode_context)
        return StepCost(tokens, moved, flops, moved / self.bandwidth, flops / self.peak,
                        self.overhead_s)

    def seconds(self, r) -> float:
        """Step time of a Batch or a StepRecord (same field names): the simulator's hot path,
        the same terms as cost() without building its result."""
        _, moved, flops = self._terms(r.num_prefill_tokens, r.num_prefill_seqs,
                                      r.prefill_attention, r.num_decode_seqs, r.decode_context)
        return self.overhead_s + max(moved / self.bandwidth, flops / self.peak)


def step_cost(arch: ModelArch, hw: Hardware, batch: Batch, precision: str = "bf16",
              kv_dtype: str = "auto", tp: int = 1, efficiency: Efficiency = DEFAULT_EFFICIENCY,
              overhead_s: float = DEFAULT_STEP_OVERHEAD_S,
              group_size: int = DEFAULT_GROUP_SIZE) -> StepCost:
    """One step's cost: (arch, hardware, precision, tp, efficiency, overhead) x a batch."""
    return StepCostModel(arch, hw, precision, kv_dtype, tp, efficiency, overhead_s,
                         group_size).cost(batch)
