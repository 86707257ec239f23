"""The one step-cost model (workbench.plan.step_cost): MoE experts, the embedding table, the
overhead default, and the simulator, the planner and the calculator all pricing steps with it."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import pytest

from workbench.plan import get_hardware, get_model
from workbench.plan.memory import active_param_count, weight_bytes_per_gpu
from workbench.plan.roofline import decode_step, prefill_step
from workbench.plan.step_cost import (
    LITERATURE_EFFICIENCY,
    PEAK,
    Batch,
    StepCostModel,
    step_cost,
)
from workbench.sim.roofline_model import RooflineStepModel

H100 = get_hardware("h100-sxm")
H100_BW = 3.35e12


def test_moe_is_charged_the_routed_experts_in_the_simulator_as_in_the_plan():
    # Mixtral on 2 H100s, one sequence: the plan said 6.4 ms, the simulator (every expert's
    # weights read) 23.3 ms. Now both read what one token routes to: 2 of 8 experts.
    m = get_model("mixtral-8x7b")
    plan = decode_step(m, H100, 1, 0, tp=2).time_s
    sim = RooflineStepModel(m, H100, "bf16", tp=2).predict_record(Batch.decode(1, 0))
    assert sim == pytest.approx(plan, rel=1e-12)
    literature = decode_step(m, H100, 1, 0, tp=2, efficiency=LITERATURE_EFFICIENCY).time_s
    assert round(literature * 1e3, 2) == 6.34
    peak = StepCostModel(m, H100, tp=2, efficiency=PEAK)
    one = peak.cost(Batch.decode(1, 0))
    table = 32000 * 4096 * 2 / 2                # embedding table per GPU, not read
    assert one.bytes_moved == pytest.approx(
        2 * active_param_count(m) / 2 - table + 4096 * 2 / 2, rel=1e-3)
    # FLOPs follow the routed experts at any batch.
    assert peak.cost(Batch.decode(64, 0)).flops == pytest.approx(64 * one.flops)


def test_expected_distinct_experts_touched():
    model = StepCostModel(get_model("mixtral-8x7b"), H100, tp=2)
    assert model.experts_touched(1) == pytest.approx(2)          # k
    assert model.experts_touched(4) == pytest.approx(8 * (1 - 0.75**4))   # E(1-(1-k/E)^T)
    assert model.experts_touched(256) == pytest.approx(8)        # every expert
    assert StepCostModel(get_model("llama-3-8b"), H100).experts_touched(100) == 1


def test_a_step_reads_embedding_rows_but_the_whole_lm_head():
    m = get_model("llama-3-8b")                      # untied: table and head are separate
    table = 128_256 * 4096 * 2
    one = step_cost(m, H100, Batch.decode(1, 0), efficiency=PEAK)
    assert one.bytes_moved == pytest.approx(weight_bytes_per_gpu(m) - table + 4096 * 2)
    # FLOPs: 2 per block parameter, plus the LM head for the one row that samples.
    blocks = active_param_count(m) - 2 * 128_256 * 4096
    assert one.flops == pytest.approx(2 * blocks + 2 * 128_256 * 4096)
    # A 512-token prompt samples once: the head's FLOPs are not paid 512 times.
    fill = step_cost(m, H100, Batch.prefill(512), efficiency=PEAK)
    attention = 4 * 32 * 32 * 128 * 512 * 513 / 2
    assert fill.flops == pytest.approx(2 * blocks * 512 + 2 * 128_256 * 4096 + attention)
    # Tied embeddings: the one table is the LM head, read in full every step.
    tied = replace(m, tie_word_embeddings=True)
    assert step_cost(tied, H100, Batch.decode(1, 0)).bytes_moved == pytest.approx(
        weight_bytes_per_gpu(tied))


def test_one_parameter_default_everywhere_and_the_overhead_adds_per_step():
    from workbench.plan.capacity_analytic import setup_for
    from workbench.sim.capacity import cheapest_configuration

    defaults = {
        "RooflineStepModel": inspect.signature(RooflineStepModel).parameters[
            "step_overhead_s"].default,
        "cheapest_configuration": inspect.signature(cheapest_configuration).parameters[
            "step_overhead_s"].default,
        "decode_step": inspect.signature(decode_step).parameters["overhead_s"].default,
        "prefill_step": inspect.signature(prefill_step).parameters["overhead_s"].default,
        "setup_for": inspect.signature(setup_for).parameters["overhead_s"].default,
    }
    # None everywhere: the fitted parameters of the GPU (workbench.plan.step_params).
    assert set(defaults.values()) == {None}, defaults
    m, b = get_model("llama-3-8b"), Batch.decode(8, 1000)
    with_overhead = step_cost(m, H100, b, overhead_s=0.002)
    assert with_overhead.time_s == pytest.approx(step_cost(m, H100, b, overhead_s=0).time_s
                                                  + 0.002)
    with pytest.raises(ValueError, match="^overhead_s: must be >= 0"):
        StepCostModel(m, H100, overhead_s=-1)


def test_the_simulator_prices_its_own_step_records_with_the_plan_function():
    from workbench.engine.telemetry import StepRecord

    m = get_model("llama-3-8b")
    rec = StepRecord(0, 0.0, 0.0, num_prefill_tokens=300, num_decode_seqs=20, num_seqs=21,
                     sum_context_tokens=0, kv_blocks_used=0, kv_blocks_total=0,
                     num_preempted=0, num_waiting=0, num_prefill_seqs=1,
                     prefill_attention=300 * 200 + 300 * 301 // 2, decode_context=20 * 900,
                     decode_max_context=1200)
    sim = RooflineStepModel(m, H100, context=4096).predict_record(rec)
    plan = step_cost(m, H100, Batch(300, 1, rec.prefill_attention, 20, 20 * 900)).time_s
    assert sim == pytest.approx(plan, rel=1e-12)


def test_sliding_window_caps_the_keys_a_query_reads():
    m = get_model("mistral-7b")
    window = m.sliding_window
    assert window
    capped = step_cost(m, H100, Batch.decode(4, 2 * window))
    at_window = step_cost(m, H100, Batch.decode(4, window))
    assert capped.bytes_moved == pytest.approx(at_window.bytes_moved)


def test_every_forecast_prices_steps_with_the_gpus_fitted_parameters(tmp_path):
    """Calculator, `plan roofline` / `plan capacity`, the simulator's roofline model, the
    parallelism tree and the report's hardware table answer the same question with the same
    step model and the same (fitted, per GPU class) parameters."""
    from workbench.plan.step_params import default_efficiency, error_band
    from workbench.plan.trees.answers import parallelism_answers
    from workbench.sim.capacity import cheapest_configuration
    from workbench.widgets import capacity_view
    from workbench.widgets.capacity import setup_of

    m, hw = get_model("llama-3-70b"), H100
    fitted = default_efficiency(hw)
    assert fitted.source.startswith("fitted to published measurements on h100-sxm")
    b = Batch.decode(32, 1280)
    plan = decode_step(m, hw, 32, 1280, tp=4).time_s
    assert StepCostModel(m, hw, tp=4).efficiency == fitted
    assert RooflineStepModel(m, hw, "bf16", tp=4).predict_record(b) == pytest.approx(plan)
    view = capacity_view("llama-3-70b", "h100-sxm", tp=4)
    assert setup_of(view).step_model(4).seconds(b) == pytest.approx(plan)
    assert view.decode_step_ms == pytest.approx(
        decode_step(m, hw, view.batch, 1024 + 256 // 2, tp=4).time_s * 1e3)
    small = get_model("llama-3-8b")           # the tree prices one GPU: a model that fits
    _, facts = parallelism_answers(small, hw, context=1280, batch=1)
    assert facts["tpot_s_batch1"] == pytest.approx(decode_step(small, hw, 1, 1280).time_s)
    from workbench.traffic import load_scenario

    sc = load_scenario(Path(__file__).parent.parent / "scenarios" / "chat.yaml",
                       ["num_requests=40", "arrival.rate=2"])
    rows = cheapest_configuration(sc, get_model("llama-3-8b"), [hw], "bf16", tp=1)
    assert rows[0]["error_band"] == error_band().summary()


def test_a_gpu_without_a_fitted_set_borrows_its_architectures():
    """An H200 (no published rows) is forecast with what the Hopper GPUs measured, an A100
    80GB with no set of its own with the A100 40GB's; a chip of no fitted architecture gets
    the generic set, and the catalog's architecture field is checked like every other."""
    from workbench.plan.hardware import parse_hardware
    from workbench.plan.step_params import default_efficiency, fitted_sets, parameters_for_gpu

    sets = fitted_sets()
    generic, per_gpu = sets.pop("generic"), sets
    h200 = default_efficiency("h200")
    hopper = [per_gpu[k] for k in ("gh200", "h100-sxm") if k in per_gpu]
    assert hopper and h200.memory == pytest.approx(sum(e.memory for e in hopper) / len(hopper))
    assert "same architecture, hopper" in h200.source
    a100 = {"a100-40gb": per_gpu["a100-40gb"]}
    borrowed = parameters_for_gpu("a100-80gb", generic, a100)
    assert replace(borrowed, source="") == replace(a100["a100-40gb"], source="")
    assert "a100-40gb (same architecture, ampere)" in borrowed.source
    assert parameters_for_gpu("l4", generic, a100) == generic      # ada: none fitted
    assert parameters_for_gpu("no-such-gpu", generic, a100) == generic
    assert get_hardware("mi300x").architecture == "cdna3"
    entry = {"vendor": "nvidia", "memory_gib": 24, "memory_bandwidth_gb_s": 1008,
             "peak_tflops": {"bf16": 165}, "architecture": "Ada"}
    assert parse_hardware({"hardware": {"rtx": entry}})["rtx"].architecture == "ada"
