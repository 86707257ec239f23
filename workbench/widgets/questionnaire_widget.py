"""The four decision trees as an interactive questionnaire: one tab per tree, a dropdown per
question, the recommendation with its reasons and path, and the tree with the path drawn.
A panel of numbers (model, GPU, workload) answers the questions that follow from facts.

Every answer change calls questionnaire_view, the function notebook 06 also calls at top level.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from workbench.plan import MODELS, TREES, hardware_catalog
from workbench.widgets.held_refresh import HeldRefresh
from workbench.widgets.html import error_html, rows_html, show_in
from workbench.widgets.questionnaire import (
    default_answers,
    derived_answers,
    on_path,
    questionnaire_view,
    tree_questions,
)
from workbench.widgets.tree_figure import tree_figure

OFF_PATH_STYLE = "color:#9a9a9a"
LABEL_LAYOUT = widgets.Layout(width="470px")
STYLE = {"description_width": "190px"}
FIELD_LAYOUT = widgets.Layout(width="360px")


class TreeQuestionnaire(HeldRefresh, widgets.VBox):
    """One tree. Questions the current path does not ask are greyed out: they matter only
    once an earlier answer leads to them."""

    def __init__(self, tree: str, answers: dict | None = None):
        self.tree = tree
        self.questions = tree_questions(tree)
        start = {**default_answers(tree), **(answers or {})}
        self.labels = {q.key: widgets.HTML(layout=LABEL_LAYOUT) for q in self.questions}
        self.dropdowns = {q.key: widgets.Dropdown(options=q.options, value=start[q.key],
                                                  layout=widgets.Layout(width="160px"))
                          for q in self.questions}
        self.result = widgets.HTML()
        self.plot = widgets.Output()
        self.decision = None
        self.error: str | None = None
        self.facts: dict = {}
        self.figure = None
        rows = [widgets.HBox([self.labels[q.key], self.dropdowns[q.key]]) for q in self.questions]
        super().__init__([widgets.HBox([widgets.VBox(rows), self.result]), self.plot])
        for dropdown in self.dropdowns.values():
            dropdown.observe(self._changed, names="value")
        self.refresh()

    def answers(self) -> dict[str, str]:
        return {key: d.value for key, d in self.dropdowns.items()}

    def set_answers(self, answers: dict, facts: dict | None = None) -> None:
        with self.hold():
            for key, value in answers.items():
                self.dropdowns[key].value = value
            self.facts = dict(facts or {})

    def _changed(self, _change) -> None:
        if not self._held:
            self.refresh()

    def refresh(self) -> None:
        try:
            decision, rows = questionnaire_view(self.tree, self.answers())
        except ValueError as e:
            self.decision, self.error, self.figure = None, str(e), None
            self.result.value = error_html(str(e))
            show_in(self.plot, [])
            return
        self.decision, self.error = decision, None
        asked = on_path(decision)
        for q in self.questions:
            off = q.key not in asked
            self.dropdowns[q.key].disabled = off
            text = html.escape(q.text)
            self.labels[q.key].value = f"<span style='{OFF_PATH_STYLE}'>{text}</span>" if off \
                else text
        self.result.value = _decision_html(decision, rows, self.facts)
        self.figure = tree_figure(self.tree, decision)
        show_in(self.plot, [self.figure])


def _decision_html(decision, rows: list[dict], facts: dict) -> str:
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision.reasons)
    alts = (f"<div>alternatives: {html.escape(', '.join(decision.alternatives))}</div>"
            if decision.alternatives else "")
    path = rows_html([(r["step"], r["question"], r["answer"], r["reason"]) for r in rows],
                     ("#", "question", "answer", "why it matters"))
    used = rows_html(facts.items(), ("fact used", "value")) if facts else ""
    return (f"<div style='font-size:16px'><b>{html.escape(decision.recommendation)}</b></div>"
            f"<ul>{reasons}</ul>{alts}{path}{used}")


# Inputs of derived_answers: the numbers the data-driven questions are answered from.
WORKLOAD_FIELDS = ("model", "gpu", "precision", "context", "concurrency", "gpus", "quality",
                   "target_tpot_ms", "target_tokens_per_s", "repeat_fraction",
                   "shared_prefix_fraction")


def _workload_controls(values: dict) -> dict[str, widgets.ValueWidget]:
    kw = dict(style=STYLE, layout=FIELD_LAYOUT)
    return {
        "model": widgets.Dropdown(options=sorted({*MODELS, values["model"]}),
                                  value=values["model"], description="model", **kw),
        "gpu": widgets.Dropdown(options=list(hardware_catalog()), value=values["gpu"],
                                description="GPU", **kw),
        "precision": widgets.Dropdown(options=["bf16", "fp16", "fp8", "int8", "int4"],
                                      value=values["precision"], description="precision", **kw),
        "context": widgets.IntText(value=values["context"], description="tokens per sequence",
                                   **kw),
        "concurrency": widgets.IntText(value=values["concurrency"],
                                       description="sequences at once", **kw),
        "gpus": widgets.IntText(value=values["gpus"], description="GPUs (quantization)", **kw),
        "quality": widgets.Dropdown(options=["tolerant", "strict"], value=values["quality"],
                                    description="quality loss", **kw),
        "target_tpot_ms": widgets.FloatText(value=values["target_tpot_ms"] or 0.0,
                                            description="TPOT target (ms, 0 = none)", **kw),
        "target_tokens_per_s": widgets.FloatText(
            value=values["target_tokens_per_s"] or 0.0,
            description="tokens/s target (0 = none)", **kw),
        "repeat_fraction": widgets.FloatSlider(value=values["repeat_fraction"], min=0, max=1,
                                               step=0.05, description="repeated requests", **kw),
        "shared_prefix_fraction": widgets.FloatSlider(
            value=values["shared_prefix_fraction"], min=0, max=1, step=0.05,
            description="share with common prefix", **kw),
    }


class Questionnaire(widgets.VBox):
    """All four trees in tabs, with the numbers panel that answers the factual questions."""

    def __init__(self, model: str = "llama-3-8b", gpu: str = "h100-sxm",
                 framework_answers: dict | None = None, **workload):
        values = {"precision": "bf16", "context": 4096, "concurrency": 1, "gpus": 1,
                  "quality": "tolerant", "target_tpot_ms": None, "target_tokens_per_s": None,
                  "repeat_fraction": 0.0, "shared_prefix_fraction": 0.0,
                  **workload, "model": model, "gpu": gpu}
        unknown = sorted(set(values) - set(WORKLOAD_FIELDS))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a workload field; allowed: "
                             f"{', '.join(WORKLOAD_FIELDS)}")
        self.controls = _workload_controls(values)
        self.derive_button = widgets.Button(description="Answer from these numbers",
                                            button_style="primary",
                                            layout=widgets.Layout(width="240px"))
        self.derive_status = widgets.HTML()
        self.trees = {name: TreeQuestionnaire(name, framework_answers if name == "framework"
                                              else None) for name in TREES}
        self.tabs = widgets.Tab(children=list(self.trees.values()))
        for i, name in enumerate(self.trees):
            self.tabs.set_title(i, name)
        fields = list(self.controls.values())
        half = (len(fields) + 1) // 2
        panel = widgets.VBox([
            widgets.HTML("<b>Numbers that answer the factual questions</b> (memory, roofline, "
                         "workload shape; the framework tree's questions are choices)"),
            widgets.HBox([widgets.VBox(fields[:half]), widgets.VBox(fields[half:])]),
            widgets.HBox([self.derive_button, self.derive_status])])
        super().__init__([panel, self.tabs])
        self.derive_button.on_click(self.derive)
        self.derive(keep=framework_answers or {})

    def workload(self) -> dict:
        """The panel as derived_answers arguments (0 targets mean none)."""
        v = {name: c.value for name, c in self.controls.items()}
        for key in ("target_tpot_ms", "target_tokens_per_s"):
            v[key] = v[key] or None
        return v

    def derive(self, _button=None, keep: dict | None = None) -> None:
        """Answer every tree's factual questions from the panel; `keep` wins for the
        framework tree (answers a person chose)."""
        problems = []
        for name, questionnaire in self.trees.items():
            try:
                answers, facts = derived_answers(name, **self.workload())
            except ValueError as e:
                problems.append(str(e))
                continue
            if name == "framework":
                answers = {**answers, **(keep or {})}
            questionnaire.set_answers(answers, facts)
        self.derive_status.value = error_html(problems[0]) if problems else (
            "<span style='color:#2a9d8f'>answered from the numbers above</span>")


def questionnaire(model: str = "llama-3-8b", gpu: str = "h100-sxm",
                  framework_answers: dict | None = None, **workload) -> Questionnaire:
    """The interactive questionnaire, answered from these numbers to start with."""
    return Questionnaire(model, gpu, framework_answers, **workload)
