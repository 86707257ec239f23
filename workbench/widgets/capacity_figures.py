"""Plotly figures of a capacity view: memory of one GPU, the batch trade-off, cost against
traffic. Each reads capacity.py / capacity_whatif.py results and computes nothing new."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures import PALETTE
from workbench.widgets.capacity import CapacityView
from workbench.widgets.capacity_whatif import batch_curve, rate_curve

MEMORY_COLOURS = {"weights": PALETTE[0], "KV in use": PALETTE[1], "KV free": PALETTE[2],
                  "reserve": "#bbbbbb"}
SLO_LINE = dict(color="#c0392b", dash="dash", width=1.5)
MARGIN = dict(t=60, b=45, l=70, r=70)


def capacity_figures(view: CapacityView) -> list[go.Figure]:
    return [memory_figure(view), batch_figure(view), fleet_figure(view)]


def memory_figure(view: CapacityView) -> go.Figure:
    """One GPU's memory as a stacked bar: what the operating batch uses and what is left."""
    fig = go.Figure()
    for part, gb in view.memory_breakdown.items():
        fig.add_trace(go.Bar(
            y=[""], x=[gb], name=f"{part} {gb:.1f} GB", orientation="h",
            marker_color=MEMORY_COLOURS[part], text=[f"{part}<br>{gb:.1f} GB"],
            textposition="inside", insidetextanchor="middle",
            hovertemplate=f"{part}: %{{x:.2f}} GB<extra></extra>"))
    fig.update_layout(
        barmode="stack", height=190, margin=dict(t=50, b=40, l=20, r=20), showlegend=False,
        title=(f"Memory of one {view.gpu} ({view.gpu_memory_gb:g} GB, TP {view.tp}): "
               f"{view.batch} sequences in use of {view.max_concurrent_seqs} that fit"))
    fig.update_xaxes(title_text="GB", range=[0, view.gpu_memory_gb])
    return fig


def batch_figure(view: CapacityView) -> go.Figure:
    """TPOT (decode step + the prefills it carries) and throughput against the batch; the SLO
    and the operating batch marked."""
    rows = batch_curve(view)
    b = [r["batch"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=b, y=[r["decode_ms"] for r in rows], name="decode step",
                             mode="lines", stackgroup="tpot", line_color=PALETTE[0]))
    fig.add_trace(go.Scatter(x=b, y=[r["prefill_share_ms"] for r in rows],
                             name="+ prefills per step (= TPOT)", mode="lines",
                             stackgroup="tpot", line_color=PALETTE[3]))
    fig.add_trace(go.Scatter(x=b, y=[r["output_tokens_per_s"] for r in rows],
                             name="output tokens/s per replica", mode="lines",
                             line=dict(color=PALETTE[2], width=3)), secondary_y=True)
    fig.add_hline(y=view.inputs["tpot_slo_ms"], line=SLO_LINE,
                  annotation_text=f"TPOT SLO {view.inputs['tpot_slo_ms']:g} ms",
                  annotation_position="top left")
    fig.add_trace(go.Scatter(x=[view.batch], y=[view.tpot_ms], mode="markers",
                             name="operating batch",
                             marker=dict(size=12, color=PALETTE[1], symbol="diamond")))
    fig.add_annotation(  # log axes place annotations by log10(x)
        x=math.log10(view.batch), y=view.tpot_ms, ax=-90, ay=-45, bgcolor="rgba(255,255,255,0.85)",
        text=f"batch {view.batch}: {view.tpot_ms:.1f} ms, {view.output_tokens_per_s:,.0f} tok/s")
    fig.update_xaxes(title_text="sequences decoding together (batch)", type="log",
                     tickvals=[t for t in _one_two_five(max(b)) if t <= max(b)])
    fig.update_yaxes(title_text="ms per output token", rangemode="tozero", secondary_y=False)
    # tickmode auto: plotly.js otherwise syncs an overlaying axis's ticks to odd values.
    fig.update_yaxes(title_text="output tokens/s", rangemode="tozero", secondary_y=True,
                     showgrid=False, tickmode="auto")
    fig.update_layout(height=360, margin=MARGIN, legend=dict(orientation="h", y=-0.25),
                      title="One replica: latency and throughput against the batch")
    return fig


def fleet_figure(view: CapacityView) -> go.Figure:
    """$ per month steps up with each replica bought; $ per 1M output tokens falls as the
    replicas fill, then jumps when the next one is added."""
    rows = rate_curve(view)
    rate = [r["rate_rps"] for r in rows]
    f = view.fleet
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(
        x=rate, y=[r["monthly_cost"] for r in rows], name="$ per month (always on)",
        mode="lines", line=dict(shape="hv", color=PALETTE[0], width=3),
        customdata=[r["replicas"] for r in rows],
        hovertemplate="%{x:.2f} req/s: $%{y:,.0f}/month, %{customdata} replicas<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=rate, y=[r["cost_per_million_output_tokens"] for r in rows],
        name="$ per 1M output tokens", mode="lines", line=dict(color=PALETTE[1])),
        secondary_y=True)
    fig.add_trace(go.Scatter(
        x=[f.rate_rps], y=[f.monthly_cost], mode="markers+text", name="this rate",
        marker=dict(size=12, color=PALETTE[1], symbol="diamond"),
        text=[f"{f.rate_rps:g} req/s: {f.replicas} x {view.tp} GPU, ${f.monthly_cost:,.0f}"],
        textposition="top left"))
    fig.update_xaxes(title_text="requests per second", rangemode="tozero")
    fig.update_yaxes(title_text="$ per month", rangemode="tozero", secondary_y=False,
                     tickprefix="$")
    # A trickle of traffic on a whole replica costs a fortune per token: clip that spike.
    fig.update_yaxes(title_text="$ per 1M output tokens", secondary_y=True, showgrid=False,
                     range=[0, 4 * f.cost_per_million_output_tokens], tickprefix="$",
                     tickformat=".2f", tickmode="auto")
    fig.update_layout(height=360, margin=MARGIN, legend=dict(orientation="h", y=-0.25),
                      title=(f"Fleet: cost against traffic (target utilization "
                             f"{view.inputs['utilization']:.0%}, ${view.price_per_gpu_hour:.2f}"
                             "/GPU-hour)"))
    return fig


def _one_two_five(top: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to past `top`: readable ticks on a log axis."""
    ticks, decade = [], 1
    while decade <= top:
        ticks += [decade, 2 * decade, 5 * decade]
        decade *= 10
    return ticks
