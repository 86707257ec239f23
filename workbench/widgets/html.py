"""Small HTML fragments for widget outputs (values escaped), and figures into an Output."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence

TABLE_STYLE = "border-collapse:collapse;font-size:13px;margin:4px 12px 4px 0"
CELL_STYLE = "padding:2px 10px;border-bottom:1px solid #e5e5e5;text-align:left"


def rows_html(rows: Iterable[Sequence], header: Sequence[str]) -> str:
    head = "".join(f"<th style='{CELL_STYLE}'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='{CELL_STYLE}'>{html.escape(str(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table style='{TABLE_STYLE}'><tr>{head}</tr>{body}</table>"


def error_html(message: str) -> str:
    return (f"<div style='color:#c0392b;padding:6px 0'><b>cannot compute:</b> "
            f"{html.escape(message)}</div>")


def show_in(out, figures: Iterable) -> None:
    """Make an ipywidgets.Output show these plotly figures (and nothing else).

    The widget's `outputs` are set directly instead of capturing display() inside `with out:`.
    Capturing sends outputs through nbclient's Output-widget hook during headless runs
    (papermill, `jupyter execute`), and that hook writes to the kernel's shell channel while
    the cell's reply is awaited on it: the reply can be missed until the cell timeout, or for
    ever without one. Setting the state also works outside a kernel, so tests see the figures.
    """
    out.outputs = tuple({"output_type": "display_data", "data": figure_bundle(fig),
                         "metadata": {}} for fig in figures)


def figure_bundle(fig) -> dict:
    """The mime bundle a kernel would display for `fig` (honouring pio.renderers.default),
    always with plotly's own JSON so JupyterLab can draw it, and a text fallback."""
    bundle = dict(fig._repr_mimebundle_() or {})
    if "application/vnd.plotly.v1+json" not in bundle:  # to_json: numpy arrays become lists
        bundle["application/vnd.plotly.v1+json"] = json.loads(fig.to_json())
    bundle.setdefault("text/plain", f"<Figure: {fig.layout.title.text or 'plotly'}>")
    return bundle
