"""One published measurement, re-run in the simulator in its own setting.

A row of workbench/plan/published/measurements.csv names an engine, GPUs, a model, a
workload and a load; this module turns it into the engine configuration that engine would
have used, the requests it served, and a simulation with the step-cost model
(workbench.plan.step_cost) on the engine's own scheduler. Its predictions are the row's
metrics computed the way the source computed them (vLLM benchmark_serving's definitions).

The engine configuration follows vLLM's defaults of the row's version:
- before the V1 engine (dated before 2025-02, or a version below 0.8): at most 256
  sequences; no chunked prefill unless max_model_len > 32K (then 2,048-token chunks), and
  without it prompts run in steps of their own before the decodes (`prefill_first`);
- V1: chunked prefill always, 8,192 tokens and 1,024 sequences per step on GPUs with at least
  70 GiB that are not A100s, else 2,048 and 256 (vLLM's `_set_default_args_v1`).
The KV pool is what the weights leave of 90% of memory (gpu_memory_utilization 0.9).
Requests carry the row's mean prompt and output lengths (ignore_eos, as the benchmarks run);
ShareGPT rows spread them around those means with the shape ShareGPT's lengths have
(SHAREGPT_SHAPE): a burst of prompts lasts as long as its longest answer.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from workbench.plan.hardware import Hardware, get_hardware
from workbench.plan.models_catalog import MODELS, ModelArch
from workbench.plan.step_cost import Efficiency
from workbench.traffic.workload import RequestSpec

V1_SINCE = dt.date(2025, 2, 1)
GPU_MEMORY_UTILIZATION = 0.9
# The longest simulated run, in request-steps (requests x output tokens / concurrency): a
# longer one keeps its concurrency and ratio of requests to clients but fewer requests.
MAX_STEPS = 6000


@dataclass(frozen=True)
class RowSetting:
    arch: ModelArch
    hw: Hardware
    precision: str
    kv_dtype: str
    tp: int
    replicas: int
    engine: dict             # EngineConfig fields
    concurrency: int | None  # closed loop; None = open loop (at `rate`, or all at t = 0)
    input_tokens: int
    output_tokens: int
    num_requests: int
    workload: str
    through_http: bool       # online rows pay the client's HTTP + tokenization latency
    rate: float = math.inf   # open loop: Poisson arrivals at this rate (seeded)
    # ShareGPT served without ignore_eos: some answers are empty (the model stops at once),
    # and vLLM's benchmark_serving counts those with TTFT 0 and no output tokens.
    empty_answers: bool = False


def _v1(row) -> bool:
    version = str(row.get("engine_version") or "")
    if version and version != "nan":
        major, minor = (int(x) for x in version.split(".")[:2])
        return (major, minor) >= (0, 8)
    return dt.date.fromisoformat(str(row["date"])) >= V1_SINCE


def vllm_engine_config(row, hw: Hardware, max_model_len: int) -> dict:
    """The row's stated server settings, else vLLM's defaults for its version, as
    EngineConfig fields."""
    if _v1(row):
        big = hw.memory_bytes >= 70 * 2**30 and not hw.name.startswith("a100")
        tokens, seqs, chunked = (8192, 1024, True) if big else (2048, 256, True)
    else:
        seqs, chunked = 256, max_model_len > 32768
        if _has(row, "enable_chunked_prefill"):
            chunked = str(row["enable_chunked_prefill"]) == "True"
        tokens = 2048 if chunked else max(max_model_len, 2048)
    if _has(row, "max_num_seqs"):
        seqs = int(row["max_num_seqs"])
    if _has(row, "enable_chunked_prefill"):
        chunked = str(row["enable_chunked_prefill"]) == "True"
    if _has(row, "max_num_batched_tokens"):
        tokens = int(row["max_num_batched_tokens"])
    if not chunked:
        tokens = max(tokens, max_model_len)
    # V0 without chunked prefill runs prompts in steps of their own, before the decodes.
    # Prefix caching off: vLLM's default before V1, and the benchmarks' prompts share no
    # prefixes (the simulated prompts repeat one token id, which a cache would match).
    return {"max_num_seqs": seqs, "max_num_batched_tokens": tokens,
            "enable_chunked_prefill": chunked, "prefill_first": not chunked,
            "max_model_len": max_model_len, "block_size": 16, "enable_prefix_caching": False}


def row_setting(row) -> RowSetting:
    arch = MODELS[row["arch"]]
    hw = get_hardware(row["gpu"])
    tp = int(row["tp"])
    inp, out = max(1, round(row["input_tokens"])), max(1, round(row["output_tokens"]))
    # The context the server admits: what the row says, else vLLM's default (the model's).
    max_len = int(row["max_model_len"]) if _has(row, "max_model_len") else arch.context_length
    max_len = min(max(max_len, inp + out), arch.context_length)
    n = int(row["num_requests"])
    offline = row["mode"] == "offline"
    rate = math.inf
    if not _has(row, "concurrency"):   # an open loop at a rate (load_published checked it)
        rate, conc, clients = float(row["request_rate"]), None, n
    else:
        conc = None if offline else int(min(row["concurrency"], n))
        clients = n if offline else conc
    # Keep long runs short: the same clients and the same ratio of requests to them.
    if n * out / clients > MAX_STEPS:
        waves = max(1, math.floor(MAX_STEPS / out)) if out <= MAX_STEPS else 1
        n = max(clients, min(n, clients * waves))
        if offline:
            conc = None
    precision = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}[row["weight_dtype"]]
    kv = "auto" if not _has(row, "kv_dtype") else str(row["kv_dtype"])
    return RowSetting(arch, hw, precision, kv, tp, int(row["gpu_count"]) // tp,
                      vllm_engine_config(row, hw, max_len), conc, inp, out, n,
                      str(row.get("workload", "random")), through_http=not offline,
                      rate=rate, empty_answers=row.get("workload") == "sharegpt" and not offline)


def _has(row, key) -> bool:
    v = row.get(key)
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def step_model_for(s: RowSetting, efficiency: Efficiency):
    from workbench.sim.roofline_model import RooflineStepModel

    return RooflineStepModel(s.arch, s.hw, s.precision, s.kv_dtype, s.tp, efficiency,
                             reserve_fraction=1 - GPU_MEMORY_UTILIZATION,
                             context=s.engine["max_model_len"])


def requests_for(s: RowSetting, seed: int = 0) -> list[RequestSpec]:
    """The row's requests: closed loop (arrival None), all at t = 0, or Poisson at the rate
    (as vLLM's benchmark_serving draws them), seeded."""
    token = 100  # any ordinary id: the simulator never reads prompt tokens
    if s.concurrency:
        arrivals = [None] * s.num_requests
    elif math.isinf(s.rate):
        arrivals = [0.0] * s.num_requests
    else:
        gaps = np.random.default_rng(seed).exponential(1 / s.rate, s.num_requests)
        arrivals = list(np.cumsum(gaps) - gaps[0])
    inputs = [max(1, x) for x in lengths(s.input_tokens, s.num_requests, s.workload, "input",
                                         seed)]
    outputs = lengths(s.output_tokens, s.num_requests, s.workload, "output", seed)
    room = s.engine["max_model_len"]
    return [RequestSpec(i, a, [token] * min(p, room - 1), max(1, min(o, room - min(p, room - 1))))
            for i, (a, p, o) in enumerate(zip(arrivals, inputs, outputs, strict=True))]


def empty_answers(s: RowSetting, seed: int = 0) -> np.ndarray:
    """Per request (by index): whether its answer is empty, as `requests_for` drew it. Such a
    request still runs (one token: the end of sequence) but is counted as the source's
    benchmark counts it: TTFT 0, no output, no TPOT."""
    if not s.empty_answers:
        return np.zeros(s.num_requests, bool)
    return np.array(lengths(s.output_tokens, s.num_requests, s.workload, "output", seed)) == 0


def lengths(mean: int, n: int, workload: str, kind: str, seed: int = 0) -> list[int]:
    """n lengths with this mean: all equal for random / fixed prompts; for ShareGPT, spread
    as ShareGPT's are (the quantiles of length / mean in SHAREGPT_SHAPE, drawn by
    stratified sampling so small bursts get a fair share of the tail), rescaled to the mean.
    ShareGPT outputs may be 0: an empty answer (see `empty_answers`)."""
    if workload != "sharegpt" or n == 1:
        return [mean] * n
    q, ratio = SHAREGPT_SHAPE[kind]
    rng = np.random.default_rng(seed + (kind == "output"))
    u = (np.arange(n) + rng.random(n)) / n
    rng.shuffle(u)
    draw = np.interp(u, q, ratio)
    draw *= mean / draw.mean()
    return [max(0, round(x)) for x in draw]


# Quantiles of (length / mean length) of ShareGPT requests as vLLM's benchmark_serving samples
# them (ShareGPT V3, prompts <= 1,024 tokens, prompt + reply <= 2,048), pooled over six
# instruct models' N=320 runs in LambdaLabsML/vllm-benchmark results_v0/prompt_320 (1,920
# requests; 20% of outputs are 0-1 tokens: a model that stops at once). Output CV 1.07, input
# CV 1.15, max / mean ~4.9 and ~4.7. Input and output are drawn independently (their Spearman
# correlation there is -0.42, mostly from the empty outputs).
SHAREGPT_QUANTILES = [
    0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
    0.8, 0.85, 0.9, 0.95, 0.99, 1]
SHAREGPT_SHAPE = {
    "input": (SHAREGPT_QUANTILES,
              [0.0174, 0.0347, 0.0434, 0.0555, 0.0781, 0.0967, 0.1216, 0.152, 0.2042, 0.278,
               0.3672, 0.5419, 0.8514, 1.2028, 1.4942, 1.67, 1.8808, 2.3861, 3.0059,
               3.5801, 3.9898, 4.6569]),
    "output": (SHAREGPT_QUANTILES,
               [0, 0, 0, 0, 0.0108, 0.0577, 0.0909, 0.1268, 0.2196, 0.4116, 0.6954, 0.8959, 1.1151,
                1.3071, 1.5186, 1.7087, 1.9141, 2.1676, 2.5117, 3.0681, 4.1081,
                4.9031]),
}


def simulate_setting(s: RowSetting, efficiency: Efficiency):
    """(the Simulator after the run, its DriveResult)."""
    from workbench.sim.simulator import Simulator

    sim = Simulator(step_model_for(s, efficiency), s.engine, s.replicas, "round-robin")
    result = sim.run(requests_for(s), ignore_eos=True, concurrency=s.concurrency)
    return sim, result


def predicted_metrics(records: list[dict], client_s: float, empty=None) -> dict:
    """A run's metrics as vLLM's benchmark computes them, from simulator records. `empty`:
    per request index, an empty answer (see `empty_answers`)."""
    ttft = np.array([r["ttft"] for r in records]) + client_s
    e2e = np.array([r["e2e"] for r in records]) + client_s
    out = np.array([r["output_tokens"] for r in records], float)
    if empty is not None:
        out = np.where(np.asarray(empty)[[int(r["request_id"]) for r in records]], 0.0, out)
    start = min(r["arrival"] for r in records)
    duration = max(r["finish"] for r in records) + client_s - start
    return benchmark_metrics(ttft, e2e, out, duration)


def benchmark_metrics(ttft: np.ndarray, e2e: np.ndarray, out: np.ndarray, duration: float,
                      medians: bool = True) -> dict:
    """vLLM benchmark_serving's figures from per-request seconds and output tokens: means
    over requests; TPOT over requests with more than one output token; an empty answer (0
    tokens) counts with TTFT 0; throughput over the whole run. The one home of these rules
    (the simulator's records and the fit's re-timed schedules both come here)."""
    ttft = np.where(out == 0, 0.0, ttft)
    many = out > 1
    tpot = (e2e[many] - ttft[many]) / (out[many] - 1)
    got = {"ttft_ms_mean": float(ttft.mean() * 1e3),
           "tpot_ms_mean": float(tpot.mean() * 1e3) if many.any() else math.nan,
           "output_throughput": float(out.sum() / duration)}
    if medians:
        got |= {"ttft_ms_median": float(np.median(ttft) * 1e3),
                "tpot_ms_median": float(np.median(tpot) * 1e3) if many.any() else math.nan,
                "request_throughput": len(out) / duration}
    return got


def simulate_row(row, efficiency: Efficiency) -> dict:
    """The row's metrics as the simulator predicts them with `efficiency`."""
    from workbench.sim.published_fit import as_served

    s = row_setting(row)
    _, result = simulate_setting(s, as_served(efficiency, s.through_http))
    return predicted_metrics(result.records, efficiency.client_s if s.through_http else 0.0,
                             empty_answers(s))
