"""The framework feature matrix as a colour-coded table: support at a glance, caveats on hover
in the notebook's source table (workbench.plan.frameworks keeps the sources)."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.plan.frameworks import FEATURES, feature_matrix

SUPPORT_COLOURS = {"yes": "#cfe8d5", "partial": "#fbe7b5", "via backend": "#fbe7b5",
                   "no": "#f6d0c8", "planned": "#e4e4e4"}
NEUTRAL = "#ffffff"


def feature_matrix_figure() -> go.Figure:
    rows = feature_matrix()
    columns = ["framework", *FEATURES]
    values = [[r[c] for r in rows] for c in columns]
    fills = [[SUPPORT_COLOURS.get(v, NEUTRAL) for v in col] if c != "framework"
             else ["#f4f4f4"] * len(rows) for c, col in zip(columns, values)]
    widths = [1.1 if c == "framework" else (3.2 if c == "quantization_formats" else 1.0)
              for c in columns]
    fig = go.Figure(go.Table(
        columnwidth=widths,
        header=dict(values=[f"<b>{c.replace('_', ' ')}</b>" for c in columns],
                    fill_color="#264653", font=dict(color="white", size=12), align="left"),
        cells=dict(values=values, fill_color=fills, align="left", height=30,
                   font=dict(size=12))))
    fig.update_layout(title="Serving frameworks: features (green yes, amber partial or via a "
                            "backend, red no, grey planned)",
                      height=100 + 36 * len(rows), margin=dict(t=50, b=10, l=10, r=10))
    return fig
