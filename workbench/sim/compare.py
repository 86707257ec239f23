"""Real run vs simulation, side by side: percentiles and their relative errors."""

from __future__ import annotations

import pandas as pd

from workbench.traffic.run_store import load_run

METRICS = ("ttft", "tpot", "e2e")


def compare_runs(real, simulated, percentiles=(50, 90)) -> pd.DataFrame:
    """Rows: metric x percentile (and request throughput); columns real, sim, error (sim/real-1)."""
    real = load_run(real) if not hasattr(real, "requests") else real
    simulated = load_run(simulated) if not hasattr(simulated, "requests") else simulated
    rows = []
    for m in METRICS:
        for p in percentiles:
            a = real.requests[m].dropna().quantile(p / 100)
            b = simulated.requests[m].dropna().quantile(p / 100)
            rows.append({"metric": f"{m}_p{p}", "real": a, "sim": b, "error": b / a - 1})
    a = real.manifest["summary"]["request_throughput"]
    b = simulated.manifest["summary"]["request_throughput"]
    rows.append({"metric": "request_throughput", "real": a, "sim": b, "error": b / a - 1})
    return pd.DataFrame(rows)
