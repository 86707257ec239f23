"""Thin ipywidgets front-ends over workbench.plan: the capacity / cost calculator and the
decision-tree questionnaire.

The arithmetic lives in pure functions (capacity_view, questionnaire_view, ...) that tests and
notebooks call directly; the widgets only wire controls to them and display what they return.
Importing this package imports no ipywidgets: the widget classes load on first use.
"""

from workbench.widgets.capacity import (
    CapacityView,
    Fleet,
    capacity_view,
    fleet_at_rate,
    fleet_for,
    replicas_needed,
)
from workbench.widgets.capacity_figures import capacity_figures
from workbench.widgets.capacity_whatif import (
    batch_curve,
    compare_hardware,
    rate_curve,
    tp_options,
)
from workbench.widgets.matrix_figure import feature_matrix_figure
from workbench.widgets.questionnaire import (
    decisions_table,
    deployment_decisions,
    derived_answers,
    explain_decision,
    feature_matrix_frame,
    feature_sources_frame,
    questionnaire_view,
    tree_questions,
)
from workbench.widgets.tree_figure import tree_figure


def capacity_calculator(**defaults):
    """The interactive capacity calculator (an ipywidgets VBox); see capacity_widget."""
    from workbench.widgets.capacity_widget import capacity_calculator as make

    return make(**defaults)


def questionnaire(model: str = "llama-3-8b", gpu: str = "h100-sxm",
                  framework_answers: dict | None = None, **workload):
    """The interactive decision-tree questionnaire; see questionnaire_widget."""
    from workbench.widgets.questionnaire_widget import questionnaire as make

    return make(model, gpu, framework_answers, **workload)


__all__ = [
    "CapacityView", "Fleet", "batch_curve", "capacity_calculator", "capacity_figures",
    "capacity_view", "compare_hardware", "decisions_table", "deployment_decisions",
    "derived_answers", "explain_decision",
    "feature_matrix_figure", "feature_matrix_frame", "feature_sources_frame", "fleet_at_rate",
    "fleet_for", "questionnaire", "questionnaire_view", "rate_curve", "replicas_needed",
    "tp_options", "tree_figure", "tree_questions",
]
