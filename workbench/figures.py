"""Plotly figures shared by the notebooks and reports (notebooks stay thin)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#264653", "#e76f51", "#2a9d8f", "#e9c46a", "#8ab17d"]  # one colour per series


def latency_cdfs(runs: dict, metrics=("ttft", "tpot", "e2e")) -> go.Figure:
    """Empirical CDFs of per-request latencies; `runs` maps a label to a requests DataFrame."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m.upper() for m in metrics])
    for i, m in enumerate(metrics, start=1):
        for k, (label, df) in enumerate(runs.items()):
            v = np.sort(df[m].dropna().to_numpy()) * 1e3
            fig.add_trace(go.Scatter(x=v, y=np.arange(1, len(v) + 1) / max(1, len(v)),
                                     name=label, legendgroup=label, showlegend=i == 1,
                                     mode="lines", line=dict(color=PALETTE[k % len(PALETTE)])),
                          row=1, col=i)
        fig.update_xaxes(title_text="ms", row=1, col=i)
    fig.update_yaxes(title_text="share of requests", row=1, col=1)
    fig.update_layout(height=330, margin=dict(t=40, b=40))
    return fig


def engine_timeline(steps, title: str = "engine timeline") -> go.Figure:
    """Batch size, KV blocks in use and queue length over time, one point per step.

    Time counts from the first step (engine telemetry is on the engine's monotonic clock)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["sequences in the step", "KV blocks used", "waiting"])
    t = steps["t_start"] - steps["t_start"].min()
    fig.add_trace(go.Scatter(x=t, y=steps["num_seqs"], mode="lines", name="seqs"), 1, 1)
    fig.add_trace(go.Scatter(x=t, y=steps["kv_blocks_used"], mode="lines", name="KV"), 2, 1)
    fig.add_trace(go.Scatter(x=t, y=steps["num_waiting"], mode="lines", name="waiting"), 3, 1)
    fig.update_xaxes(title_text="seconds since the first step", row=3, col=1)
    fig.update_layout(height=480, showlegend=False, title=title, margin=dict(t=60, b=40))
    return fig


def step_residuals(fit, steps) -> go.Figure:
    """Measured vs predicted step time, and the relative residuals."""
    measured = (steps["t_end"] - steps["t_start"]).to_numpy() * 1e3
    predicted = fit.predict(steps) * 1e3
    fig = make_subplots(rows=1, cols=2, subplot_titles=["predicted vs measured (ms)",
                                                        "relative error vs measured"])
    fig.add_trace(go.Scatter(x=measured, y=predicted, mode="markers", marker=dict(size=4),
                             name="steps"), 1, 1)
    top = float(max(measured.max(), predicted.max()))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="y = x",
                             line=dict(dash="dash")), 1, 1)
    fig.add_trace(go.Scatter(x=measured, y=predicted / measured - 1, mode="markers",
                             marker=dict(size=4), name="residual"), 1, 2)
    fig.update_layout(height=330, showlegend=False, margin=dict(t=40, b=40))
    return fig


def throughput_latency(frame, latency: str = "ttft_p90") -> go.Figure:
    """A sweep's curve: throughput against offered rate, and a latency percentile."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["throughput vs offered rate",
                                                        f"{latency} vs throughput"])
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["request_throughput"],
                             mode="lines+markers", name="req/s"), 1, 1)
    fig.add_trace(go.Scatter(x=frame["rate"], y=frame["rate"], mode="lines", name="offered",
                             line=dict(dash="dash")), 1, 1)
    fig.add_trace(go.Scatter(x=frame["request_throughput"], y=frame[latency] * 1e3,
                             mode="lines+markers", name=latency), 1, 2)
    fig.update_xaxes(title_text="offered req/s", row=1, col=1)
    fig.update_xaxes(title_text="completed req/s", row=1, col=2)
    fig.update_yaxes(title_text="ms", row=1, col=2)
    fig.update_layout(height=330, showlegend=False, margin=dict(t=40, b=40))
    return fig


def goodput_curve(evaluations, title: str = "goodput vs offered rate") -> go.Figure:
    """Capacity-search evaluations (rate, goodput, met) as a curve."""
    evs = sorted(evaluations, key=lambda e: e.rate)
    fig = go.Figure(go.Scatter(
        x=[e.rate for e in evs], y=[e.goodput for e in evs], mode="lines+markers",
        marker=dict(color=["#2a9d8f" if e.met else "#e76f51" for e in evs], size=9),
        text=["meets SLOs" if e.met else "misses SLOs" for e in evs]))
    fig.update_layout(title=title, xaxis_title="offered req/s", yaxis_title="goodput (req/s)",
                      height=330, margin=dict(t=50, b=40))
    return fig


def bar(labels, values, title: str, unit: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values)))
    fig.update_layout(title=title, yaxis_title=unit, height=320, margin=dict(t=50, b=40))
    return fig


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
    fig.update_layout(title="when each request finished", xaxis_title="output tokens requested",
                      yaxis_title="seconds after submission", height=360,
                      margin=dict(t=50, b=40))
    return fig


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
    fig.update_layout(title="throughput and goodput vs offered rate", xaxis_title="offered req/s",
                      yaxis_title="req/s", height=340, margin=dict(t=50, b=40))
    return fig
