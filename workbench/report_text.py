"""Words and tables for the design-review report: what a reviewer reads instead of dict reprs.

Every function here formats; none measures or models (run_framework_answers only hands the
measured rate and latency to the plan's Little's-law answer). Latencies are shown in
milliseconds with a precision that suits their size, rates in req/s, money in dollars. Bounds a
user did not set (a length clip at its default, say) are left out rather than printed as numbers.
"""

from __future__ import annotations

import math

import pandas as pd

from workbench.traffic.metrics import slo_percentiles

METRIC_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "itl": "ITL"}
METRIC_MEANING = {"ttft": "time to first token", "tpot": "time per output token",
                  "e2e": "end-to-end latency", "itl": "inter-token latency"}
# What one unit of each fitted step-time term is (workbench.fit.features).
FIT_TERMS = {"const": "per step (fixed cost)", "prefill_tokens": "per prompt token prefilled",
             "prefill_attention": "per query-key pair in prefill attention",
             "prefill_seqs": "per prompt chunk in the step", "decode_seqs": "per decoding sequence",
             "decode_context": "per K/V token read in decode",
             "decode_padded_context": "per padded K/V token (decodes x longest context)"}


def num(x: float) -> str:
    """A count or rate without trailing zeros: 4.0 -> '4', 2048 -> '2,048', 0.25 -> '0.25'."""
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"


def format_ms(seconds: float | None) -> str:
    """Latency in ms, three significant digits at most: '0.42 ms', '7.9 ms', '1,335 ms'."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    v = seconds * 1e3
    if abs(v) >= 100:
        return f"{v:,.0f} ms"
    if 0 < abs(v) < 0.01:
        return "< 0.01 ms"
    return f"{float(f'{v:.3g}'):g} ms"


def format_duration(seconds: float) -> str:
    """Small durations in the unit that keeps them readable (fitted per-unit costs)."""
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-12:.3g} ps"


def percent(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0%}" if abs(x) >= 0.1 or x == 0 else f"{x:.1%}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def gpu_label(name: str) -> str:
    return name.upper()


# ---- the scenario, in words ---------------------------------------------------------------

def describe_lengths(d) -> str:
    """'lognormal, median 128 tokens (8–1,024)'; clips left at their defaults are omitted.

    The defaults are read from the distribution's own model fields (workbench.traffic.lengths),
    so they cannot drift from what a scenario gets when it sets no clip."""
    fields = type(d).model_fields
    default_min, default_max = fields["min"].default, fields["max"].default
    kind = d.dist
    if kind == "fixed":
        text = f"fixed at {num(d.value)} tokens"
        lo, hi = d.value, d.value
    elif kind == "uniform":
        text = f"uniform, {num(d.low)}–{num(d.high)} tokens"
        lo, hi = d.low, d.high
    elif kind == "normal":
        text = f"normal, mean {num(d.mean)} ± {num(d.std)} tokens"
        lo, hi = default_min, default_max
    elif kind == "lognormal":
        text = f"lognormal, median {num(d.median)} tokens"
        lo, hi = default_min, default_max
    elif kind == "empirical":
        text = (f"empirical, {len(d.values):,} observed lengths" if d.values is not None
                else f"empirical, from {d.file}" + (f" column {d.column}" if d.column else ""))
        lo, hi = default_min, default_max
    else:
        return str(kind)
    # Show a clip only where it cuts into the distribution and was set by the user.
    cut_lo = d.min if d.min > max(lo, default_min) else None
    cut_hi = d.max if d.max < min(hi, default_max) else None
    if cut_lo is not None and cut_hi is not None:
        text += f" ({num(cut_lo)}–{num(cut_hi)})"
    elif cut_lo is not None:
        text += f" (at least {num(cut_lo)})"
    elif cut_hi is not None:
        text += f" (at most {num(cut_hi)})"
    return text


def describe_arrival(a) -> str:
    kind = a.kind
    if kind == "poisson":
        return f"Poisson arrivals at {num(a.rate)} req/s"
    if kind == "constant":
        return f"evenly spaced arrivals at {num(a.rate)} req/s"
    if kind == "gamma":
        shape = "as bursty as Poisson" if a.burstiness == 1 else (
            "burstier than Poisson" if a.burstiness < 1 else "smoother than Poisson")
        return (f"gamma arrivals at {num(a.rate)} req/s, burstiness {num(a.burstiness)} "
                f"({shape})")
    if kind == "piecewise":
        rates = [s.rate for s in a.segments]
        span = sum(s.duration_s for s in a.segments)
        return (f"time-varying Poisson arrivals, {num(min(rates))}–{num(max(rates))} req/s over "
                f"{len(a.segments)} segments of {num(span)} s in all"
                + (", repeating" if a.repeat else ""))
    if kind == "closed_loop":
        think = f", {num(a.think_time_s)} s think time" if a.think_time_s else ""
        return f"a closed loop of {num(a.concurrency)} concurrent clients{think}"
    if kind == "trace":
        text = f"a replay of the trace {a.file}"
        if a.window_s:
            text += f" ({num(a.window_s)} s from {num(a.start_s)} s)"
        if a.rate_multiplier != 1:
            text += f" at {num(a.rate_multiplier)}x its rate"
        out_scale = a.output_length_scale if a.output_length_scale is not None else \
            a.length_scale
        for what, scale, cap in (("prompt", a.length_scale, a.max_prompt_tokens),
                                 ("output", out_scale, a.max_output_tokens)):
            part = [f"scaled x{num(scale)}"] if scale != 1 else []
            part += [f"capped at {num(cap)} tokens"] if cap else []
            if part:
                text += f"; {what} lengths {' and '.join(part)}"
        return text
    return str(kind)


def engine_limits(engine: dict) -> str:
    """The scheduler's limits in effect (the engine's defaults where the scenario sets none)."""
    try:
        from workbench.engine.config import EngineConfig

        cfg = EngineConfig.from_dict(dict(engine))
        get = lambda k: getattr(cfg, k, None)  # noqa: E731
    except Exception:  # an unknown config shape: say what was written
        get = engine.get
    parts = []
    if get("max_num_seqs"):
        parts.append(f"up to {num(get('max_num_seqs'))} sequences")
    if get("max_num_batched_tokens"):
        parts.append(f"{num(get('max_num_batched_tokens'))} tokens per step")
    text = " and ".join(parts)
    extras = []
    if get("block_size"):
        extras.append(f"KV blocks of {num(get('block_size'))} tokens")
    if get("max_model_len"):
        extras.append(f"context up to {num(get('max_model_len'))} tokens")
    for key, label in (("quantization", "weights"), ("kv_cache_dtype", "KV cache")):
        if get(key) not in (None, "none", "auto"):
            extras.append(f"{label} {get(key)}")
    return ", ".join([text, *extras]) if text else ", ".join(extras)


def describe_target(t, markdown: bool = True) -> str:
    model = f"`{t.model}`" if markdown else t.model
    if t.kind == "engine":
        return f"the in-process engine serving model {model}"
    return f"the OpenAI-compatible endpoint {t.url} serving {model}"


def describe_slos(sc) -> str:
    """'TTFT ≤ 500 ms, TPOT ≤ 50 ms and E2E ≤ 10,000 ms for 90% of requests'."""
    if not sc.slos:
        return "no SLOs"
    items = [f"{METRIC_NAMES[m]} ≤ {format_ms(v)}" for m, v in sc.slos.items()]
    return f"{_join(items)} for {num(sc.slo.percentile)}% of requests"


def _volume(sc) -> str:
    if sc.num_requests:
        return f"{sc.num_requests:,} requests"
    if sc.duration_s:
        return f"{num(sc.duration_s)} s of traffic"
    return "every request in the trace window"


def scenario_summary(sc) -> str:
    """The scenario as one paragraph of Markdown."""
    t = sc.target
    limits = f" ({engine_limits(t.engine)})" if t.kind == "engine" else ""
    text = (f"**{sc.name}**{': ' + sc.description if sc.description else ''} — "
            f"{_volume(sc)} sent to {describe_target(t)}{limits}, as "
            f"{describe_arrival(sc.arrival)}.")
    if sc.prompt_tokens is not None and sc.output_tokens is not None:
        text += (f" Prompts: {describe_lengths(sc.prompt_tokens)}; outputs: "
                 f"{describe_lengths(sc.output_tokens)}.")
    if sc.shared_prefix.fraction > 0 and sc.shared_prefix.tokens > 0:
        p = sc.shared_prefix
        text += (f" {percent(p.fraction)} of requests start with one of {p.count} shared "
                 f"system prompts of {num(p.tokens)} tokens.")
    text += f" Target: {describe_slos(sc)}."
    return text


def measured_where(measured) -> str:
    """A sentence when the measured run went to a server instead of the scenario's engine."""
    if measured.target.kind == "engine":
        return ""
    return (f" Measured at {describe_target(measured.target)}, as its clients see it; the "
            "predictions are for the engine above (the server should run the same model and "
            "engine configuration for the two to be compared).")


def scenario_table(sc) -> pd.DataFrame:
    """The scenario as (setting, value) rows in words; nothing left as a raw structure."""
    t = sc.target
    rows = [("target", describe_target(t, markdown=False))]
    if t.kind == "engine":
        rows.append(("engine limits", engine_limits(t.engine)))
    rows += [("arrivals", describe_arrival(sc.arrival)), ("volume", _volume(sc))]
    if sc.prompt_tokens is not None:
        rows.append(("prompt lengths", describe_lengths(sc.prompt_tokens)))
    if sc.output_tokens is not None:
        rows.append(("output lengths", describe_lengths(sc.output_tokens)))
    if sc.correlation:
        rows.append(("prompt/output correlation", num(sc.correlation)))
    if sc.shared_prefix.fraction > 0 and sc.shared_prefix.tokens > 0:
        p = sc.shared_prefix
        rows.append(("shared system prompts", f"{percent(p.fraction)} of requests, {p.count} "
                                              f"prompts of {num(p.tokens)} tokens"))
    for m, v in sc.slos.items():
        rows.append((f"SLO: {METRIC_NAMES[m]} ({METRIC_MEANING[m]})",
                     f"≤ {format_ms(v)} at p{num(sc.slo.percentile)}"))
    sampling = "greedy" if sc.temperature == 0 else f"temperature {num(sc.temperature)}"
    if sc.ignore_eos:
        sampling += ", EOS ignored (each output runs to its drawn length)"
    rows.append(("sampling", sampling))
    if sc.hardware:
        rows.append(("hardware", sc.hardware))
    rows.append(("seed", str(sc.seed)))
    return pd.DataFrame(rows, columns=["setting", "value"])


# ---- what was measured --------------------------------------------------------------------

def slo_verdict(sc, requests: pd.DataFrame, simulated: pd.DataFrame | None = None):
    """Per SLO metric: target, measured value at the SLO percentile, pass/fail (and the
    simulator's value when given)."""
    q = sc.slo.percentile
    measured_at = slo_percentiles(requests, sc.slos, q)
    simulated_at = slo_percentiles(simulated, sc.slos, q) if simulated is not None else None
    rows = []
    for m, limit in sc.slos.items():
        measured = measured_at[m]
        row = {"metric": f"{METRIC_NAMES[m]} ({METRIC_MEANING[m]})",
               "target": f"≤ {format_ms(limit)}",
               f"measured p{num(q)}": format_ms(measured),
               "verdict": "pass" if measured <= limit else "FAIL"}
        if simulated is not None:
            row[f"simulated p{num(q)}"] = format_ms(simulated_at[m])
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_text(sc, requests: pd.DataFrame) -> str:
    """'At p90 the run meets TPOT but misses TTFT and E2E.' (bold where it misses)."""
    q = sc.slo.percentile
    at = slo_percentiles(requests, sc.slos, q)
    met = [METRIC_NAMES[m] for m, v in sc.slos.items() if at[m] <= v]
    missed = [METRIC_NAMES[m] for m in sc.slos if METRIC_NAMES[m] not in met]
    if not missed:
        return f"At p{num(q)} the run **meets every SLO** ({_join(met)})."
    if not met:
        return f"At p{num(q)} the run **misses every SLO** ({_join(missed)})."
    return f"At p{num(q)} the run meets {_join(met)} but **misses {_join(missed)}**."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def latency_table(summary: dict, percentiles=(50, 90, 99)) -> pd.DataFrame:
    """TTFT / TPOT / E2E / ITL percentiles of a run summary, in ms."""
    rows = []
    for m in ("ttft", "tpot", "itl", "e2e"):
        if f"{m}_p{percentiles[0]}" not in summary:
            continue
        row = {"metric": f"{METRIC_NAMES[m]} ({METRIC_MEANING[m]})"}
        row |= {f"p{p}": format_ms(summary.get(f"{m}_p{p}")) for p in percentiles}
        rows.append(row)
    return pd.DataFrame(rows)


def run_summary(summary: dict, sc=None) -> str:
    """One sentence on a run: completions, throughput, SLO attainment."""
    text = (f"{summary['completed']:,} of {summary['requests']:,} requests completed in "
            f"{summary['duration_s']:.1f} s: {summary['request_throughput']:.2f} req/s and "
            f"{summary['output_throughput']:,.0f} output tokens/s")
    if "slo_attainment" in summary:
        text += (f"; {percent(summary['slo_attainment'])} met every SLO (goodput "
                 f"{summary['goodput']:.2f} req/s)")
    if summary.get("failed"):
        text += f"; **{summary['failed']} failed**"
    return text + "."


def kv_cache_text(run) -> str:
    """What the KV cache did during a measured run: its size, how full it got, what the
    prefix cache saved and what was preempted, from the run's own records."""
    target, steps, requests = run.manifest.get("target") or {}, run.steps, run.requests
    if steps is None or steps.empty or "num_kv_blocks" not in target:
        return "The run recorded no engine steps (an HTTP target): no KV-cache figures."
    block = target["engine_config"]["block_size"]
    pool = target["num_kv_blocks"] * block
    per_token = target.get("kv_bytes_per_token")
    size = f" ({per_token * pool / 1e6:,.1f} MB)" if per_token else ""
    peak = steps.kv_blocks_used.max() / target["num_kv_blocks"]
    text = (f"The KV pool held {pool:,} tokens{size} in blocks of {block}; at its fullest "
            f"the run used {percent(peak)} of it.")
    prompt = requests.prompt_tokens.sum() if "prompt_tokens" in requests else 0
    if target["engine_config"].get("enable_prefix_caching") and prompt:
        cached = requests.get("cached_prompt_tokens", pd.Series(dtype=float)).sum()
        text += (f" The prefix cache supplied {percent(cached / prompt)} of the prompt tokens "
                 f"({int(cached):,} of {int(prompt):,}), which were not computed again.")
    preempted = int(steps.num_preempted.sum())
    if preempted:
        swapped = int(steps.get("num_preempted_swap", pd.Series(0)).sum())
        text += (f" {plural(preempted, 'preemption')} when the pool ran out "
                 f"({swapped} swapped to host memory, {preempted - swapped} recomputed).")
    else:
        text += " No request was preempted."
    if target.get("memory_report"):
        from workbench.engine.memory_report import report_from_record

        text += ("\n\nWhere the engine's memory went at start (`workbench memory` prints the "
                 f"same):\n\n```\n{report_from_record(target['memory_report'])}\n```")
    return text


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """workbench.sim.compare.compare_runs' frame with units: latencies in ms, error in %."""
    rows = []
    for r in frame.itertuples(index=False):
        name, _, p = str(r.metric).rpartition("_p")
        if name in METRIC_NAMES and p.isdigit():
            label, fmt = f"{METRIC_NAMES[name]} p{p}", format_ms
        else:
            label, fmt = str(r.metric).replace("_", " "), lambda x: f"{x:.2f} req/s"
        rows.append({"metric": label, "measured": fmt(r.real), "simulated": fmt(r.sim),
                     "simulation error": f"{r.error:+.0%}"})
    return pd.DataFrame(rows)


def simulation_caveat(frame: pd.DataFrame, tolerance: float = 0.5) -> str:
    """A warning when the simulator misses a measured latency by more than `tolerance`."""
    latency = frame[frame["metric"].str.contains("_p")]
    if latency.empty:
        return ""
    worst = latency.loc[latency["error"].abs().idxmax()]
    if not abs(worst["error"]) > tolerance:
        return ""
    name, _, p = worst["metric"].rpartition("_p")
    return (f"**Caution:** the simulator misses the measured {METRIC_NAMES.get(name, name)} "
            f"p{p} by {abs(worst['error']):.0%}; the capacity figures below inherit that "
            f"error (a loaded machine during the run, or a step model fitted on another load).")


def fit_table(coefficients: dict) -> pd.DataFrame:
    """Fitted step-time terms as 'cost per unit' with units."""
    return pd.DataFrame([{"term": k, "cost": format_duration(v),
                          "unit": FIT_TERMS.get(k, k)} for k, v in coefficients.items()])


# ---- recommendations ----------------------------------------------------------------------

def capacity_text(replicas: int | None, max_replicas: int, rate: float,
                  one_replica_rate: float) -> str:
    """The capacity search's answer in one sentence."""
    if replicas:
        need = f"**{plural(replicas, 'replica')}** {'meets' if replicas == 1 else 'meet'}"
    else:
        need = f"**more than {plural(max_replicas, 'replica')}** would be needed to meet"
    return (f"Simulated on the measured engine: {need} every SLO at the scenario's "
            f"{num(rate)} req/s; one replica stays within the SLOs up to about "
            f"**{num(round(one_replica_rate, 2))} req/s**.")


def hardware_table(rows: list[dict], sc) -> pd.DataFrame:
    """cheapest_configuration's rows: what each GPU needs, costs and achieves, or why not."""
    out = []
    cheapest = next((r["hardware"] for r in rows if r.get("replicas")), None)
    for r in rows:
        row = {"GPU": gpu_label(r["hardware"]), "precision": r.get("precision", ""),
               "GPUs per replica": r.get("tp", 1),
               "replicas": str(r["replicas"]) if r.get("replicas") else "–",
               "GPUs in all": str(r.get("gpus") or r["replicas"] * (r.get("tp") or 1))
               if r.get("replicas") else "–",
               "$ per GPU-hour": f"${r['price_per_gpu_hour']:.2f}"
               if r.get("price_per_gpu_hour") else "–",
               "$ per month": f"${r['cost_per_month']:,.0f}" if r.get("cost_per_month") else "–"}
        for m, v in (r.get("percentiles") or {}).items():
            row[f"{METRIC_NAMES.get(m, m)} p{num(sc.slo.percentile)}"] = format_ms(v)
        # How far such forecasts missed published measurements held out of their fit.
        row["forecast error (held out)"] = r.get("error_band", "–") if r.get("replicas") \
            else "–"
        row["verdict"] = ("cheapest" if r["hardware"] == cheapest else
                          "meets SLOs" if r.get("replicas") else "ruled out")
        out.append(row)
    return pd.DataFrame(out).fillna("–")


def rejected_options(rows: list[dict]) -> str:
    """Markdown bullets: each ruled-out hardware option with its reason in words."""
    return "\n".join(f"- **{gpu_label(r['hardware'])}** is ruled out: {_sentence(r.get('why'))}"
                     for r in rows if not r.get("replicas"))


def hardware_notes(rows: list[dict]) -> str:
    """Ruled-out options and multi-GPU replicas, each with its reason (Markdown bullets)."""
    lines = [rejected_options(rows)] if rejected_options(rows) else []
    for r in rows:
        reason = str(r.get("tp_reason") or "")
        if r.get("replicas") and (r.get("tp") or 1) > 1 and reason and reason != "given":
            lines.append(f"- **{gpu_label(r['hardware'])}** needs {r['tp']} GPUs per replica: "
                         f"{_sentence(reason.removeprefix('auto: '))}")
    return "\n".join(lines)


def _sentence(why: str | None) -> str:
    why = (why or "no configuration met the SLOs").strip()
    if why[:2].istitle():  # a capitalised word, not an acronym such as "SLOs"
        why = why[0].lower() + why[1:]
    return why + ("" if why.endswith(".") else ".")


def run_framework_answers(sc, summary: dict, answers: dict, latency_s: float | None = None,
                          latency_label: str = "mean E2E") -> tuple[dict, dict]:
    """The framework questionnaire's `answers` with `concurrency` derived from the scenario
    and its measured run by Little's law (workbench.plan.trees.answers.framework_answers):
    requests in flight = the scenario's arrival rate (the measured offered rate when its
    arrival process has no single rate: closed loop, piecewise, trace) x the measured mean
    E2E (Little's law holds for the mean). `latency_s` replaces the measured E2E, e.g. with
    the production deployment's simulated E2E, since the framework serves that model, not the
    embedded one; `latency_label` says what it is. Facts: the rate, the latency, the result.

    An explicit `concurrency` in `answers` is an error: the run answers it. When the run
    cannot (no completed request, no measurable rate), that is an error too."""
    from workbench.plan.trees.answers import framework_answers

    if "concurrency" in answers:
        raise ValueError("concurrency: derived from the scenario's rate and the measured E2E; "
                         "leave it out of the answers")
    rate = getattr(sc.arrival, "rate", None) or summary.get("offered_request_rate")
    latency = summary.get("e2e_mean") if latency_s is None else latency_s
    if not (rate and math.isfinite(rate) and latency and math.isfinite(latency)):
        raise ValueError("concurrency: needs an arrival rate and a measured E2E (requests "
                         f"in flight = rate x latency); got rate {rate}, E2E {latency}")
    derived, facts = framework_answers(rate, latency)
    return {**answers, **derived}, {"requests_per_s": rate, "e2e_mean_s": latency,
                                    "latency_label": latency_label, **facts}


def in_flight_text(facts: dict) -> str:
    """'Requests in flight (Little's law): 4 req/s x 1,335 ms mean E2E ≈ 5.3, more than 4:
    high concurrency.'"""
    n, low = facts["requests_in_flight"], facts["low_concurrency_max"]
    verdict = (f"at most {num(low)}: low concurrency" if n <= low
               else f"more than {num(low)}: high concurrency")
    return (f"Requests in flight (Little's law): {num(facts['requests_per_s'])} req/s x "
            f"{format_ms(facts['e2e_mean_s'])} {facts.get('latency_label', 'mean E2E')} ≈ "
            f"{num(float(f'{n:.2g}'))}, {verdict}.")


def decision_text(decision, what: str) -> str:
    """'**vLLM** is the recommended framework: reasons.' plus the alternatives."""
    reasons = "; ".join(decision.reasons)
    text = f"**{decision.recommendation}** is the recommended {what}: {reasons}."
    if decision.alternatives:
        text += f" Alternatives worth a look: {', '.join(decision.alternatives)}."
    return text


def decision_path(decision) -> pd.DataFrame:
    """The questions the decision tree asked, the answers given and why each mattered."""
    return pd.DataFrame([{"question": s.question, "answer": s.answer.replace("_", " "),
                          "why it matters": s.reason} for s in decision.path])


def precision_facts(facts: dict, gpu: str, context: int) -> str:
    """'Sequences of 4,096 tokens one L40S holds: BF16 12, INT8 40, INT4 60.'"""
    held = [f"{k.removeprefix('max_seqs_').upper()} {num(v)}" for k, v in facts.items()
            if k.startswith("max_seqs_")]
    if not held:
        return ""
    return f"Sequences of {num(context)} tokens one {gpu_label(gpu)} holds: {', '.join(held)}."


VERDICT_STYLE = {"pass": "color: #1b7f5b; font-weight: bold",
                 "FAIL": "color: #c0392b; font-weight: bold",
                 "cheapest": "color: #1b7f5b; font-weight: bold",
                 "ruled out": "color: #c0392b"}


def show(df: pd.DataFrame):
    """A table for the report: no positional index column, text left-aligned, verdicts in
    green (pass) or red (fail)."""
    styler = (df.style.hide(axis="index")
              .set_table_styles([{"selector": "th", "props": "text-align: left"},
                                 {"selector": "td", "props": "text-align: left"}]))
    if "verdict" in df.columns:
        styler = styler.map(lambda v: VERDICT_STYLE.get(v, ""), subset=["verdict"])
    return styler


def forecast_validation() -> tuple[str, pd.DataFrame | None]:
    """The GPU forecasts' held-out errors (stored by `workbench plan fit-published`): a
    sentence and the by-GPU table, for the report's appendix."""
    from workbench.plan.step_params import error_band, validation_tables

    tables = validation_tables()
    by_gpu = tables.get("leave-one-source-out, by GPU")
    knees = tables.get("knees") or {}
    text = (f"Forecasts for GPUs not at hand use a step model fitted to published vLLM "
            f"measurements (workbench/plan/published/). Predicting each measurement with the "
            f"model fitted without that measurement's source, the median errors are "
            f"{error_band().summary()}.")
    if knees.get("sweeps"):
        text += (f" The concurrency where throughput stops growing was predicted within one "
                 f"doubling in {knees['within_one_doubling']} of {knees['sweeps']} sweeps.")
    if not by_gpu:
        return text, None
    frame = pd.DataFrame(by_gpu).T
    shown = frame.rename(columns={"ttft": "TTFT", "tpot": "TPOT",
                                  "output_throughput": "output throughput"})
    for c in ("TTFT", "TPOT", "output throughput"):
        if c in shown:
            shown[c] = shown[c].map(lambda x: "–" if pd.isna(x) else f"±{x:.0%}")
    shown["rows"] = shown["rows"].map(lambda x: f"{int(x):,}")
    return text, shown.rename_axis("GPU")
