"""Latency and throughput metrics, with vLLM serving-benchmark definitions.

TTFT = first token - arrival; TPOT = (E2E - TTFT) / (output - 1) for output > 1 (undefined for
one token); ITL = gaps between successive tokens; goodput = requests meeting every SLO / run
duration. Percentiles are linear-interpolated (numpy's default), like vLLM.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PERCENTILES = (50, 90, 99)


def request_record(request_id, arrival, first_scheduled, token_times, finish, prompt_tokens,
                   finish_reason, cached_prompt_tokens=0, preemptions=0,
                   output_tokens: int | None = None) -> dict:
    """The per-request record of the design contract, from one request's timeline.

    `output_tokens` overrides the count of token_times when a server streams several tokens
    per chunk (its usage report is then the truth)."""
    n = len(token_times) if output_tokens is None else output_tokens
    first = token_times[0] if n else None
    ttft = first - arrival if first is not None else None
    e2e = finish - arrival if finish is not None else None
    tpot = (e2e - ttft) / (n - 1) if n > 1 and e2e is not None else None
    itl = float(np.mean(np.diff(token_times))) if len(token_times) > 1 else None
    return dict(request_id=str(request_id), arrival=arrival, first_scheduled=first_scheduled,
                first_token=first, finish=finish, prompt_tokens=prompt_tokens, output_tokens=n,
                finish_reason=finish_reason, ttft=ttft, tpot=tpot, e2e=e2e, itl_mean=itl,
                cached_prompt_tokens=cached_prompt_tokens, preemptions=preemptions)


def meets_slos(requests: pd.DataFrame, slos: dict[str, float]) -> pd.Series:
    """Per request: True when every given SLO (ttft, tpot, e2e in seconds) holds.

    A one-token request has no TPOT; it passes the TPOT SLO (nothing to violate), as in vLLM."""
    ok = requests["finish_reason"].isin(["stop", "length"])
    for metric, limit in slos.items():
        values = requests[metric]
        ok &= (values <= limit) | (values.isna() & (metric == "tpot"))
    return ok


def summarize(requests: pd.DataFrame, slos: dict[str, float] | None = None,
              itl_values: list[float] | None = None, duration_s: float | None = None) -> dict:
    """Throughput, latency distribution and goodput of one run."""
    done = requests[requests["finish_reason"].isin(["stop", "length"])]
    if duration_s is None:
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
        out["goodput"] = per_s(int(good.sum()))
    return out


def is_saturated(summary: dict, offered_rate: float | None, tolerance: float = 0.9) -> bool:
    """Saturated when the system completes requests clearly slower than they are offered."""
    if not offered_rate:
        return False
    return summary["request_throughput"] < tolerance * offered_rate
