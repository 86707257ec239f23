"""Decision trees as data: questions with answers that lead to more questions or to leaves.

One generic evaluator walks any tree and returns the recommendation with the path of
(question, answer, reason) that led there, so a report can say why, not only what.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Leaf:
    recommendation: str
    reasons: tuple[str, ...]
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    reason: str                  # why this answer matters, shown in the path
    then: Question | Leaf


@dataclass(frozen=True, slots=True)
class Question:
    key: str                     # the input field that answers it
    text: str
    answers: dict[str, Answer] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tree:
    name: str
    root: Question
    source: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    key: str
    question: str
    answer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    tree: str
    recommendation: str
    reasons: tuple[str, ...]
    alternatives: tuple[str, ...]
    path: tuple[Step, ...]

    def as_dict(self) -> dict:
        return {"tree": self.tree, "recommendation": self.recommendation,
                "reasons": list(self.reasons), "alternatives": list(self.alternatives),
                "path": [{"question": s.question, "key": s.key, "answer": s.answer,
                          "reason": s.reason} for s in self.path]}


def evaluate(tree: Tree, answers: Mapping[str, str]) -> Decision:
    """Walk from the root, taking the answer given for each question met.

    Only questions on the path need answers; a missing or unknown one raises a ValueError that
    names the field and its allowed values.
    """
    # Check every given answer, not only those on the path, so a typo never passes silently.
    for key, allowed in questions(tree).items():
        given = answers.get(key)
        if given is not None and str(given).lower() not in allowed:
            raise ValueError(f"{key}: unknown {given!r}; allowed: {', '.join(sorted(allowed))}")
    node: Question | Leaf = tree.root
    path: list[Step] = []
    while isinstance(node, Question):
        allowed = ", ".join(node.answers)
        given = answers.get(node.key)
        if given is None:
            raise ValueError(f"{node.key}: required to answer '{node.text}'; allowed: {allowed}")
        given = str(given).lower()
        if given not in node.answers:
            raise ValueError(f"{node.key}: unknown {given!r}; allowed: {allowed}")
        branch = node.answers[given]
        path.append(Step(node.key, node.text, given, branch.reason))
        node = branch.then
    return Decision(tree.name, node.recommendation, node.reasons, node.alternatives, tuple(path))


def iter_paths(tree: Tree) -> Iterator[tuple[dict[str, str], Leaf]]:
    """Every root-to-leaf path as (answers that take it, the leaf): for tests and docs."""
    def walk(node: Question | Leaf, answers: dict[str, str]):
        if isinstance(node, Leaf):
            yield dict(answers), node
            return
        for value, branch in node.answers.items():
            yield from walk(branch.then, {**answers, node.key: value})

    yield from walk(tree.root, {})


def questions(tree: Tree) -> dict[str, set[str]]:
    """Every question key with the answers it accepts (for CLI help and validation)."""
    out: dict[str, set[str]] = {}

    def walk(node: Question | Leaf) -> None:
        if isinstance(node, Question):
            out.setdefault(node.key, set()).update(node.answers)
            for branch in node.answers.values():
                walk(branch.then)

    walk(tree.root)
    return out
