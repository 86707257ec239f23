"""Plotly figures shared by the notebooks and reports (notebooks stay thin).

Every figure labels each axis with its unit and shows a legend naming each series, so a
reader of a static report can tell what a colour or a dashed line means without the code.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d"]  # one colour per series
PASS, FAIL = "#2a9d8f", "#e76f51"
METRIC_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "itl": "ITL"}
# Legend above the plot area, left-aligned: it never covers data and survives narrow pages.
LEGEND = dict(orientation="h", yanchor="bottom", y=1.08, xanchor="left", x=0)


def _finish(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(height=height, showlegend=True, legend=LEGEND,
                      margin=dict(t=90 if title is None else 110, b=50, l=70, r=30))
    if title is not None:
        fig.update_layout(title=dict(text=title, x=0, xref="paper", y=1, yref="container",
                                     yanchor="top", pad=dict(t=12)))
    return fig


def latency_cdfs(runs: dict, metrics=("ttft", "tpot", "e2e"), slos: dict | None = None,
                 percentile: float | None = None) -> go.Figure:
    """Empirical CDFs of per-request latencies; `runs` maps a label to a requests DataFrame.

    With `slos` (metric -> seconds) each panel gets the target as a dashed vertical line, and
    with `percentile` the SLO's share of requests as a dotted horizontal one."""
    names = [METRIC_LABELS.get(m, m.upper()) for m in metrics]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=names, shared_yaxes=True)
    for i, m in enumerate(metrics, start=1):
        right = 0.0
        for k, (label, df) in enumerate(runs.items()):
            v = np.sort(df[m].dropna().to_numpy()) * 1e3
            right = max(right, float(v.max()) if len(v) else 0.0)
            fig.add_trace(go.Scatter(x=v, y=np.arange(1, len(v) + 1) / max(1, len(v)),
                                     name=label, legendgroup=label, showlegend=i == 1,
                                     mode="lines", line=dict(color=PALETTE[k % len(PALETTE)])),
                          row=1, col=i)
        if slos and m in slos:
            right = max(right, slos[m] * 1e3)
            fig.add_trace(go.Scatter(x=[slos[m] * 1e3] * 2, y=[0, 1], mode="lines",
                                     name="SLO target", legendgroup="slo",
                                     showlegend=not any(t.name == "SLO target" for t in fig.data),
                                     line=dict(color="#888", dash="dash")), row=1, col=i)
        if percentile:
            name = f"p{percentile:g} (the SLO's share of requests)"
            fig.add_trace(go.Scatter(x=[0, right * 1.02], y=[percentile / 100] * 2,
                                     mode="lines", name=name, legendgroup="pct",
                                     showlegend=i == 1, line=dict(color="#bbb", dash="dot")),
                          row=1, col=i)
        fig.update_xaxes(title_text=f"{names[i - 1]} (ms)", rangemode="tozero", row=1, col=i)
    fig.update_yaxes(title_text="share of requests", tickformat=".0%", row=1, col=1)
    return _finish(fig, 360)


def engine_timeline(steps, title: str = "engine timeline") -> go.Figure:
    """Batch size, KV blocks in use and queue length over time, one point per step.

    Time counts from the first step (engine telemetry is on the engine's monotonic clock)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["sequences in the step", "KV cache blocks",
                                        "requests waiting"])
    t = steps["t_start"] - steps["t_start"].min()
    fig.add_trace(go.Scatter(x=t, y=steps["num_seqs"], mode="lines", name="sequences per step",
                             line=dict(color=PALETTE[0])), 1, 1)
    fig.add_trace(go.Scatter(x=t, y=steps["kv_blocks_used"], mode="lines",
                             name="KV blocks in use", line=dict(color=PALETTE[2])), 2, 1)
    if "kv_blocks_total" in steps:
        fig.add_trace(go.Scatter(x=t, y=steps["kv_blocks_total"], mode="lines",
                                 name="KV blocks in the pool",
                                 line=dict(color=PALETTE[2], dash="dash")), 2, 1)
    fig.add_trace(go.Scatter(x=t, y=steps["num_waiting"], mode="lines",
                             name="requests waiting", line=dict(color=PALETTE[1])), 3, 1)
    for row, unit in ((1, "sequences"), (2, "blocks"), (3, "requests")):
        fig.update_yaxes(title_text=unit, rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="seconds since the first step (s)", row=3, col=1)
    return _finish(fig, 560, title)


def step_residuals(fit, steps) -> go.Figure:
    """Measured vs predicted step time, and the relative residuals."""
    measured = (steps["t_end"] - steps["t_start"]).to_numpy() * 1e3
    predicted = fit.predict(steps) * 1e3
    fig = make_subplots(rows=1, cols=2, subplot_titles=["predicted vs measured step time",
                                                        "relative error of the prediction"])
    fig.add_trace(go.Scatter(x=measured, y=predicted, mode="markers", marker=dict(size=4,
                             color=PALETTE[0]), name="profiled steps"), 1, 1)
    top = float(max(measured.max(), predicted.max()))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="perfect prediction",
                             line=dict(dash="dash", color="#888")), 1, 1)
    fig.add_trace(go.Scatter(x=measured, y=predicted / measured - 1, mode="markers",
                             marker=dict(size=4, color=PALETTE[1]),
                             name="relative error (predicted / measured − 1)"), 1, 2)
    fig.update_xaxes(title_text="measured step time (ms)", row=1, col=1)
    fig.update_yaxes(title_text="predicted step time (ms)", row=1, col=1)
    fig.update_xaxes(title_text="measured step time (ms)", row=1, col=2)
    fig.update_yaxes(title_text="relative error", tickformat=".0%", row=1, col=2)
    return _finish(fig, 380)


def throughput_latency(frame, latency: str = "ttft_p90") -> go.Figure:
    """A sweep's curve: throughput against offered rate, and a latency percentile."""
    metric, _, p = latency.rpartition("_p")
    label = f"{METRIC_LABELS.get(metric, metric)} p{p}" if p.isdigit() else latency
    fig = make_subplots(rows=1, cols=2, subplot_titles=["throughput vs offered rate",
                                                        f"{label} vs throughput"])
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["request_throughput"],
                             mode="lines+markers", name="completed req/s",
                             line=dict(color=PALETTE[0])), 1, 1)
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["rate"], mode="lines", name="offered",
                             line=dict(dash="dash", color="#888")), 1, 1)
    fig.add_trace(go.Scatter(x=frame["request_throughput"], y=frame[latency] * 1e3,
                             mode="lines+markers", name=label,
                             line=dict(color=PALETTE[1])), 1, 2)
    fig.update_xaxes(title_text="offered load (req/s)", row=1, col=1)
    fig.update_yaxes(title_text="completed (req/s)", row=1, col=1)
    fig.update_xaxes(title_text="completed (req/s)", row=1, col=2)
    fig.update_yaxes(title_text=f"{label} (ms)", row=1, col=2)
    return _finish(fig, 380)


def goodput_curve(evaluations, title: str = "goodput vs offered rate",
                  target_rate: float | None = None) -> go.Figure:
    """Capacity-search evaluations (rate, goodput, met) as a curve; green points meet every
    SLO, red ones miss at least one; `target_rate` marks the scenario's offered load."""
    evs = sorted(evaluations, key=lambda e: e.rate)
    fig = go.Figure(go.Scatter(x=[e.rate for e in evs], y=[e.goodput for e in evs],
                               mode="lines", name="goodput", line=dict(color=PALETTE[0])))
    for met, name, colour in ((True, "meets every SLO", PASS), (False, "misses an SLO", FAIL)):
        pts = [e for e in evs if e.met == met]
        fig.add_trace(go.Scatter(x=[e.rate for e in pts], y=[e.goodput for e in pts],
                                 mode="markers", name=name, showlegend=True,
                                 marker=dict(color=colour, size=10)))
    if target_rate:
        top = max([e.goodput for e in evs] + [target_rate])
        fig.add_trace(go.Scatter(x=[target_rate] * 2, y=[0, top], mode="lines",
                                 name=f"scenario's rate ({target_rate:g} req/s)",
                                 line=dict(color="#888", dash="dash")))
    rates = [e.rate for e in evs if e.rate]
    wide = bool(rates) and max(rates) > 20 * min(rates)  # the search doubles: log spacing
    fig.update_xaxes(title_text="offered load (req/s)" + (", log scale" if wide else ""),
                     type="log" if wide else "linear")
    fig.update_yaxes(title_text="goodput: requests meeting every SLO (req/s)", rangemode="tozero")
    return _finish(fig, 380, title)


def bar(labels, values, title: str, unit: str, name: str | None = None,
        xaxis_title: str = "") -> go.Figure:
    """One bar per label; `unit` is the y axis title, `name` the legend entry."""
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), name=name or unit, showlegend=True,
                           marker=dict(color=PALETTE[0])))
    fig.update_xaxes(title_text=xaxis_title)
    fig.update_yaxes(title_text=unit)
    return _finish(fig, 360, title)


def completion_order(runs: dict) -> go.Figure:
    """When each request finished against how many tokens it asked for, per batching policy.

    Under static batching short requests finish with the longest one of their batch (the
    horizontal bands); under continuous batching finish time follows the request's own length.
    `runs` maps a label to a requests DataFrame whose requests all arrived together."""
    fig = go.Figure()
    for k, (label, df) in enumerate(runs.items()):
        fig.add_trace(go.Scatter(x=df["output_tokens"], y=df["finish"] - df["arrival"].min(),
                                 mode="markers", name=label,
                                 marker=dict(size=7, color=PALETTE[k % len(PALETTE)])))
    fig.update_xaxes(title_text="output tokens requested (tokens)")
    fig.update_yaxes(title_text="finished after submission (s)")
    return _finish(fig, 380, "when each request finished")


def sweep_goodput(frame) -> go.Figure:
    """A sweep's goodput (requests meeting every SLO, per second) against offered rate."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["request_throughput"],
                             mode="lines+markers", name="completed req/s",
                             line=dict(color=PALETTE[0])))
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["goodput"], mode="lines+markers",
                             name="goodput (meets SLOs)", line=dict(color=PALETTE[2])))
    saturated = frame[frame["saturated"]]
    fig.add_trace(go.Scatter(x=saturated["rate"], y=saturated["request_throughput"],
                             mode="markers", name="saturated",
                             marker=dict(symbol="x", size=12, color=PALETTE[1])))
    fig.update_xaxes(title_text="offered load (req/s)")
    fig.update_yaxes(title_text="requests per second (req/s)")
    return _finish(fig, 380, "throughput and goodput vs offered rate")


def precision_tradeoff(report) -> go.Figure:
    """A quant report (workbench.quant_report) at a glance: per precision, what the weights
    weigh, how fast batch-1 and batch-16 decode run, and how far next-token predictions move
    from the unquantized model's (KL, nats)."""
    labels = list(report.index)
    panels = (("weight MB", report["weight_bytes"] / 1e6),
              ("decode tok/s, batch 1", report["decode_tok_s_batch1"]),
              ("decode tok/s, batch 16", report["decode_tok_s_batch16"]),
              ("KL vs unquantized (nats)", report["mean_kl"]))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels],
                        horizontal_spacing=0.06)
    for i, (title, values) in enumerate(panels, start=1):
        fig.add_bar(x=labels, y=list(values), name=title, showlegend=False, row=1, col=i,
                    marker=dict(color=PALETTE[(i - 1) % len(PALETTE)]))
    a = report.attrs
    return _finish(fig, 380, f"weight precision on {a.get('model')} ({a.get('dtype')})")
