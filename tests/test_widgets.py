"""Capacity calculator and decision questionnaire: the pure functions pinned with worked numbers
and the plan formulas they reuse, then the widgets driven by setting `.value` as a user would."""

from __future__ import annotations

import math

import pytest

from workbench.plan import (
    ModelDoesNotFitError,
    decode_step,
    get_hardware,
    get_model,
    iter_paths,
    kv_estimate,
    max_concurrent_seqs,
    monthly_cost,
    prefill_step,
    provisioned_cost,
    weight_bytes_per_gpu,
)
from workbench.plan.cost import HOURS_PER_MONTH, cost_per_million_tokens
from workbench.plan.step_cost import Batch, step_cost
from workbench.plan.trees import TREES, questions
from workbench.plan.trees.answers import quantization_answers
from workbench.widgets import (
    batch_curve,
    capacity_figures,
    capacity_view,
    decisions_table,
    deployment_decisions,
    derived_answers,
    feature_matrix_figure,
    questionnaire_view,
    rate_curve,
    replicas_needed,
    tp_options,
    tree_figure,
    tree_questions,
)
from workbench.widgets.tree_figure import path_ids, tree_layout

# The worked numbers below are arithmetic on the literature parameters, not on a fit.
pytestmark = pytest.mark.usefixtures("literature_parameters")

# llama-3-8b on an H100 SXM at bf16: 1,024-token prompts, 256-token answers, 50 ms TPOT.
M, HW = get_model("llama-3-8b"), get_hardware("h100-sxm")
PROMPT, OUT = 1024, 256


@pytest.fixture(scope="module")
def view():
    return capacity_view("llama-3-8b", "h100-sxm", "bf16", context=8192, rate_rps=20.0,
                         prompt_tokens=PROMPT, output_tokens=OUT, tpot_slo_ms=50.0,
                         utilization=0.7)


def step_cycle_s(batch: int, tp: int = 1) -> float:
    """The calculator's TPOT, written out: batch / OUT prompts join per step; below one per
    step, a share p = batch / OUT of steps carries a whole prompt beside the decodes and the
    rest only decode (the mean of the step times); above, every step carries its share."""
    context = batch * (PROMPT + OUT // 2)
    joining = batch / OUT

    def priced(prompts: float) -> float:
        return step_cost(M, HW, Batch(
            num_prefill_tokens=prompts * PROMPT, num_prefill_seqs=prompts,
            prefill_attention=prompts * PROMPT * (PROMPT + 1) / 2, num_decode_seqs=batch,
            decode_context=context), "bf16", tp=tp).time_s

    if joining >= 1:
        return priced(joining)
    return (1 - joining) * priced(0) + joining * priced(1)


def test_memory_breakdown_sums_to_the_gpu_and_uses_the_plan_figures(view):
    assert sum(view.memory_breakdown.values()) == pytest.approx(HW.memory_bytes / 1e9)
    assert view.weights_gb == pytest.approx(weight_bytes_per_gpu(M, "bf16") / 1e9)
    assert view.reserve_gb == pytest.approx(0.1 * HW.memory_bytes / 1e9)   # 10% held back
    # GQA: 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 B/token; 1,280 tokens.
    assert view.kv_mb_per_sequence == pytest.approx(131_072 * 1280 / 1e6)
    assert kv_estimate(M, 1280, "bf16").bytes_per_request == 131_072 * 1280
    assert view.kv_in_use_gb == pytest.approx(view.batch * 131_072 * 1280 / 1e9)
    room = 0.9 * HW.memory_bytes - weight_bytes_per_gpu(M, "bf16")
    assert view.max_concurrent_seqs == max_concurrent_seqs(M, HW, "bf16", 1280) == int(
        room // (131_072 * 1280))


def test_a_decode_step_is_the_step_models_arithmetic(view):
    # One decode over 1,152 cached tokens: it reads the weights less the 128,256 x 4,096
    # embedding table (one row of it) and its KV, pays the fixed and per-sequence costs.
    from workbench.plan.memory import active_param_count
    from workbench.plan.step_params import default_efficiency

    e = default_efficiency(HW)
    table = 128_256 * 4096 * 2
    weights = weight_bytes_per_gpu(M, "bf16") - table + 4096 * 2
    kv = 1152 * 131_072
    head = 2 * 128_256 * 4096
    flops = (2 * active_param_count(M) - 2 * head) + head
    linear = max(weights / (3350e9 * e.memory),
                 flops * (1 + e.compute_half_tokens) / (989.4e12 * e.compute))
    fixed = e.overhead_s + e.per_seq_s
    decode = linear + kv / (3350e9 * e.attention_mbu) + fixed
    assert decode_step(M, HW, 1, 1152).time_s == pytest.approx(decode, rel=1e-9)
    # The decode-only step and the lone prefill the table shows are the plan's phase steps.
    v1 = capacity_view(**{**view.inputs, "tp": 1})
    assert v1.decode_step_ms == pytest.approx(
        decode_step(M, HW, v1.batch, PROMPT + OUT // 2).time_s * 1e3)
    assert v1.prefill_ms == pytest.approx(prefill_step(M, HW, PROMPT).time_s * 1e3)


def test_operating_batch_is_the_largest_meeting_the_tpot_slo(view):
    # 226 sequences: compute-bound there (the prefill tokens riding along cost FLOPs).
    assert view.tpot_slo_met and view.batch == 226 and view.step_bound == "compute"
    assert step_cycle_s(view.batch) <= 0.050 < step_cycle_s(view.batch + 1)
    assert view.tpot_ms == pytest.approx(step_cycle_s(view.batch) * 1e3)
    assert view.requests_per_s == pytest.approx(view.batch / (OUT * step_cycle_s(view.batch)))
    assert view.output_tokens_per_s == pytest.approx(view.requests_per_s * OUT)
    assert view.ttft_floor_ms == pytest.approx(view.prefill_ms + view.tpot_ms)


def test_replicas_are_the_ceiling_of_demand_over_usable_capacity(view):
    f = view.fleet
    # 20 req/s over 17.7 req/s per replica kept 70% busy: ceil(1.62) = 2.
    assert f.replicas == math.ceil(20 / (view.requests_per_s * 0.7)) == 2
    assert f.gpus == 2 and f.utilization == pytest.approx(20 / (2 * view.requests_per_s))
    assert replicas_needed(10.0, 5.0, 1.0) == 2      # exactly full: no third replica
    assert replicas_needed(10.0, 5.0, 0.5) == 4
    assert replicas_needed(0.01, 5.0, 0.5) == 1


def test_cost_agrees_with_the_plan_cost_functions(view):
    f, price = view.fleet, 3.00
    tokens_per_request, requests_per_month = PROMPT + OUT, 20 * 3600 * HOURS_PER_MONTH
    assert f.monthly_cost == pytest.approx(2 * HOURS_PER_MONTH * price) == 4380
    assert f.gpu_seconds_per_token == pytest.approx(1 / (view.requests_per_s * 1280))
    full = monthly_cost(requests_per_month, tokens_per_request, f.gpu_seconds_per_token, price)
    assert f.monthly_cost_full_use == pytest.approx(full)
    assert f.monthly_cost_full_use == pytest.approx(f.monthly_cost * f.utilization)
    assert f.cost_per_million_tokens == pytest.approx(
        cost_per_million_tokens(f.gpu_seconds_per_token, price, f.utilization))
    # $ per 1M tokens is the month's bill over the month's tokens.
    assert f.cost_per_million_tokens == pytest.approx(
        f.monthly_cost / (requests_per_month * tokens_per_request) * 1e6)
    assert f.cost_per_million_output_tokens == pytest.approx(
        f.monthly_cost / (requests_per_month * OUT) * 1e6)
    # With one GPU per replica, the plan's provisioned cost buys the same GPUs.
    assert provisioned_cost(requests_per_month, tokens_per_request, f.gpu_seconds_per_token,
                            price, 0.7).gpus == f.gpus


def test_price_override_scales_cost_only(view):
    cheap = capacity_view(**{**view.inputs, "price_per_hour": 1.5})
    assert cheap.batch == view.batch and cheap.fleet.replicas == view.fleet.replicas
    assert cheap.fleet.monthly_cost == pytest.approx(view.fleet.monthly_cost / 2)


def test_a_model_too_big_for_one_gpu_gets_tensor_parallel_or_a_clear_error():
    v = capacity_view("llama-2-70b", "h100-sxm", context=4096, tpot_slo_ms=50)
    assert v.tp >= 2 and v.weights_gb < 72 and v.tp_reason.startswith("auto")
    assert sum(v.memory_breakdown.values()) == pytest.approx(HW.memory_bytes / 1e9)
    with pytest.raises(ModelDoesNotFitError, match=r"^model: llama-2-70b does not fit on 1 x "
                                                    r"h100-sxm.*needs 2 x h100-sxm"):
        capacity_view("llama-2-70b", "h100-sxm", context=4096, tp=1)


def test_auto_tp_buys_bigger_replicas_when_the_slo_needs_them():
    # 20 ms TPOT: two H100s hold llama-3-70b but decode at ~36 ms even alone.
    v = capacity_view("llama-3-70b", "h100-sxm", tpot_slo_ms=20)
    options = {r["gpus_per_replica"]: r for r in tp_options(v)}
    assert not options[2]["tpot_slo_met"] and v.tpot_slo_met and v.tp > 2
    assert options[v.tp]["chosen"]
    met = [r for r in options.values() if r["tpot_slo_met"]]
    assert options[v.tp]["gpus"] == min(r["gpus"] for r in met)
    assert "2 would fit" in v.tp_reason


def test_an_unreachable_slo_is_flagged_not_hidden():
    v = capacity_view("llama-2-7b", "l4", context=4096, tpot_slo_ms=5)
    assert not v.tpot_slo_met and v.batch == 1
    assert "missed even at batch 1" in v.explanation and "MISSED" in v.table().to_string()


@pytest.mark.parametrize("change,field", [
    ({"rate_rps": -1}, "rate_rps"),
    ({"utilization": 0}, "utilization"),
    ({"utilization": 1.5}, "utilization"),
    ({"context": 100}, "context"),
    ({"context": 1_000_000}, "context"),
    ({"precision": "fp9"}, "precision"),
    ({"gpu": "cpu-local", "precision": "fp16"}, "precision"),
    ({"gpu": "h1000"}, "gpu"),
    ({"tpot_slo_ms": 0}, "tpot_slo_ms"),
    ({"prompt_tokens": 0}, "prompt_tokens"),
    ({"tp": 3}, "tp"),
    ({"price_per_hour": -1}, "price_per_hour"),
    ({"kv_dtype": "int3"}, "kv_dtype"),
])
def test_bad_inputs_raise_a_value_error_naming_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        capacity_view(**change)


def test_table_and_explanation_show_the_arithmetic(view):
    table = view.table()
    assert table.loc["replicas", "value"] == "2" and table.loc["operating batch", "value"] == "226"
    assert table.loc["$ per month (always on)", "value"] == "4,380"
    text = view.explanation
    assert f"ceil(20 / ({view.requests_per_s:.3g} x 0.7)) = 2 replicas" in text
    assert "2 GPUs x 730 h x $3.00" in text
    # 226 decodes beside one whole 1,024-token prompt in a share 226 / 256 of steps.
    assert "chunks of 1,024 tokens, so a share 0.883 of steps" in text
    assert "(compute-bound)" in text


def test_whatif_curves_follow_the_view(view):
    rows = batch_curve(view)
    assert rows[0]["batch"] == 1 and rows[-1]["batch"] == view.max_concurrent_seqs
    assert all(a["tpot_ms"] < b["tpot_ms"] for a, b in zip(rows, rows[1:]))
    here = next(r for r in rows if r["batch"] == view.batch)
    assert here["tpot_ms"] == pytest.approx(view.tpot_ms)
    fleet = rate_curve(view)
    assert all(a["replicas"] <= b["replicas"] for a, b in zip(fleet, fleet[1:]))
    at_rate = next(r for r in fleet if r["rate_rps"] == 20.0)
    assert at_rate["monthly_cost"] == view.fleet.monthly_cost


def test_capacity_figures_draw_the_view(view):
    memory, batch, fleet = capacity_figures(view)
    assert sum(t.x[0] for t in memory.data) == pytest.approx(HW.memory_bytes / 1e9)
    marker = next(t for t in batch.data if t.name == "operating batch")
    assert marker.x == (226,) and marker.y[0] == pytest.approx(view.tpot_ms)
    assert "70%" in fleet.layout.title.text


def test_calculator_widget_follows_its_controls():
    from workbench.widgets import capacity_calculator

    calc = capacity_calculator(rate_rps=20.0)
    assert calc.view.fleet.replicas == 2 and calc.error is None and len(calc.figures) == 3
    shown = [o["data"]["application/vnd.plotly.v1+json"] for o in calc.plots.outputs]
    assert [f["layout"]["title"]["text"][:6] for f in shown] == ["Memory", "One re", "Fleet:"]
    calc.controls["rate_rps"].value = 60.0
    # ceil(60 / (requests/s per replica x 0.7)) = 5
    per_replica = calc.view.requests_per_s
    assert calc.view.fleet.replicas == math.ceil(60 / (per_replica * 0.7)) == 5
    assert "<td" in calc.summary.value and ">5<" in calc.summary.value
    calc.controls["context"].value = 100
    assert calc.view is None and calc.error.startswith("context:")
    assert "context: must hold" in calc.summary.value and calc.plots.outputs == ()
    calc.controls["context"].value = 8192
    calc.controls["gpu"].value = "a100-80gb"   # brings its catalog price with it
    assert calc.controls["price_per_hour"].value == 1.80
    assert calc.view.price_per_gpu_hour == 1.80 and calc.view.gpu == "a100-80gb"
    calc.controls["tp"].value = 2
    assert calc.view.tp == 2 and calc.view.tp_reason == "given"
    with pytest.raises(ValueError, match="^rate: not an input"):
        capacity_calculator(rate=3)


def test_tree_questions_list_every_question_with_its_answers_in_order():
    for name, tree in TREES.items():
        specs = tree_questions(name)
        assert {q.key: set(q.options) for q in specs} == questions(tree)
        assert specs[0].key == tree.root.key
    framework = tree_questions("framework")[0]
    assert framework.options == ("experiment", "local", "production")


def test_questionnaire_view_returns_the_decision_and_its_path():
    answers = {"use": "production", "hardware_vendor": "nvidia", "latency": "lowest",
               "ops_complexity": "high", "multi_model": "no", "packaging": "app"}
    decision, rows = questionnaire_view("framework", answers)
    assert decision.recommendation == "TensorRT-LLM"
    assert [r["key"] for r in rows] == ["use", "hardware_vendor", "latency", "ops_complexity",
                                        "multi_model"]
    assert rows[0] == {"step": 1, "question": "What is the deployment for?", "key": "use",
                       "answer": "production", "reason": "shared service with an SLO"}
    with pytest.raises(ValueError, match=r"^tree: unknown 'frameworks'"):
        questionnaire_view("frameworks", answers)
    with pytest.raises(ValueError, match=r"^packaging: unknown 'pip'"):
        questionnaire_view("framework", {**answers, "packaging": "pip"})


def test_derived_answers_come_from_the_plan_helpers():
    answers, facts = derived_answers("quantization", "llama-3-70b", "h100-sxm", context=8192,
                                     concurrency=32, gpus=4)
    assert (answers, facts) == quantization_answers(get_model("llama-3-70b"), HW, 8192, 32,
                                                    "tolerant", 4)
    assert answers["fits_at"] == "bf16"
    assert derived_answers("framework", "llama-3-8b", "cpu-local")[0] == {
        "hardware_vendor": "cpu"}


def test_deployment_decisions_for_a_70b_chat_service():
    decisions = deployment_decisions(
        "llama-3-70b", "h100-sxm",
        {"use": "production", "latency": "standard", "concurrency": "high",
         "hf_integration": "not_needed"},
        context=8192, concurrency=32, gpus=4, target_tpot_ms=50, shared_prefix_fraction=0.5)
    table = decisions_table(decisions)
    assert table["recommendation"].to_dict() == {
        "framework": "vLLM", "quantization": "FP8 (W8A8)", "parallelism": "Tensor parallel",
        "caching": "Prefix cache"}
    assert table.loc["parallelism", "path"] == (
        "fits_one_gpu=no -> fits_one_node=yes -> interconnect=nvlink")


@pytest.mark.parametrize("name", sorted(TREES))
def test_tree_figure_draws_every_leaf_and_highlights_the_path(name):
    nodes, edges = tree_layout(name)
    assert sum(n.leaf for n in nodes) == len(list(iter_paths(TREES[name])))
    assert len(edges) == len(nodes) - 1                      # a tree: every node but the root
    answers, _ = next(iter_paths(TREES[name]))
    decision, _ = questionnaire_view(name, answers)
    ids = {n.id for n in nodes}
    assert path_ids(decision) <= ids
    assert decision.recommendation in tree_figure(name, decision).layout.title.text


def test_questionnaire_widget_follows_answers_and_numbers():
    from workbench.widgets import questionnaire

    q = questionnaire("llama-3-70b", "h100-sxm", {"use": "production", "latency": "standard",
                                                  "concurrency": "high"},
                      context=8192, concurrency=32, gpus=4)
    framework = q.trees["framework"]
    assert framework.decision.recommendation == "TGI"   # hf_integration starts at 'required'
    assert framework.dropdowns["packaging"].disabled    # off the path: greyed out
    framework.dropdowns["use"].value = "local"
    assert framework.decision.recommendation == "Ollama"
    drawn = framework.plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert drawn["layout"]["title"]["text"] == "framework tree: Ollama"
    assert not framework.dropdowns["packaging"].disabled
    assert q.trees["quantization"].decision.recommendation == "FP8 (W8A8)"
    q.controls["gpu"].value = "cpu-local"
    q.controls["model"].value = "llama-2-7b"
    q.derive_button.click()
    assert q.trees["quantization"].decision.recommendation == "GGUF Q4_K_M"
    q.controls["context"].value = -1
    q.derive_button.click()
    assert "context: must be &gt; 0" in q.derive_status.value


def test_feature_matrix_figure_has_a_row_per_framework():
    from workbench.plan import FRAMEWORKS

    table = feature_matrix_figure().data[0]
    assert list(table.cells.values[0]) == list(FRAMEWORKS)


def test_the_view_copies_the_plans_operating_point(view):
    from workbench.plan.capacity_analytic import operating_point
    from workbench.widgets.capacity import setup_of

    setup = setup_of(view)
    op = operating_point(setup, view.tp, 0.050, 8192, 1.0)
    at = op.at
    assert (op.batch, op.tpot_slo_met, op.ttft_slo_met) == (
        view.batch, view.tpot_slo_met, view.ttft_slo_met)
    assert (at.output_tokens_per_s, at.requests_per_s) == (
        view.output_tokens_per_s, view.requests_per_s)
    assert at.output_tokens_per_s == pytest.approx(view.batch / at.tpot_s)
    assert at.requests_per_s == pytest.approx(view.batch / (OUT * at.tpot_s))
    assert view.ttft_floor_ms == pytest.approx((at.prefill_s + at.tpot_s) * 1e3)
    assert (op.kv_in_use_gb, op.kv_free_gb, op.reserve_gb) == (
        view.kv_in_use_gb, view.kv_free_gb, view.reserve_gb)
    row = next(r for r in batch_curve(view) if r["batch"] == view.batch)
    assert row["requests_per_s"] == setup.requests_per_s(view.batch, view.tp) == at.requests_per_s
