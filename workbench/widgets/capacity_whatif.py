"""Variants of one capacity view: the batch trade-off, the fleet against traffic, and other
tensor-parallel sizes. Pure data for the figures and tables; the arithmetic is
workbench.plan.capacity_analytic's."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from workbench.plan.budget import ModelDoesNotFitError, tp_sizes
from workbench.plan.models_catalog import get_model
from workbench.plan.trees.answers import GPUS_PER_NODE
from workbench.widgets.capacity import CapacityView, capacity_view, fleet_for, setup_of


def batch_curve(view: CapacityView, points: int = 40) -> list[dict]:
    """TPOT and one replica's throughput from batch 1 to the most sequences that fit,
    geometrically spaced (plus the operating batch itself)."""
    setup = setup_of(view)
    top = max(1, view.max_concurrent_seqs)
    batches = sorted({*np.unique(np.geomspace(1, top, points).round().astype(int)).tolist(),
                      view.batch})
    rows = []
    for b in batches:
        at = setup.at_batch(b, view.tp)
        rows.append({"batch": b, "decode_ms": at.decode_step_s * 1e3,
                     "prefill_share_ms": at.prefill_per_step_s * 1e3,
                     "tpot_ms": at.tpot_s * 1e3,
                     "output_tokens_per_s": at.output_tokens_per_s,
                     "requests_per_s": at.requests_per_s,
                     "kv_gb": b * view.kv_mb_per_sequence / 1e3})
    return rows


def rate_curve(view: CapacityView, up_to: float | None = None, points: int = 120) -> list[dict]:
    """Replicas and cost from a trickle up to `up_to` requests/s (default: twice the rate):
    the steps where another replica is bought, and how $ per 1M tokens saw-tooths between."""
    top = up_to or 2 * view.fleet.rate_rps
    rows = []
    for rate in np.linspace(top / points, top, points).tolist() + [view.fleet.rate_rps]:
        f = fleet_for(view, rate)
        rows.append({"rate_rps": rate, "replicas": f.replicas, "gpus": f.gpus,
                     "utilization": f.utilization, "monthly_cost": f.monthly_cost,
                     "cost_per_million_output_tokens": f.cost_per_million_output_tokens})
    return sorted(rows, key=lambda r: r["rate_rps"])


def tp_options(view: CapacityView, max_tp: int = GPUS_PER_NODE) -> list[dict]:
    """The same workload at every tensor-parallel size within a node that fits: what bigger
    replicas would change. All-reduce time is not modelled, so over PCIe the larger sizes look
    better than they are."""
    rows = []
    for tp in tp_sizes(get_model(view.inputs["model"]), max_tp):
        try:
            v = capacity_view(**{**view.inputs, "tp": tp})
        except ModelDoesNotFitError:
            continue
        f = v.fleet
        rows.append({"gpus_per_replica": tp, "batch": v.batch, "tpot_ms": round(v.tpot_ms, 2),
                     "tpot_slo_met": v.tpot_slo_met,
                     "output_tokens_per_s_per_gpu": round(v.output_tokens_per_s / tp),
                     "replicas": f.replicas, "gpus": f.gpus,
                     "monthly_cost": round(f.monthly_cost),
                     "cost_per_million_output_tokens": round(f.cost_per_million_output_tokens, 4),
                     "chosen": tp == view.tp})
    return rows


def compare_hardware(view: CapacityView, gpus: Iterable[str],
                     precisions: Iterable[str]) -> list[dict]:
    """The same workload and SLOs on other GPUs and precisions, cheapest first, each with
    GPUs per replica chosen by auto_tp at its catalog price (a price given for the view's own
    GPU is kept for it). Combinations that cannot run say why instead."""
    rows = []
    for gpu in gpus:
        for precision in precisions:
            own_price = view.inputs["price_per_hour"] if gpu == view.inputs["gpu"] else None
            row = {"gpu": gpu, "precision": precision}
            try:
                v = capacity_view(**{**view.inputs, "gpu": gpu, "precision": precision,
                                     "tp": None, "price_per_hour": own_price})
            except ValueError as e:   # does not fit, or no tensor cores for the precision
                rows.append(row | {"why_not": str(e)})
                continue
            f = v.fleet
            rows.append(row | {
                "gpus_per_replica": v.tp, "batch": v.batch, "tpot_ms": round(v.tpot_ms, 2),
                "tpot_slo_met": v.tpot_slo_met, "replicas": f.replicas, "gpus": f.gpus,
                "monthly_cost": round(f.monthly_cost),
                "cost_per_million_output_tokens": round(f.cost_per_million_output_tokens, 4)})
    # Cheapest first among those meeting the SLO; misses, then impossibles, after.
    return sorted(rows, key=lambda r: ("why_not" in r, not r.get("tpot_slo_met"),
                                       r.get("monthly_cost", 0)))
