"""Step cost on hardware that is not at hand: the one step-time model every part calls.

A step of a continuous-batching engine runs the linear layers once over all its tokens, then
attention, then (tensor parallel) two all-reduces per layer. Each part is priced by its own
bound, at the hardware's peaks scaled by achieved efficiencies (Williams, Waterman, Patterson,
'Roofline', CACM 2009; applied to LLM inference as in Pope et al., 'Efficiently Scaling
Transformer Inference', 2022), plus the engine's fixed and per-sequence costs:

    seconds = overhead + (per_seq + stream_per_seq) x seqs
            + max(weight bytes / (bandwidth x MBU), linear FLOPs / (peak x MFU(tokens)))
            + KV bytes / (bandwidth x attention MBU)
            + prefill attention FLOPs / (peak x attention MFU)
            + all-reduce (tp > 1): 2 x layers x (latency + bytes x 2(tp-1)/tp / link bandwidth)

MFU(tokens) = MFU x tokens / (tokens + compute_half_tokens): a matrix multiply over few rows
uses the tensor cores poorly, so the linear layers' compute time is a floor plus a slope in
tokens, and a step grows with the batch well before the compute roofline (vLLM's decode step
on Llama-3.1-8B grows ~7x from 1 to 256 concurrent requests). Prefill chunks ride in the same
step as the decodes (chunked prefill, as vLLM schedules them), so a prompt does not pay for a
separate read of the weights. The parameters (MBU, MFU, compute_half_tokens, attention
efficiencies, overhead, per_seq, all-reduce latency, link efficiency, and the client's HTTP +
tokenization latency added to TTFT) are fitted per GPU class to published vLLM measurements
(workbench.plan.step_params; the dataset and its sources in workbench/plan/published/), or
given by the user, or calibrated from a `workbench fit` of the user's own engine.

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
- all-reduce: each of the 2 x layers all-reduces carries tokens x hidden activations at 16
  bits over the GPU link (ring: 2(tp-1)/tp of the bytes per GPU, at half the bidirectional
  figure the catalog lists).
A sliding-window model attends to at most `window` keys per query; from batch sums that cap
is applied as min(pairs, queries x window), an upper bound when contexts are mixed.
Not counted: K/V of the cached prefix read by a later prefill chunk, activations.

The batch is described with the engine's own telemetry fields (workbench.engine.telemetry),
so a step record, a simulator step and a planning question are priced by the same function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

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


@dataclass(frozen=True, slots=True)
class Efficiency:
    """The step model's parameters: achieved shares of the peaks and the engine's own costs.

    memory / compute: MBU of the weight reads and peak MFU of the linear layers.
    compute_half_tokens: tokens in a step at which the linear layers reach half that MFU.
    attention_memory / attention_compute: MBU of attention's K/V traffic (decode attention is
      bandwidth-bound) and MFU of prefill attention's FLOPs (None = memory / compute).
    overhead_s / per_seq_s: fixed cost per step and per sequence in it (scheduling, sampling,
      kernel launches).
    stream_per_seq_s: what serving over HTTP adds per sequence per step (detokenizing and
      streaming each new token); an offline batch (LLM.generate) does not pay it.
    allreduce_latency_s / link: per all-reduce fixed cost and achieved share of the link.
    client_s: HTTP + tokenization seen by a client before its first token (added to TTFT,
      not to steps).
    The pure roofline (PEAK) is 1, 1 and zeros; fitted values: workbench.plan.step_params."""

    memory: float = 0.6
    compute: float = 0.5
    source: str = ("defaults: MBU ~0.6 for decode as reported in Databricks' 'LLM Inference "
                   "Performance Engineering: Best Practices' (2023), measured from end-to-end "
                   "TPOT; MFU 0.5, a conservative figure below the ~0.76 prefill MFU in Pope "
                   "et al., 'Efficiently Scaling Transformer Inference' (2022)")
    compute_half_tokens: float = 0.0
    attention_memory: float | None = None
    attention_compute: float | None = None
    overhead_s: float = 0.0
    per_seq_s: float = 0.0
    stream_per_seq_s: float = 0.0
    allreduce_latency_s: float = 0.0
    link: float = 1.0
    client_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("memory", "compute", "attention_memory", "attention_compute", "link"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"efficiency.{name}: must be in (0, 1], got {value}")
        for name in ("compute_half_tokens", "overhead_s", "per_seq_s", "stream_per_seq_s",
                     "allreduce_latency_s", "client_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"efficiency.{name}: must be >= 0, got {getattr(self, name)}")

    @property
    def attention_mbu(self) -> float:
        return self.attention_memory or self.memory

    @property
    def attention_mfu(self) -> float:
        return self.attention_compute or self.compute

    def as_dict(self) -> dict:
        return asdict(self)


PEAK = Efficiency(1.0, 1.0, "the pure roofline bound: spec-sheet peaks")
# Literature figures, for callers that want a model not fitted to any measurement.
LITERATURE_EFFICIENCY = Efficiency()


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


def peak_flops_for(hw: Hardware, precision: str) -> float:
    """The peak the linear layers run at: fp8 weights on a chip without fp8 tensor cores
    (A100) are dequantized to bf16 (weight-only, as vLLM's Marlin fp8 kernels do)."""
    dtype = compute_dtype(precision)
    if dtype == "fp8" and not hw.peak_tflops.get("fp8"):
        dtype = "bf16"
    return hw.peak_flops(dtype)


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

    memory_time_s / compute_time_s: the linear layers' two bounds (the step pays the larger);
    attention_time_s: K/V traffic plus attention FLOPs; comm_time_s: tensor-parallel
    all-reduces; overhead_s: fixed plus per-sequence engine cost. phase and batch name the
    question when one was asked (workbench.plan.roofline's decode_step / prefill_step)."""

    tokens: int
    bytes_moved: float
    flops: float
    memory_time_s: float
    compute_time_s: float
    overhead_s: float
    attention_memory_s: float = 0.0
    attention_compute_s: float = 0.0
    comm_time_s: float = 0.0
    phase: str = ""
    batch: int = 0

    @property
    def attention_time_s(self) -> float:
        return self.attention_memory_s + self.attention_compute_s

    @property
    def time_s(self) -> float:
        return (self.overhead_s + max(self.memory_time_s, self.compute_time_s)
                + self.attention_time_s + self.comm_time_s)

    @property
    def bound(self) -> str:
        """What the step's time mostly waits on: bytes ("memory") or FLOPs ("compute")."""
        moving = self.memory_time_s + self.attention_memory_s
        computing = self.compute_time_s + self.attention_compute_s
        return "memory" if moving >= computing else "compute"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time_s

    def as_dict(self) -> dict:
        return {**asdict(self), "time_s": self.time_s, "bound": self.bound,
                "attention_time_s": self.attention_time_s, "tokens_per_s": self.tokens_per_s}


def _without_vocab(m: ModelArch) -> ModelArch:
    return replace(m, vocab_size=0)


def _one_expert(m: ModelArch) -> ModelArch:
    return replace(m, num_experts=1, experts_per_token=1)


ACTIVATION_BYTES = 2  # all-reduced activations travel at 16 bits


@dataclass(frozen=True, slots=True)
class StepWork:
    """What a step (or an array of steps: numpy arrays in every field) moves and computes,
    before any efficiency: the input of `StepCostModel.time_of`."""

    tokens: object
    seqs: object
    weight_bytes: object
    kv_bytes: object
    linear_flops: object
    attention_flops: object         # prefill attention (compute-bound)
    decode_attention_flops: object  # decode attention (bandwidth-bound: not priced)
    allreduce_bytes: object


class StepCostModel:
    """The step-time model of one (model, hardware, precision, tp) with its parameters.
    Per-model constants are computed once: the simulator prices millions of steps.

    efficiency None: the parameters fitted for `hw` to published measurements
    (workbench.plan.step_params.default_efficiency). overhead_s, when given, replaces the
    efficiency's fixed per-step cost."""

    def __init__(self, arch: ModelArch, hw: Hardware, precision: str = "bf16",
                 kv_dtype: str = "auto", tp: int = 1,
                 efficiency: Efficiency | None = None,
                 overhead_s: float | None = None,
                 group_size: int = DEFAULT_GROUP_SIZE):
        if efficiency is None:
            from workbench.plan.step_params import default_efficiency

            efficiency = default_efficiency(hw)
        if overhead_s is not None:
            if overhead_s < 0:
                raise ValueError(f"overhead_s: must be >= 0, got {overhead_s}")
            efficiency = replace(efficiency, overhead_s=overhead_s)
        p = canonical_precision(precision)
        self.arch, self.hw, self.precision, self.tp = arch, hw, p, tp
        self.kv_dtype = kv_dtype_for(p, kv_dtype)
        self.efficiency, self.overhead_s = efficiency, efficiency.overhead_s
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
        self.allreduce_bytes_per_token = (arch.hidden_size * ACTIVATION_BYTES
                                          if tp > 1 else 0.0)
        self.num_allreduces = 2 * arch.num_layers if tp > 1 else 0
        self.bandwidth_peak = hw.bandwidth_bytes_s
        self.peak_flops = peak_flops_for(hw, p)
        # Ring all-reduce: each GPU sends and receives 2(tp-1)/tp of the bytes, one direction
        # at a time: half the bidirectional figure the catalog lists.
        link = hw.interconnect_gb_s * 1e9 / 2
        self.link_bytes_s = link / (2 * (tp - 1) / tp) if tp > 1 and link else float("inf")
        self.bandwidth = self.bandwidth_peak * efficiency.memory
        self.peak = self.peak_flops * efficiency.compute

    def experts_touched(self, tokens):
        """Expected distinct experts per layer that `tokens` tokens route to: E(1-(1-k/E)^T)."""
        m = self.arch
        if not m.is_moe:
            return 1.0
        return m.num_experts * (1 - (1 - m.experts_per_token / m.num_experts) ** tokens)

    def work(self, prefill_tokens, prefill_seqs, prefill_pairs, decode_seqs, decode_pairs
             ) -> StepWork:
        """A step's bytes and FLOPs (the formulas of the module docstring); numbers or numpy
        arrays alike."""
        m = self.arch
        tokens = prefill_tokens + decode_seqs
        if m.sliding_window:
            decode_pairs = np.minimum(decode_pairs, decode_seqs * m.sliding_window)
            prefill_pairs = np.minimum(prefill_pairs, prefill_tokens * m.sliding_window)
        return StepWork(
            tokens=tokens, seqs=prefill_seqs + decode_seqs,
            weight_bytes=(self.fixed_bytes + self.expert_bytes * self.experts_touched(tokens)
                          + self.embedding_row_bytes * tokens),
            kv_bytes=self.kv_per_token * (decode_pairs + prefill_tokens),
            linear_flops=(self.flops_per_token * tokens
                          + self.flops_per_sampled_row * (decode_seqs + prefill_seqs)),
            # Decode attention is bandwidth-bound (its K/V reads are priced); its FLOPs are
            # counted in the totals but priced only for prefill, where they bind.
            attention_flops=self.flops_per_pair * prefill_pairs,
            decode_attention_flops=self.flops_per_pair * decode_pairs,
            allreduce_bytes=self.allreduce_bytes_per_token * tokens)

    def terms(self, w: StepWork, e: Efficiency | None = None) -> tuple:
        """(memory, compute, attention memory, attention compute, comm, overhead) seconds."""
        e = e or self.efficiency
        tokens = np.maximum(w.tokens, 1)
        memory = w.weight_bytes / (self.bandwidth_peak * e.memory)
        compute = (w.linear_flops * (1 + e.compute_half_tokens / tokens)
                   / (self.peak_flops * e.compute))
        attn_memory = w.kv_bytes / (self.bandwidth_peak * e.attention_mbu)
        attn_compute = w.attention_flops / (self.peak_flops * e.attention_mfu)
        comm = self.num_allreduces * e.allreduce_latency_s + (
            w.allreduce_bytes * self.num_allreduces / (self.link_bytes_s * e.link))
        overhead = e.overhead_s + (e.per_seq_s + e.stream_per_seq_s) * w.seqs
        return memory, compute, attn_memory, attn_compute, comm, overhead

    def time_of(self, w: StepWork, e: Efficiency | None = None):
        """Seconds of a step (or an array of steps) from its work: the one formula."""
        memory, compute, attn_memory, attn_compute, comm, overhead = self.terms(w, e)
        return overhead + np.maximum(memory, compute) + attn_memory + attn_compute + comm

    def _work_of(self, r) -> StepWork:
        return self.work(r.num_prefill_tokens, r.num_prefill_seqs, r.prefill_attention,
                         r.num_decode_seqs, r.decode_context)

    def cost(self, b: Batch) -> StepCost:
        w = self._work_of(b)
        memory, compute, attn_memory, attn_compute, comm, overhead = self.terms(w)
        return StepCost(int(w.tokens), float(w.weight_bytes + w.kv_bytes),
                        float(w.linear_flops + w.attention_flops + w.decode_attention_flops),
                        float(memory),
                        float(compute), float(overhead), float(attn_memory),
                        float(attn_compute), float(comm))

    def seconds(self, r) -> float:
        """Step time of a Batch or a StepRecord (same field names): the simulator's hot path."""
        return float(self.time_of(self._work_of(r)))


def step_cost(arch: ModelArch, hw: Hardware, batch: Batch, precision: str = "bf16",
              kv_dtype: str = "auto", tp: int = 1, efficiency: Efficiency | None = None,
              overhead_s: float | None = None,
              group_size: int = DEFAULT_GROUP_SIZE) -> StepCost:
    """One step's cost: (arch, hardware, precision, tp, efficiency, overhead) x a batch."""
    return StepCostModel(arch, hw, precision, kv_dtype, tp, efficiency, overhead_s,
                         group_size).cost(batch)
