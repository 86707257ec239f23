"""The capacity calculator as ipywidgets: controls wired to capacity_view, a result table,
the arithmetic in words, other tensor-parallel sizes, and the figures.

Nothing is computed here: every change calls capacity_view (the function the notebook also
calls at top level), and a ValueError it raises is shown in place of the results, naming the
field to fix.
"""

from __future__ import annotations

import html
import inspect

import ipywidgets as widgets

from workbench.plan import MODELS, hardware_catalog
from workbench.plan.hardware import get_hardware
from workbench.plan.step_params import efficiency_for
from workbench.widgets.capacity import CapacityView, capacity_view
from workbench.widgets.capacity_figures import capacity_figures
from workbench.widgets.capacity_whatif import tp_options
from workbench.widgets.held_refresh import HeldRefresh
from workbench.widgets.html import error_html, rows_html, show_in

PRECISIONS = ["bf16", "fp16", "fp8", "int8", "int4", "fp32"]
KV_DTYPES = ["auto", "bf16", "fp16", "fp8", "int8"]
AUTO = 0  # the tp dropdown's value for "let auto_tp choose" (None is not a valid selection)
STYLE = {"description_width": "170px"}
LAYOUT = widgets.Layout(width="330px")

GROUPS = {
    "Model and hardware": ("model", "gpu", "precision", "kv_dtype", "tp", "reserve_fraction",
                           "max_num_seqs", "max_num_batched_tokens"),
    "Traffic and SLOs": ("rate_rps", "prompt_tokens", "output_tokens", "context",
                         "tpot_slo_ms", "ttft_slo_ms"),
    "Efficiency and cost": ("memory_efficiency", "compute_efficiency", "utilization",
                            "price_per_hour"),
}
LABELS = {"rate_rps": "requests/s", "prompt_tokens": "prompt tokens",
          "output_tokens": "output tokens", "context": "max context (tokens)",
          "tpot_slo_ms": "TPOT SLO (ms)", "ttft_slo_ms": "TTFT SLO (ms, 0 = none)",
          "tp": "GPUs per replica", "kv_dtype": "KV cache dtype",
          "reserve_fraction": "memory reserve", "memory_efficiency": "MBU (of peak bandwidth)",
          "compute_efficiency": "MFU (of peak FLOPs)", "utilization": "target utilization",
          "price_per_hour": "$ per GPU-hour", "max_num_seqs": "max sequences (0 = any)",
          "max_num_batched_tokens": "max batched tokens (0 = any)"}


def capacity_defaults() -> dict:
    """capacity_view's own defaults: one source for the function, the widget and notebook 05."""
    return {k: p.default for k, p in inspect.signature(capacity_view).parameters.items()}


def _control(name: str, value) -> widgets.ValueWidget:
    kw = dict(description=LABELS.get(name, name), style=STYLE, layout=LAYOUT)
    if name == "model":
        return widgets.Dropdown(options=sorted({*MODELS, value}), value=value, **kw)
    if name == "gpu":
        return widgets.Dropdown(options=list(hardware_catalog()), value=value, **kw)
    if name in ("precision", "kv_dtype"):
        options = PRECISIONS if name == "precision" else KV_DTYPES
        return widgets.Dropdown(options=options, value=value, **kw)
    if name == "tp":
        sizes = sorted({1, 2, 4, 8, value or 1})
        return widgets.Dropdown(options=[("auto", AUTO), *((str(t), t) for t in sizes)],
                                value=value or AUTO, **kw)
    if name in ("memory_efficiency", "compute_efficiency", "utilization"):
        return widgets.FloatSlider(value=value, min=0.05, max=1.0, step=0.05,
                                   continuous_update=False, **kw)
    if name == "reserve_fraction":
        return widgets.FloatSlider(value=value, min=0.0, max=0.5, step=0.01,
                                   continuous_update=False, **kw)
    if name in ("context", "prompt_tokens", "output_tokens"):
        return widgets.IntText(value=value, **kw)
    if name in ("max_num_seqs", "max_num_batched_tokens"):   # engine limits; 0 = none
        return widgets.IntText(value=value or 0, **kw)
    # Unbounded on purpose: capacity_view checks the values and says what is wrong.
    return widgets.FloatText(value=value or 0.0, **kw)


class CapacityCalculator(HeldRefresh, widgets.VBox):
    """Change any control and the view, the table and the figures follow."""

    def __init__(self, **defaults):
        params = capacity_defaults()
        unknown = sorted(set(defaults) - set(params))
        if unknown:
            raise ValueError(f"{unknown[0]}: not an input of capacity_view; allowed: "
                             f"{', '.join(params)}")
        params |= defaults
        if params["price_per_hour"] is None:  # show the catalog price, editable
            params["price_per_hour"] = get_hardware(params["gpu"]).price_per_hour
        fitted = efficiency_for(params["gpu"])   # show the fitted MBU / MFU, editable
        for name, value in (("memory_efficiency", fitted.memory),
                            ("compute_efficiency", fitted.compute)):
            if params[name] is None:
                params[name] = round(value, 2)
        self.controls = {name: _control(name, params[name]) for group in GROUPS.values()
                         for name in group}
        self.view: CapacityView | None = None
        self.error: str | None = None
        self.figures: list = []
        self.summary = widgets.HTML()
        self.explanation = widgets.HTML(layout=widgets.Layout(max_width="640px"))
        self.alternatives = widgets.HTML()
        self.plots = widgets.Output()
        columns = [widgets.VBox([widgets.HTML(f"<b>{title}</b>"),
                                 *(self.controls[n] for n in names)])
                   for title, names in GROUPS.items()]
        super().__init__([widgets.HBox(columns),
                          widgets.HBox([self.summary, self.explanation]),
                          self.alternatives, self.plots])
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self.refresh()

    def values(self) -> dict:
        """The controls as capacity_view arguments."""
        v = {name: c.value for name, c in self.controls.items()}
        v["tp"] = v["tp"] or None
        v["ttft_slo_ms"] = v["ttft_slo_ms"] or None
        v["max_num_seqs"] = v["max_num_seqs"] or None
        v["max_num_batched_tokens"] = v["max_num_batched_tokens"] or None
        return v

    def _changed(self, change) -> None:
        if self._held:
            return
        if change["owner"] is self.controls["gpu"]:
            with self.hold():  # a new GPU brings its catalog price; edit it afterwards
                self.controls["price_per_hour"].value = get_hardware(change["new"]).price_per_hour
            return
        self.refresh()

    def refresh(self) -> None:
        try:
            view = capacity_view(**self.values())
        except ValueError as e:
            self.view, self.error, self.figures = None, str(e), []
            self.summary.value = error_html(str(e))
            self.explanation.value = self.alternatives.value = ""
            show_in(self.plots, [])
            return
        self.view, self.error = view, None
        self.summary.value = rows_html(view.rows(), ("quantity", "value"))
        self.explanation.value = "<ul>" + "".join(
            f"<li>{html.escape(line)}</li>" for line in view.explanation.splitlines()) + "</ul>"
        options = tp_options(view)
        self.alternatives.value = "<b>Other GPUs per replica</b>" + rows_html(
            [tuple(r.values()) for r in options], tuple(options[0])) if options else ""
        self.figures = capacity_figures(view)
        show_in(self.plots, self.figures)


def capacity_calculator(**defaults) -> CapacityCalculator:
    """The interactive calculator, starting from capacity_view's defaults updated by these."""
    return CapacityCalculator(**defaults)
