"""The decision trees as a questionnaire: the questions of each tree in order, the path an
answer set takes with its reasons, answers derived from model and GPU facts, and the framework
feature matrix. Pure functions over workbench.plan.trees; the widget and notebook 06 show them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workbench.plan.frameworks import FRAMEWORKS, feature_matrix
from workbench.plan.hardware import get_hardware
from workbench.plan.models_catalog import get_model
from workbench.plan.render import decision_text
from workbench.plan.trees import TREES, Decision, Leaf, Question, recommend
from workbench.plan.trees.answers import (
    caching_answers,
    parallelism_answers,
    quantization_answers,
)


@dataclass(frozen=True, slots=True)
class QuestionSpec:
    key: str
    text: str
    options: tuple[str, ...]      # in the order the tree lists them


def tree_questions(tree: str) -> list[QuestionSpec]:
    """Every question of a tree, depth first from the root; a key asked in two branches
    (e.g. 'interconnect') appears once with the union of its answers."""
    found: dict[str, QuestionSpec] = {}

    def walk(node: Question | Leaf) -> None:
        if isinstance(node, Leaf):
            return
        seen = found.get(node.key)
        options = tuple(dict.fromkeys((*(seen.options if seen else ()), *node.answers)))
        found[node.key] = QuestionSpec(node.key, seen.text if seen else node.text, options)
        for branch in node.answers.values():
            walk(branch.then)

    walk(_tree(tree).root)
    return list(found.values())


def default_answers(tree: str) -> dict[str, str]:
    """The first answer to every question: a complete starting point for a questionnaire."""
    return {q.key: q.options[0] for q in tree_questions(tree)}


def questionnaire_view(tree: str, answers: Mapping[str, str]) -> tuple[Decision, list[dict]]:
    """The recommendation for these answers, and the path as rows (step, question, answer,
    reason). Answers to questions off the path are allowed (and still checked for typos)."""
    decision = recommend(tree, dict(answers))
    rows = [{"step": i, "question": s.question, "key": s.key, "answer": s.answer,
             "reason": s.reason} for i, s in enumerate(decision.path, 1)]
    return decision, rows


def on_path(decision: Decision) -> set[str]:
    """Keys of the questions the decision asked: the others did not matter this time."""
    return {s.key for s in decision.path}


def explain_decision(decision: Decision, facts: Mapping | None = None) -> str:
    """Recommendation, reasons, alternatives, path and the facts used, as plain text."""
    return decision_text(decision.as_dict(), facts)


def derived_answers(tree: str, model: str, gpu: str, precision: str = "bf16",
                    context: int = 4096, concurrency: int = 1, gpus: int = 1,
                    quality: str = "tolerant", target_tokens_per_s: float | None = None,
                    target_tpot_ms: float | None = None, repeat_fraction: float = 0.0,
                    shared_prefix_fraction: float = 0.0) -> tuple[dict, dict]:
    """Answers that follow from numbers (memory, roofline, workload shape), with the facts
    they came from: workbench.plan.trees.answers does the work. The framework tree's answers
    are choices, not facts, except which vendor makes the GPU."""
    m, hw = get_model(model), get_hardware(gpu)
    if tree == "quantization":
        return quantization_answers(m, hw, context, concurrency, quality, gpus)
    if tree == "parallelism":
        tpot_s = None if target_tpot_ms is None else target_tpot_ms / 1e3
        return parallelism_answers(m, hw, precision, context, concurrency,
                                   target_tokens_per_s, tpot_s)
    if tree == "caching":
        return caching_answers(m, hw, repeat_fraction, shared_prefix_fraction, context,
                               concurrency, precision, gpus)
    if tree == "framework":
        vendors = next(q.options for q in tree_questions(tree) if q.key == "hardware_vendor")
        known = hw.vendor in vendors
        return ({"hardware_vendor": hw.vendor} if known else {}), {"gpu_vendor": hw.vendor}
    _tree(tree)  # raises the error naming the allowed trees
    raise AssertionError("unreachable")


def deployment_decisions(model: str, gpu: str, framework_answers: Mapping[str, str],
                         **workload) -> dict[str, tuple[Decision, dict]]:
    """All four trees for one deployment: (decision, facts) per tree. The framework answers
    given win over the derived vendor; `workload` goes to derived_answers."""
    out = {}
    for name in TREES:
        answers, facts = derived_answers(name, model, gpu, **workload)
        if name == "framework":
            answers = {**answers, **framework_answers}
        out[name] = (recommend(name, answers), facts)
    return out


def decisions_table(decisions: Mapping[str, tuple[Decision, dict]]):
    """One row per tree: the recommendation and the path that led there, for print."""
    import pandas as pd

    rows = [{"tree": name, "recommendation": d.recommendation,
             "alternatives": ", ".join(d.alternatives) or "-",
             "path": " -> ".join(f"{s.key}={s.answer}" for s in d.path)}
            for name, (d, _) in decisions.items()]
    return pd.DataFrame(rows).set_index("tree")


def feature_matrix_frame():
    """The framework feature matrix (workbench.plan.frameworks) as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(feature_matrix()).set_index("framework")


def feature_sources_frame():
    """Where every row of the matrix was read, when, and its caveats."""
    import pandas as pd

    rows = [{"framework": f.name, "as_of": f.as_of, "source": f.source,
             "notes": "; ".join(f"{k}: {v}" for k, v in f.notes.items()) or "-"}
            for f in FRAMEWORKS.values()]
    return pd.DataFrame(rows).set_index("framework")


def _tree(name: str):
    if name not in TREES:
        raise ValueError(f"tree: unknown {name!r}; allowed: {', '.join(TREES)}")
    return TREES[name]
