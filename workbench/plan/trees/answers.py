"""Turn numbers (model, GPU, targets, workload shape) into the trees' categorical answers.

The trees stay pure data; these functions are where memory and roofline results enter them,
and they return the facts they used so a report can show them next to the path.
"""

from __future__ import annotations

from workbench.plan.budget import DEFAULT_RESERVE, max_concurrent_seqs, min_tp
from workbench.plan.hardware import Hardware
from workbench.plan.models_catalog import ModelArch
from workbench.plan.names import check_non_negative, check_positive
from workbench.plan.roofline import Efficiency, decode_step

GPUS_PER_NODE = 8          # HGX / DGX nodes carry 8 GPUs
REPEAT_THRESHOLD = 0.10    # a response cache pays off once ~1 in 10 requests repeats
SHARED_PREFIX_THRESHOLD = 0.30
# Ollama serves OLLAMA_NUM_PARALLEL requests at once (default 4, or 1 on small memory: Ollama
# FAQ) and queues the rest: up to that many in flight, a batching server buys little.
LOW_CONCURRENCY_IN_FLIGHT = 4


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def quantization_answers(m: ModelArch, hw: Hardware, context: int = 4096, concurrency: int = 1,
                         quality: str = "tolerant", gpus: int = 1,
                         reserve_fraction: float = DEFAULT_RESERVE) -> tuple[dict, dict]:
    """fits_at = the highest precision at which `concurrency` sequences of `context` fit."""
    check_positive(context=context, concurrency=concurrency, gpus=gpus)
    fits = {p: max_concurrent_seqs(m, hw, p, context, "auto", gpus, reserve_fraction)
            for p in ("bf16", "int8", "int4")}
    fits_at = next((p for p, n in fits.items() if n >= concurrency), "none")
    answers = {"hardware": "cpu_or_edge" if hw.vendor == "cpu" else "gpu",
               "fits_at": fits_at, "quality": quality,
               "fp8_hardware": _yes(bool(hw.peak_tflops.get("fp8")))}
    facts = {f"max_seqs_{p}": n for p, n in fits.items()}
    if fits_at == "none":  # how many GPUs hold `concurrency` sequences at int4
        facts["gpus_needed_int4"] = min_tp(m, hw, "int4", context, concurrency, "auto",
                                           reserve_fraction)
    return answers, facts


def parallelism_answers(m: ModelArch, hw: Hardware, precision: str = "bf16",
                        context: int = 4096, batch: int = 1,
                        target_tokens_per_s: float | None = None,
                        target_tpot_s: float | None = None,
                        efficiency: Efficiency | None = None,
                        reserve_fraction: float = DEFAULT_RESERVE) -> tuple[dict, dict]:
    """Fit from the memory model, sized for the target: `batch` sequences of `context` tokens
    (weights plus their KV); load and latency from the roofline with `efficiency`.

    gpus_needed is the smallest tensor-parallel size that holds the whole batch, not only the
    weights (gpus_for_weights): Llama-2-70B in bf16 fits 2 H100s, but 64 sequences of 4,096
    tokens need 4."""
    check_positive(context=context, batch=batch)
    check_non_negative(target_tokens_per_s=target_tokens_per_s, target_tpot_s=target_tpot_s)
    need = min_tp(m, hw, precision, context, batch, "auto", reserve_fraction)
    seqs = max_concurrent_seqs(m, hw, precision, context, "auto", 1, reserve_fraction)
    fits_one = seqs >= batch
    facts: dict = {"gpus_needed": need,
                   "gpus_for_weights": min_tp(m, hw, precision, context, 1, "auto",
                                              reserve_fraction),
                   "max_seqs_one_gpu": seqs}
    if need is not None:
        facts["max_seqs_at_gpus_needed"] = max_concurrent_seqs(m, hw, precision, context,
                                                               "auto", need, reserve_fraction)
    answers = {"fits_one_gpu": _yes(fits_one),
               "fits_one_node": _yes(need is not None and need <= GPUS_PER_NODE),
               "interconnect": "nvlink" if hw.interconnect == "nvlink" else "pcie"}
    if fits_one:
        full = decode_step(m, hw, max(seqs, 1), context, precision, efficiency=efficiency)
        one = decode_step(m, hw, 1, context, precision, efficiency=efficiency)
        facts |= {"tokens_per_s_one_gpu": full.tokens_per_s, "tpot_s_batch1": one.time_s}
        answers["load_fits_one_gpu"] = _yes(target_tokens_per_s is None
                                            or full.tokens_per_s >= target_tokens_per_s)
        answers["latency_met_one_gpu"] = _yes(target_tpot_s is None
                                              or one.time_s <= target_tpot_s)
    return answers, facts


def caching_answers(m: ModelArch, hw: Hardware, repeat_fraction: float = 0.0,
                    shared_prefix_fraction: float = 0.0, context: int = 4096,
                    concurrency: int = 1, precision: str = "bf16", gpus: int = 1
                    ) -> tuple[dict, dict]:
    """Workload shape -> answers: repeats, shared prefixes, whether KV caps the batch (on a
    replica of `gpus` tensor-parallel GPUs)."""
    check_positive(context=context, concurrency=concurrency, gpus=gpus)
    for name, value in (("repeat_fraction", repeat_fraction),
                        ("shared_prefix_fraction", shared_prefix_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name}: must be in [0, 1], got {value}")
    seqs = max_concurrent_seqs(m, hw, precision, context, "auto", gpus)
    answers = {"repeated_requests": _yes(repeat_fraction >= REPEAT_THRESHOLD),
               "shared_prefix": _yes(shared_prefix_fraction >= SHARED_PREFIX_THRESHOLD),
               "kv_memory_bound": _yes(seqs < concurrency),
               "sliding_window_model": _yes(m.sliding_window is not None)}
    return answers, {"max_seqs": seqs}


def requests_in_flight(requests_per_s: float, latency_s: float) -> float:
    """Little's law (Little 1961): requests in the system L = arrival rate x time each spends
    in it (queueing + prefill + decode, about the end-to-end latency)."""
    check_non_negative(requests_per_s=requests_per_s)
    check_positive(latency_s=latency_s)
    return requests_per_s * latency_s


def framework_answers(requests_per_s: float, latency_s: float) -> tuple[dict, dict]:
    """The framework tree's `concurrency` from requests in flight, not from the request rate:
    2 requests/s of 30 s answers keep 60 in flight (high), while 20 requests/s of 0.1 s keep
    2 (low)."""
    in_flight = requests_in_flight(requests_per_s, latency_s)
    low = in_flight <= LOW_CONCURRENCY_IN_FLIGHT
    return ({"concurrency": "low" if low else "high"},
            {"requests_in_flight": in_flight, "low_concurrency_max": LOW_CONCURRENCY_IN_FLIGHT})
