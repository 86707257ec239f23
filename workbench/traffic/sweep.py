"""Rate sweeps: the throughput-latency curve of one scenario, and where it saturates."""

from __future__ import annotations

from pathlib import Path

from workbench.traffic.arrivals import Constant, Gamma, Poisson
from workbench.traffic.drive_result import INTERRUPT
from workbench.traffic.metrics import is_saturated
from workbench.traffic.run_store import load_run
from workbench.traffic.scenario import EngineTarget, Scenario
from workbench.traffic.workload import check_inputs

SWEEP_COLUMNS = (["rate", "saturated", "sustained_request_throughput", "request_throughput",
                  "output_throughput", "goodput", "slo_attainment"]
                 + [f"{m}_{s}" for m in ("ttft", "tpot", "itl", "e2e")
                    for s in ("mean", "p50", "p90", "p99")])


def with_rate(scenario: Scenario, rate: float) -> Scenario:
    if not isinstance(scenario.arrival, Constant | Poisson | Gamma):
        raise ValueError(f"arrival.kind: a rate sweep needs constant, poisson or gamma, "
                         f"got {scenario.arrival.kind!r}")
    if rate <= 0:
        raise ValueError(f"rates: must be > 0, got {rate}")
    return scenario.model_copy(update={
        "arrival": scenario.arrival.model_copy(update={"rate": rate}),
        "name": f"{scenario.name}-rate{rate:g}"})


def sweep(scenario: Scenario, rates: list[float], out: str | Path = "runs",
          progress: bool = True, log=print):
    """Run the scenario at each rate; return (summary DataFrame, run directories).

    Saturation reads the sustained throughput (drain tail excluded), see traffic/metrics.py.
    Ctrl-C keeps the runs done so far (the interrupted one too) and raises KeyboardInterrupt."""
    import pandas as pd

    from workbench.traffic.run_scenario import make_engine, run_scenario

    check_inputs(scenario)
    for rate in rates:
        with_rate(scenario, rate)  # every rate is valid before a model loads
    engine = make_engine(scenario) if isinstance(scenario.target, EngineTarget) else None
    rows, dirs = [], []
    for rate in rates:
        path = run_scenario(with_rate(scenario, rate), out, engine=engine, progress=progress,
                            log=log)
        manifest = load_run(path).manifest
        if manifest.get("stopped_by") == INTERRUPT:
            log(f"interrupted at rate {rate:g}/s; completed requests kept in {path}")
            raise KeyboardInterrupt
        summary = manifest["summary"]
        row = {"rate": rate, "saturated": is_saturated(summary, rate), **summary}
        rows.append(row)
        dirs.append(path)
        log(f"rate {rate:g}/s: {summary['sustained_request_throughput']:.2f} req/s sustained "
            f"({summary['request_throughput']:.2f} over the whole run), "
            f"TTFT p90 {summary['ttft_p90'] * 1e3:.0f} ms, "
            f"saturated: {row['saturated']}  ({path})")
    frame = pd.DataFrame(rows)
    return frame[[c for c in SWEEP_COLUMNS if c in frame]], dirs


def find_saturation(scenario: Scenario, start: float = 1.0, max_doublings: int = 8,
                    out: str | Path = "runs", log=print) -> float:
    """Double the rate until the system falls behind; the first saturated rate is returned."""
    rate = start
    for _ in range(max_doublings):
        frame, _ = sweep(scenario, [rate], out, progress=False, log=log)
        if bool(frame["saturated"].iloc[0]):
            return rate
        rate *= 2
    return rate


def auto_rates(saturation: float, count: int = 5) -> list[float]:
    """Spread `count` rates from 20% of the saturation rate up to it."""
    return [round(saturation * (0.2 + 0.8 * i / (count - 1)), 3) for i in range(count)]


def format_sweep(frame) -> str:
    cols = ["rate", "saturated", "sustained_request_throughput", "request_throughput",
            "output_throughput", "goodput",
            "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99", "itl_p90",
            "e2e_p50", "e2e_p90", "e2e_p99"]
    shown = frame[[c for c in cols if c in frame]].copy()
    for c in shown.columns:
        if c.startswith(("ttft", "tpot", "itl", "e2e")):
            shown[c] = (shown[c] * 1e3).round(1)
    shown = shown.rename(columns=lambda c: f"{c} (ms)" if c.startswith(
        ("ttft", "tpot", "itl", "e2e")) else c)
    return shown.to_string(index=False, float_format=lambda x: f"{x:.2f}")
