"""Per-request and per-run metrics, with vLLM serving-benchmark definitions: the one home of
this arithmetic (the engine's RequestMetrics, both drivers, the simulator and sweeps call it).

TTFT = first token - arrival; TPOT = (E2E - TTFT) / (output - 1) for output > 1 (undefined for
one token); ITL = gaps between successive tokens; goodput = requests meeting every SLO / run
duration. Percentiles are linear-interpolated (numpy's default), like vLLM.

Throughput, two numbers with two jobs:
- `request_throughput`, `output_throughput`, `goodput` divide by the run's duration, first
  arrival -> last finish of a completed request. That is vLLM's benchmark_serving
  (`benchmark_duration` runs until the last request completes), so these numbers compare with
  published ones; they include the drain tail, the time after the last arrival while the
  queue empties, which weighs heavily in short runs.
- `sustained_request_throughput` leaves both ends out: it is the arrival rate measured over
  the arrival window, divided by the slope of finish time against arrival time (least
  squares over completed requests). A system that keeps up finishes each request a roughly
  constant time after it arrived (slope ~1, sustained ~ offered, however long the tail); one
  that falls behind finishes them ever later (slope = offered / capacity). This is what
  `is_saturated` reads, so short sweeps do not read "saturated" because of the tail. Like
  guidellm's warm-up/cool-down exclusion, it measures only while load is offered.

No torch here, no other workbench module, and pandas only inside the functions that build or
read frames: the engine (outputs, telemetry), the scheduler-side code and the simulator import
this module, and it stays a leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PERCENTILES = (50, 90, 99)

# The per-request record of the design contract, in column order.
REQUEST_COLUMNS = ["request_id", "arrival", "first_scheduled", "first_token", "finish",
                   "prompt_tokens", "output_tokens", "finish_reason", "ttft", "tpot", "e2e",
                   "itl_mean", "cached_prompt_tokens", "preemptions"]

# Per-request columns beyond the contract's, written when a driver records them.
EXTRA_REQUEST_COLUMNS = ("token_times", "send_lateness", "error", "output_tokens_source",
                         "replica", "priority")

COMPLETED = ("stop", "length")  # finish reasons of a request that delivered its output


def request_record(request_id, arrival, first_scheduled, token_times, finish, prompt_tokens,
                   finish_reason, cached_prompt_tokens=0, preemptions=0,
                   output_tokens: int | None = None) -> dict:
    """The per-request record of the design contract, from one request's timeline.

    `token_times` are when output arrived (one per token in the engine; one per streamed
    chunk over HTTP). `output_tokens` overrides their count when it is known better (a
    server's usage report, re-tokenized text, the engine's own count)."""
    n = len(token_times) if output_tokens is None else int(output_tokens)
    first = token_times[0] if len(token_times) else None
    ttft = first - arrival if first is not None else None
    e2e = finish - arrival if finish is not None else None
    tpot = (e2e - ttft) / (n - 1) if n > 1 and e2e is not None and ttft is not None else None
    itl = (token_times[-1] - token_times[0]) / (len(token_times) - 1) \
        if len(token_times) > 1 else None  # the mean of the gaps
    return dict(request_id=str(request_id), arrival=arrival, first_scheduled=first_scheduled,
                first_token=first, finish=finish, prompt_tokens=prompt_tokens, output_tokens=n,
                finish_reason=finish_reason, ttft=ttft, tpot=tpot, e2e=e2e, itl_mean=itl,
                cached_prompt_tokens=cached_prompt_tokens, preemptions=preemptions)


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Per-request record dicts (from the engine, the drivers or the simulator) -> the requests
    table of a run directory: the contract's columns, then whichever extras the records carry.
    The one builder of that table (workbench.engine.requests_frame and the run store call it)."""
    import pandas as pd

    cols = REQUEST_COLUMNS + [c for c in EXTRA_REQUEST_COLUMNS if any(c in r for r in records)]
    return pd.DataFrame(records, columns=cols)


def meets_slos(requests: pd.DataFrame, slos: dict[str, float]) -> pd.Series:
    """Per request: True when every given SLO (ttft, tpot, e2e in seconds) holds.

    A one-token request has no TPOT; it passes the TPOT SLO (nothing to violate), as in vLLM."""
    ok = requests["finish_reason"].isin(COMPLETED)
    for metric, limit in slos.items():
        values = requests[metric]
        ok &= (values <= limit) | (values.isna() & (metric == "tpot"))
    return ok


def slo_percentiles(requests: pd.DataFrame, slos, percentile: float) -> dict[str, float]:
    """Per SLO metric (the keys of `slos`, e.g. {"ttft": 0.5}; any iterable of metric names
    works): its `percentile` over completed requests (finish reason in COMPLETED), missing
    values (a one-token request's TPOT) left out. NaN when no completed request has a value:
    no percentile exists, and NaN compares false with any limit, so a check `value <= limit`
    fails rather than passing on an empty run."""
    done = requests[requests["finish_reason"].isin(COMPLETED)]
    out = {}
    for metric in slos:
        v = done[metric].dropna().to_numpy(dtype=float)
        out[metric] = float(np.percentile(v, percentile)) if len(v) else float("nan")
    return out


def sustained_throughput(arrival, finish) -> tuple[float, float]:
    """(offered rate over the arrival window, requests/s completed while load was offered),
    from the arrival and finish times of completed requests; NaN when under 3 requests or all
    arrived at once. See the module docstring for why the slope of finish on arrival."""
    a = np.asarray(arrival, dtype=float)
    f = np.asarray(finish, dtype=float)
    span = a.max() - a.min() if len(a) else 0.0
    if len(a) < 3 or span <= 0:
        return float("nan"), float("nan")
    offered = (len(a) - 1) / span
    slope = float(np.polyfit(a, f, 1)[0])
    return offered, (offered / slope if slope > 0 else float("inf"))


def goodput(requests: pd.DataFrame, slos: dict[str, float], duration_s: float) -> float:
    """Requests meeting every SLO per second of `duration_s` (vLLM's goodput)."""
    return int(meets_slos(requests, slos).sum()) / duration_s if duration_s > 0 else float("nan")


def summarize(requests: pd.DataFrame, slos: dict[str, float] | None = None,
              itl_values: list[float] | None = None, duration_s: float | None = None) -> dict:
    """Throughput, latency distribution and goodput of one run."""
    import pandas as pd

    done = requests[requests["finish_reason"].isin(COMPLETED)]
    if duration_s is None:  # vLLM's benchmark duration: first arrival -> last completion
        start = requests["arrival"].min()
        duration_s = float(done["finish"].max() - start) if len(done) else 0.0
    out: dict = {
        "requests": int(len(requests)),
        "completed": int(len(done)),
        "failed": int(len(requests) - len(done)),
        "duration_s": duration_s,
        "prompt_tokens": int(done["prompt_tokens"].sum()),
        "output_tokens": int(done["output_tokens"].sum()),
    }
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: float("nan"))
    out["request_throughput"] = per_s(len(done))
    out["output_throughput"] = per_s(out["output_tokens"])
    out["total_token_throughput"] = per_s(out["output_tokens"] + out["prompt_tokens"])
    out["offered_request_rate"], out["sustained_request_throughput"] = sustained_throughput(
        done["arrival"], done["finish"])
    series = {"ttft": done["ttft"], "tpot": done["tpot"], "e2e": done["e2e"]}
    if itl_values is None and "token_times" in done:  # every gap, not per-request means
        itl_values = [g for times in done["token_times"] for g in np.diff(np.asarray(times))]
    series["itl"] = pd.Series(itl_values if itl_values is not None else done["itl_mean"],
                              dtype=float)
    for name, values in series.items():
        v = values.dropna().to_numpy(dtype=float)
        out[f"{name}_mean"] = float(v.mean()) if len(v) else float("nan")
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = float(np.percentile(v, p)) if len(v) else float("nan")
    if slos:
        good = meets_slos(requests, slos)
        out["slo_attainment"] = float(good.mean()) if len(requests) else float("nan")
        out["goodput"] = goodput(requests, slos, duration_s)
    return out


def is_saturated(summary: dict, offered_rate: float | None, tolerance: float = 0.9) -> bool:
    """Saturated when the system completes requests clearly slower than they are offered:
    sustained throughput (tail excluded) below `tolerance` x the arrival rate, or fewer than
    `tolerance` of the requests completed. Summaries without the sustained figure (too few
    requests) fall back to vLLM's whole-run request throughput against `offered_rate`."""
    if summary.get("requests") and summary.get("completed", 0) < tolerance * summary["requests"]:
        return True
    sustained = summary.get("sustained_request_throughput", float("nan"))
    offered = summary.get("offered_request_rate", float("nan"))
    if not (np.isnan(sustained) or np.isnan(offered)):
        return bool(sustained < tolerance * offered)
    if not offered_rate:
        return False
    return bool(summary["request_throughput"] < tolerance * offered_rate)
