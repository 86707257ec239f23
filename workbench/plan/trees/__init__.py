"""Decision trees as data, one generic evaluator, and helpers that derive answers from numbers."""

from workbench.plan.trees import caching, framework, parallelism, quantization
from workbench.plan.trees.core import (
    Answer,
    Decision,
    Leaf,
    Question,
    Step,
    Tree,
    evaluate,
    iter_paths,
    questions,
)

TREES: dict[str, Tree] = {t.name: t for t in (framework.TREE, quantization.TREE,
                                                parallelism.TREE, caching.TREE)}


def recommend(tree: str, answers: dict[str, str]) -> Decision:
    """Evaluate the tree named `tree` ('framework', 'quantization', 'parallelism', 'caching')."""
    if tree not in TREES:
        raise ValueError(f"tree: unknown {tree!r}; allowed: {', '.join(TREES)}")
    return evaluate(TREES[tree], answers)


__all__ = ["TREES", "Answer", "Decision", "Leaf", "Question", "Step", "Tree", "evaluate",
           "iter_paths", "questions", "recommend"]
