"""Roofline step times, pinned with spec-sheet numbers."""

from __future__ import annotations

import pytest

from workbench.plan.budget import max_concurrent_seqs
from workbench.plan.hardware import get_hardware
from workbench.plan.memory import active_param_count, param_count, weight_bytes
from workbench.plan.models_catalog import get_model
from workbench.plan.roofline import (
    PEAK,
    Efficiency,
    critical_batch,
    decode_step,
    decode_throughput_bound,
    efficiency_from_measurement,
    prefill_step,
)

H100_BW = 3.35e12        # H100 SXM datasheet: 3.35 TB/s HBM3
H100_BF16 = 989.4e12     # dense BF16 tensor peak (1,979 with sparsity, halved)


def test_h100_decode_bound_llama2_7b_bf16_is_about_4_ms():
    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    step = decode_step(m, h100, batch=1, context=0, precision="bf16", efficiency=PEAK)
    # 6.74B params x 2 bytes read once per token at 3.35 TB/s, less the 32,000 x 4,096
    # embedding table of which a step reads only its token's row.
    assert step.time_s == pytest.approx((6.74e9 - 32000 * 4096 + 4096) * 2 / H100_BW,
                                        rel=0.002)
    assert round(step.time_s * 1e3) == 4
    assert step.bound == "memory"


def test_decode_reads_kv_per_sequence_and_efficiency_scales_time():
    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    base = decode_step(m, h100, 8, 0, efficiency=PEAK)
    with_kv = decode_step(m, h100, 8, 1000, efficiency=PEAK)
    kv = 8 * 1000 * 2 * 32 * 32 * 128 * 2
    assert with_kv.bytes_moved - base.bytes_moved == kv
    slow = decode_step(m, h100, 8, 1000, efficiency=Efficiency(0.5, 0.5))
    assert slow.time_s == pytest.approx(2 * with_kv.time_s)


def test_critical_batch_is_the_ridge_point_for_bf16():
    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    # 2 FLOPs and 2 bytes per parameter: compute-bound once batch > peak / bandwidth (~295).
    b = critical_batch(m, h100, context=0)
    assert b == pytest.approx(H100_BF16 / H100_BW, abs=2)
    assert decode_step(m, h100, b - 1, 0, efficiency=PEAK).bound == "memory"
    assert decode_step(m, h100, b, 0, efficiency=PEAK).bound == "compute"
    # An MHA model with long contexts reads as much KV as it computes on: never compute-bound.
    assert critical_batch(m, h100, context=4096) is None


def test_prefill_is_compute_bound_with_two_flops_per_param_per_token():
    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    step = prefill_step(m, h100, prompt_tokens=2048, efficiency=PEAK)
    attn = 4 * 32 * 32 * 128 * 2048 * 2049 / 2   # causal: query i attends to i keys
    vocab = 32000 * 4096                          # embedding table = LM head (untied)
    # The lookup is no matmul; the LM head runs once, for the one row that samples.
    blocks = 2 * (param_count(m) - 2 * vocab) * 2048
    assert step.flops == pytest.approx(blocks + 2 * vocab + attn)
    assert step.bound == "compute"
    # Linear layers and attention at the FLOP peak, plus writing the prompt's K/V at the
    # bandwidth peak (the attention kernel's own traffic).
    kv_written = 2048 * 2 * 32 * 32 * 128 * 2
    assert step.time_s == pytest.approx(step.flops / H100_BF16 + kv_written / 3.35e12)


def test_moe_decode_reads_only_the_routed_experts_at_batch_1():
    m, h100 = get_model("mixtral-8x7b"), get_hardware("h100-sxm")
    one = decode_step(m, h100, 1, 0, efficiency=PEAK)
    table = 2 * 32000 * 4096   # the embedding table: only looked-up rows are read
    assert one.bytes_moved == pytest.approx(2 * active_param_count(m) - table, rel=0.001)
    big = decode_step(m, h100, 256, 0, efficiency=PEAK)   # every expert gets hit
    assert big.bytes_moved == pytest.approx(weight_bytes(m, "bf16") - table, rel=0.001)


def test_int4_decode_is_faster_and_throughput_ceiling_uses_the_memory_budget():
    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    bf16 = decode_step(m, h100, 1, 0, "bf16", efficiency=PEAK)
    int4 = decode_step(m, h100, 1, 0, "int4", efficiency=PEAK)
    assert 3 < bf16.time_s / int4.time_s < 4
    ceiling = decode_throughput_bound(m, h100, context=4096)
    assert ceiling.batch == max_concurrent_seqs(m, h100, "bf16", 4096)
    # Every sequence's 4,096-token KV is read each step, beside the weights.
    kv = 2 * 32 * 32 * 128 * 2 * 4096
    read = weight_bytes(m, "bf16") - 2 * 32000 * 4096 * (1 - ceiling.batch / 32000)
    step_s = (read + ceiling.batch * kv) / H100_BW
    assert ceiling.tokens_per_s == pytest.approx(ceiling.batch / step_s)


def test_efficiency_from_engine_measurement():
    # An engine measured at 9.57 ms/token against an 8.03 ms bandwidth bound (an earlier bench).
    assert efficiency_from_measurement(8.03e-3, 9.57e-3) == pytest.approx(0.839, abs=1e-3)
    # Faster than the bound: the raw figure comes back (the peaks are wrong), not a capped 1.
    assert efficiency_from_measurement(2.0, 1.0) == 2.0
    with pytest.raises(ValueError, match="efficiency.memory"):
        Efficiency(memory=1.5)
    with pytest.raises(ValueError, match="measured_s: must be > 0"):
        efficiency_from_measurement(1.0, -1.0)


def test_fp8_without_fp8_tensor_cores_runs_at_the_bf16_peak_and_a_missing_peak_is_named():
    from dataclasses import replace

    from workbench.plan.step_cost import StepCostModel

    m, a100 = get_model("llama-2-7b"), get_hardware("a100-80gb")
    # vLLM serves fp8 weights on Ampere weight-only (Marlin): bf16 math, fp8 bytes.
    assert StepCostModel(m, a100, "fp8").peak_flops == 312e12
    fp32_only = replace(a100, name="fp32-box", peak_tflops={"fp32": 19.5})
    with pytest.raises(ValueError, match="compute_dtype: fp32-box has no 'bf16'.*fp32"):
        decode_step(m, fp32_only, precision="bf16")


def test_phase_steps_are_step_costs_naming_their_phase_and_batch():
    from workbench.plan.step_cost import Batch, StepCost, step_cost

    m, h100 = get_model("llama-2-7b"), get_hardware("h100-sxm")
    d = decode_step(m, h100, 8, 1024)
    assert isinstance(d, StepCost) and (d.phase, d.batch) == ("decode", 8)
    assert d.time_s == step_cost(m, h100, Batch.decode(8, 1024)).time_s
    p = prefill_step(m, h100, 512, 2)
    assert (p.phase, p.batch, p.tokens) == ("prefill", 2, 1024)
    assert {"phase", "batch", "time_s", "bound", "tokens_per_s"} <= set(p.as_dict())
