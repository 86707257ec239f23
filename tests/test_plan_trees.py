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
    caching_answers,
    parallelism_answers,
    quantization_answers,
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
