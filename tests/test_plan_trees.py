"""Decision trees: every path of every tree is walked (enumerated from the data), every leaf
explains itself, and the number-to-answer helpers pick sensible branches."""

from __future__ import annotations

import pytest

from workbench.plan.budget import max_concurrent_seqs, min_gpus
from workbench.plan.frameworks import FEATURES, FRAMEWORKS, SUPPORT_VALUES, feature_matrix
from workbench.plan.hardware import get_hardware
from workbench.plan.models_catalog import get_model
from workbench.plan.trees import TREES, Leaf, Question, evaluate, iter_paths, questions, recommend
from workbench.plan.trees.answers import (
    LOW_CONCURRENCY_IN_FLIGHT,
    caching_answers,
    framework_answers,
    parallelism_answers,
    quantization_answers,
    requests_in_flight,
)

ALL_PATHS = [(name, answers, leaf) for name, tree in TREES.items()
             for answers, leaf in iter_paths(tree)]


def test_the_four_trees_exist():
    assert set(TREES) == {"framework", "quantization", "parallelism", "caching"}


@pytest.mark.parametrize("name,answers,leaf", ALL_PATHS,
                         ids=[f"{n}:{'/'.join(a.values())}" for n, a, _ in ALL_PATHS])
def test_every_path_reaches_its_leaf_with_reasons(name, answers, leaf):
    d = recommend(name, answers)
    assert d.recommendation == leaf.recommendation and d.reasons == leaf.reasons
    assert d.reasons and all(r.strip() for r in d.reasons)
    assert [s.answer for s in d.path] == list(answers.values())
    assert all(s.question and s.reason.strip() for s in d.path)


def _nodes(node):
    yield node
    if isinstance(node, Question):
        for branch in node.answers.values():
            yield from _nodes(branch.then)


@pytest.mark.parametrize("name", sorted(TREES))
def test_paths_cover_every_leaf_and_every_answer(name):
    tree = TREES[name]
    leaves = [n for n in _nodes(tree.root) if isinstance(n, Leaf)]
    reached = [leaf for _, leaf in iter_paths(tree)]
    assert len(reached) == len(leaves) and all(any(r is l for r in reached) for l in leaves)
    for q in (n for n in _nodes(tree.root) if isinstance(n, Question)):
        assert len(q.answers) >= 2 and q.text
    assert tree.source


def test_missing_and_unknown_answers_name_the_field_and_allowed_values():
    with pytest.raises(ValueError, match=r"^hardware_vendor: required .*allowed: amd, cpu"):
        recommend("framework", {"use": "production"})
    with pytest.raises(ValueError, match=r"^use: unknown 'cloud'; allowed: experiment, local"):
        recommend("framework", {"use": "cloud"})
    # A bad answer off the path is still caught: it is a typo, not a choice.
    with pytest.raises(ValueError, match=r"^concurrency: unknown 'lots'; allowed: high, low"):
        recommend("framework", {"use": "experiment", "concurrency": "lots"})
    with pytest.raises(ValueError, match="tree: unknown 'colour'"):
        recommend("colour", {})
    assert "ops_complexity" in questions(TREES["framework"])


def test_framework_leaves_are_in_the_feature_matrix():
    for _, leaf in iter_paths(TREES["framework"]):
        assert leaf.recommendation in FRAMEWORKS
    for f in ("vLLM", "TGI", "TensorRT-LLM", "Triton", "Ollama", "llama.cpp", "workbench"):
        row = FRAMEWORKS[f]
        assert row.source
        for feat in FEATURES:
            if feat != "quantization_formats":
                assert getattr(row, feat) in SUPPORT_VALUES, (f, feat)
    assert len(feature_matrix()) == len(FRAMEWORKS)


def test_quantization_answers_from_memory():
    h100, l4 = get_hardware("h100-sxm"), get_hardware("l4")
    a, _ = quantization_answers(get_model("llama-2-7b"), h100, quality="strict")
    assert evaluate(TREES["quantization"], a).recommendation == "BF16 / FP16"
    # 70B at bf16 is 138 GB: on one 80 GB H100 it fits only as 8 or 4 bits.
    a, facts = quantization_answers(get_model("llama-2-70b"), h100)
    assert a["fits_at"] == "int8" and facts["max_seqs_bf16"] == 0
    # On a 24 GB L4 not even 4 bits fit: the leaf says add GPUs, the facts say how many.
    a, facts = quantization_answers(get_model("llama-2-70b"), l4)
    d = evaluate(TREES["quantization"], a)
    assert a["fits_at"] == "none" and "Add GPUs" in d.recommendation
    assert facts["gpus_needed_int4"] == min_gpus(get_model("llama-2-70b"), l4, "int4") > 1
    # Weights fit at int4 but 32 sequences do not: more GPUs, counted for the concurrency.
    m70 = get_model("llama-3-70b")
    a, facts = quantization_answers(m70, h100, context=8192, concurrency=32)
    assert a["fits_at"] == "none" and 0 < facts["max_seqs_int4"] < 32
    n = facts["gpus_needed_int4"]
    assert max_concurrent_seqs(m70, h100, "int4", 8192, tp=n) >= 32 > max_concurrent_seqs(
        m70, h100, "int4", 8192, tp=n // 2)
    assert "KV of the target concurrency" in evaluate(TREES["quantization"], a).reasons[0]
    a, _ = quantization_answers(get_model("llama-2-7b"), get_hardware("cpu-local"))
    assert a["hardware"] == "cpu_or_edge"


def test_parallelism_answers_from_memory_and_roofline():
    h100, l40s = get_hardware("h100-sxm"), get_hardware("l40s")
    a, _ = parallelism_answers(get_model("llama-2-7b"), h100)
    assert evaluate(TREES["parallelism"], a).recommendation == "Single GPU"
    a, f = parallelism_answers(get_model("llama-2-7b"), h100, target_tokens_per_s=1e6)
    assert evaluate(TREES["parallelism"], a).recommendation == "Data-parallel replicas"
    a, f = parallelism_answers(get_model("llama-2-7b"), h100, target_tpot_s=1e-3)
    assert f["tpot_s_batch1"] > 1e-3
    assert evaluate(TREES["parallelism"], a).recommendation == "Tensor parallel"
    a, _ = parallelism_answers(get_model("llama-2-70b"), l40s)
    assert evaluate(TREES["parallelism"], a).recommendation == "Pipeline parallel"
    with pytest.raises(ValueError, match="target_tokens_per_s: must be >= 0"):
        parallelism_answers(get_model("llama-2-7b"), h100, target_tokens_per_s=-5)


def test_caching_answers_from_workload_shape():
    h100 = get_hardware("h100-sxm")
    a, _ = caching_answers(get_model("llama-2-7b"), h100, repeat_fraction=0.3)
    assert recommend("caching", a).recommendation == "Response cache"
    a, _ = caching_answers(get_model("mistral-7b"), h100, context=32768, concurrency=1000)
    assert recommend("caching", a).recommendation == "Sliding-window KV"
    a, _ = caching_answers(get_model("llama-2-7b"), h100, concurrency=1000)
    assert recommend("caching", a).recommendation.startswith("Quantized KV")
    with pytest.raises(ValueError, match="repeat_fraction: must be in"):
        caching_answers(get_model("llama-2-7b"), h100, repeat_fraction=2)
    # A 70B model on a 4-GPU replica: its KV room is the replica's, not one GPU's (none).
    m70 = get_model("llama-2-70b")
    one, facts1 = caching_answers(m70, h100, concurrency=16)
    four, facts4 = caching_answers(m70, h100, concurrency=16, gpus=4)
    assert facts1["max_seqs"] == 0 and one["kv_memory_bound"] == "yes"
    assert facts4["max_seqs"] == max_concurrent_seqs(m70, h100, "bf16", 4096, tp=4) >= 16
    assert four["kv_memory_bound"] == "no"


def test_parallelism_sizes_gpus_for_the_target_batch_not_only_the_weights():
    m70, h100 = get_model("llama-2-70b"), get_hardware("h100-sxm")
    # Two bf16 H100s hold the weights and ~11 sequences of 4,096 tokens; 64 need four.
    a, facts = parallelism_answers(m70, h100, context=4096, batch=64)
    assert facts["gpus_for_weights"] == 2 and facts["gpus_needed"] == 4
    assert max_concurrent_seqs(m70, h100, "bf16", 4096, tp=2) < 64
    assert facts["max_seqs_at_gpus_needed"] == max_concurrent_seqs(
        m70, h100, "bf16", 4096, tp=4) >= 64
    assert a["fits_one_node"] == "yes"
    # A batch no 8-GPU node holds is not "fits one node", even though the weights do.
    a, facts = parallelism_answers(m70, h100, context=4096, batch=2000)
    assert facts["gpus_for_weights"] == 2 and (facts["gpus_needed"] or 99) > 8
    assert a["fits_one_node"] == "no"
    assert evaluate(TREES["parallelism"], a).recommendation.startswith("Tensor parallel within")


@pytest.mark.parametrize("model,gpu,concurrency", [
    ("llama-2-7b", "l4", 4), ("llama-2-13b", "l40s", 8), ("mixtral-8x7b", "h100-sxm", 8)])
@pytest.mark.parametrize("quality", ["strict", "tolerant"])
def test_quantization_offers_fp8_where_8_bits_are_needed_on_fp8_hardware(model, gpu, concurrency,
                                                                        quality):
    # Ada (L4, L40S) and Hopper have FP8 tensor cores: when BF16 does not fit but 8 bits do,
    # FP8 is the 8-bit format to run, whatever the quality tolerance.
    a, facts = quantization_answers(get_model(model), get_hardware(gpu), 4096, concurrency,
                                    quality)
    assert a["fits_at"] == "int8" and a["fp8_hardware"] == "yes"
    assert facts["max_seqs_bf16"] < concurrency <= facts["max_seqs_int8"]
    assert evaluate(TREES["quantization"], a).recommendation == "FP8 (W8A8)"


def test_quantization_without_fp8_keeps_int8_or_int4():
    # The L4 case above on an A10G: the same 24 GB, but Ampere has INT8 tensor cores, no FP8.
    a10g = get_hardware("a10g")
    strict, _ = quantization_answers(get_model("llama-2-7b"), a10g, 4096, 4, "strict")
    tolerant, _ = quantization_answers(get_model("llama-2-7b"), a10g, 4096, 4, "tolerant")
    assert strict["fits_at"] == "int8" and strict["fp8_hardware"] == "no"
    assert evaluate(TREES["quantization"], strict).recommendation == "INT8 weight-only (W8A16)"
    assert evaluate(TREES["quantization"], tolerant).recommendation == "INT4 (AWQ)"


def test_framework_concurrency_is_requests_in_flight_by_littles_law():
    assert requests_in_flight(2.0, 30.0) == 60.0
    # A low request rate with long answers keeps many requests in flight ...
    a, facts = framework_answers(requests_per_s=2, latency_s=30)
    assert a == {"concurrency": "high"} and facts["requests_in_flight"] == 60
    # ... and a high rate of quick answers keeps few.
    a, facts = framework_answers(requests_per_s=20, latency_s=0.1)
    assert a == {"concurrency": "low"} and facts["requests_in_flight"] <= LOW_CONCURRENCY_IN_FLIGHT
    base = {"use": "production", "hardware_vendor": "nvidia", "latency": "standard",
            "hf_integration": "not_needed"}
    assert recommend("framework", {**base, **a}).recommendation == "Ollama"
    step = recommend("framework", {**base, **a}).path[-1]
    assert step.key == "concurrency" and "in flight" in step.question
    with pytest.raises(ValueError, match="latency_s: must be > 0"):
        framework_answers(2, 0)
    with pytest.raises(ValueError, match="requests_per_s: must be >= 0"):
        framework_answers(-1, 3)
