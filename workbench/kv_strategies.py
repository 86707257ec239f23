"""The engine's KV-memory strategies measured side by side: one home for the benchmarks
(benchmarks/bench_prefix_caching.py, bench_kv_paging.py, bench_preemption.py print these) and
notebook 03.

Each comparison builds one seeded workload, runs it on a fresh engine per side, sides rotating
between repeats so the machine's drift favours none, checks that every side produced the same
greedy outputs, and reports per side the medians over repeats. Timings are this machine's:
the ratios between sides of one run are the result, not the absolute numbers.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.telemetry import telemetry_frame
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID


@dataclass
class Comparison:
    title: str
    workload: str  # what ran, with the seed: enough to reproduce it
    table: object  # pandas DataFrame, one row per side (medians over repeats)
    ratios: dict[str, float]  # the headline ratios between sides

    def __str__(self) -> str:
        lines = [f"{self.title}: {self.workload}", self.table.to_string(float_format=_fmt)]
        lines += [f"{name}: {value:.2f}x" for name, value in self.ratios.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # how a notebook shows it
        from html import escape

        ratios = "".join(f"<li>{escape(k)}: <b>{v:.2f}x</b></li>" for k, v in self.ratios.items())
        return (f"<p><b>{escape(self.title)}</b>: {escape(self.workload)}</p>"
                + self.table.to_html(float_format=_fmt) + f"<ul>{ratios}</ul>")


def _fmt(x: float) -> str:
    return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    outputs: list[int]

    def params(self) -> list[SamplingParams]:
        return [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
                for n in self.outputs]


def _model_config(model: str):
    """The checkpoint's config.json: what a workload needs, without loading weights."""
    from workbench.models.config import ModelConfig
    from workbench.models.tiny import resolve_model

    return ModelConfig.from_dir(resolve_model(model))


def _vocab(model: str) -> int:
    return _model_config(model).vocab_size


def _measure(model: str, config: EngineConfig, work: Workload) -> dict:
    """One run of the workload, all submitted at once, on a fresh engine."""
    eng = LLMEngine.from_pretrained(model, config)
    t = time.perf_counter()
    got = eng.generate(work.prompts, work.params())
    wall = time.perf_counter() - t
    steps = telemetry_frame(eng)
    tpot = [o.metrics.tpot for o in got if o.metrics.tpot is not None]
    return {
        "kv blocks": eng.num_kv_blocks,
        "max seqs": int(steps.num_seqs.max()),
        "mean seqs": float(steps.num_seqs.mean()),
        "prefill tokens": int(steps.num_prefill_tokens.sum()),
        "hit rate": eng.block_manager.hit_rate,
        "mean TTFT ms": 1e3 * statistics.mean(o.metrics.ttft for o in got),
        "TPOT p50 ms": 1e3 * float(np.percentile(tpot, 50)) if tpot else float("nan"),
        "TPOT p99 ms": 1e3 * float(np.percentile(tpot, 99)) if tpot else float("nan"),
        "output tok/s": sum(len(o.token_ids) for o in got) / wall,
        "preemptions": int(steps.num_preempted.sum()),
        "swapped": int(steps.num_preempted_swap.sum()),
        "recomputed": int((steps.num_preempted - steps.num_preempted_swap).sum()),
        "blocks copied": int(steps.num_swap_blocks.sum()),
        "_outputs": [o.token_ids for o in got],
    }


def _compare(model: str, sides: dict[str, EngineConfig], work: Workload, repeats: int,
             columns: list[str], progress: Callable[[str], None] | None = None,
             same_outputs: bool = True):
    """Medians per side over `repeats` rotations; raises if any side's outputs differ (unless
    the sides differ in precision: `same_outputs=False`)."""
    import pandas as pd

    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    names = list(sides)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if progress:
                progress(f"repeat {r + 1}/{repeats}: {name}")
            runs[name].append(_measure(model, sides[name], work))
    reference = runs[names[0]][0]["_outputs"]
    for name, results in runs.items():
        if any(x["_outputs"] != (reference if same_outputs else results[0]["_outputs"])
               for x in results):
            raise RuntimeError(f"{name}: outputs differ from {names[0]}'s (greedy runs must match)")
    table = pd.DataFrame({n: {c: statistics.median(x[c] for x in runs[n]) for c in columns}
                          for n in names}).T
    return table


def _random_prompts(rng: random.Random, vocab: int, n: int, lo: int, hi: int):
    return [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab) for _ in range(rng.randint(lo, hi))]
            for _ in range(n)]


# -- prefix caching ------------------------------------------------------------------------------
def prefix_caching(model: str = "tiny", requests: int = 64, prefix: int = 1024,
                   repeats: int = 3, seed: int = 0, progress=None) -> Comparison:
    """Requests sharing a `prefix`-token system prompt, each with a unique 8-32-token suffix,
    16-32 output tokens, all at once: caching off vs on (the engine's defaults otherwise)."""
    rng = random.Random(seed)
    vocab = _vocab(model)
    shared = [rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab) for _ in range(prefix)]
    work = Workload([shared + p for p in _random_prompts(rng, vocab, requests, 8, 32)],
                    [rng.randint(16, 32) for _ in range(requests)])
    sides = {"caching off": EngineConfig(enable_prefix_caching=False),
             "caching on": EngineConfig(enable_prefix_caching=True)}
    table = _compare(model, sides, work, repeats,
                     ["prefill tokens", "mean TTFT ms", "output tok/s", "hit rate"], progress)
    off, on = table.loc["caching off"], table.loc["caching on"]
    return Comparison(
        "Prefix caching", f"model {model}, seed {seed}: {requests} requests sharing a "
        f"{prefix}-token prefix + 8-32 unique tokens, 16-32 output tokens, all at once; "
        f"medians of {repeats}", table,
        {"prefill tokens off / on": off["prefill tokens"] / on["prefill tokens"],
         "mean TTFT off / on (target >= 3x)": off["mean TTFT ms"] / on["mean TTFT ms"],
         "throughput on / off": on["output tok/s"] / off["output tok/s"]})


# -- paging and KV precision at one budget --------------------------------------------------------
def _chat_batch(model: str, requests: int, seed: int) -> Workload:
    """A mixed chat-like batch: prompts 32-256 tokens, outputs 16-128, all at once."""
    rng = random.Random(seed)
    return Workload(_random_prompts(rng, _vocab(model), requests, 32, 256),
                    [rng.randint(16, 128) for _ in range(requests)])


def _kv_bytes_per_token(model: str, dtype: str) -> int:
    """The model's K/V per token when it runs in `dtype` (the engine's own formula)."""
    from workbench.models.loader import resolve_dtype

    cfg = _model_config(model)
    return cfg.kv_bytes_per_token(resolve_dtype(dtype, cfg).itemsize)


CAPACITY_COLUMNS = ["kv blocks", "max seqs", "mean seqs", "output tok/s", "preemptions"]


def paging(model: str = "tiny", requests: int = 64, max_model_len: int = 1024,
           budget_tokens: int = 16384, repeats: int = 3, seed: int = 0,
           progress=None) -> Comparison:
    """Paged 16-token blocks vs a contiguous reservation of max_model_len per sequence (one
    block of max_model_len: what a static KV cache amounts to), one `kv_cache_memory`."""
    work = _chat_batch(model, requests, seed)
    budget = budget_tokens * _kv_bytes_per_token(model, "auto")
    common = dict(kv_cache_memory=budget, max_model_len=max_model_len, max_num_seqs=requests,
                  enable_prefix_caching=False)
    sides = {"paged (16-token blocks)": EngineConfig(block_size=16, **common),
             "contiguous (max_model_len each)": EngineConfig(block_size=max_model_len,
                                                             **common)}
    table = _compare(model, sides, work, repeats, CAPACITY_COLUMNS, progress)
    paged, contiguous = table.iloc[0], table.iloc[1]
    return Comparison(
        "Paged vs contiguous KV", f"model {model}, seed {seed}: {requests} requests at once, "
        f"prompts 32-256, outputs 16-128, max_model_len {max_model_len}, one KV budget of "
        f"{budget_tokens:,} tokens ({budget / 1e6:.1f} MB); medians of {repeats}", table,
        {"most sequences paged / contiguous (target >= 3x)":
         paged["max seqs"] / contiguous["max seqs"],
         "mean sequences paged / contiguous": paged["mean seqs"] / contiguous["mean seqs"],
         "throughput paged / contiguous": paged["output tok/s"] / contiguous["output tok/s"]})


def kv_precision(model: str = "tiny", requests: int = 64, budget_tokens: int = 4096,
                 repeats: int = 3, seed: int = 0, max_model_len: int = 1024,
                 progress=None) -> Comparison:
    """The model in bfloat16, paged, one `kv_cache_memory` worth `budget_tokens` of bf16 KV
    (small enough that memory, not the request count, bounds the batch): bf16 K/V vs int8
    K/V (plus a bf16 scale per token and head). Outputs differ (int8 changes predictions near
    ties: see workbench.engine.kv_quality), so only each side's repeats are checked equal."""
    work = _chat_batch(model, requests, seed)
    budget = budget_tokens * _kv_bytes_per_token(model, "bfloat16")
    sides = {f"{name} KV": EngineConfig(
        dtype="bfloat16", kv_cache_memory=budget, max_num_seqs=requests,
        enable_prefix_caching=False, kv_cache_dtype=kv, max_model_len=max_model_len)
        for name, kv in (("bf16", "auto"), ("int8", "int8"))}
    table = _compare(model, sides, work, repeats, CAPACITY_COLUMNS, progress,
                     same_outputs=False)
    wide, narrow = table.iloc[0], table.iloc[1]
    return Comparison(
        "int8 vs 16-bit KV", f"model {model} in bfloat16, seed {seed}: {requests} requests at "
        f"once, prompts 32-256, outputs 16-128, one KV budget of {budget_tokens:,} bf16 tokens "
        f"({budget / 1e6:.2f} MB); medians of {repeats}", table,
        {"blocks int8 / bf16": narrow["kv blocks"] / wide["kv blocks"],
         "most sequences int8 / bf16": narrow["max seqs"] / wide["max seqs"],
         "mean sequences int8 / bf16": narrow["mean seqs"] / wide["mean seqs"],
         "throughput int8 / bf16": narrow["output tok/s"] / wide["output tok/s"]})


# -- preemption modes ----------------------------------------------------------------------------
PREEMPTION_SIDES = {
    "recompute": dict(preemption_mode="recompute", enable_prefix_caching=False),
    "swap": dict(preemption_mode="swap", enable_prefix_caching=False),
    # The engine's default (vLLM V1's only mode): a victim finds what is left of its blocks.
    "recompute + prefix caching": dict(preemption_mode="recompute", enable_prefix_caching=True),
}


def preemption(model: str = "tiny", requests: int = 48, pool_tokens: int = 2048,
               repeats: int = 3, seed: int = 0, progress=None) -> Comparison:
    """Requests of prompts 64-192 and outputs 96-256 tokens, all at once, into a KV pool far
    smaller than they grow to: recompute vs swap (host pool as big as the device pool)."""
    rng = random.Random(seed)
    work = Workload(_random_prompts(rng, _vocab(model), requests, 64, 192),
                    [rng.randint(96, 256) for _ in range(requests)])
    block = EngineConfig().block_size
    sides = {name: EngineConfig(num_kv_blocks=pool_tokens // block, max_num_seqs=requests, **kw)
             for name, kw in PREEMPTION_SIDES.items()}
    table = _compare(model, sides, work, repeats,
                     ["output tok/s", "TPOT p50 ms", "TPOT p99 ms", "swapped", "recomputed",
                      "prefill tokens", "blocks copied"], progress)
    base = table.loc["recompute"]
    ratios = {}
    for name in list(sides)[1:]:
        row = table.loc[name]
        ratios[f"{name} / recompute: throughput"] = row["output tok/s"] / base["output tok/s"]
        ratios[f"{name} / recompute: p99 TPOT"] = row["TPOT p99 ms"] / base["TPOT p99 ms"]
    need = sum(len(p) + n for p, n in zip(work.prompts, work.outputs, strict=True))
    return Comparison(
        "Preemption", f"model {model}, seed {seed}: {requests} requests at once, prompts "
        f"64-192, outputs 96-256 ({need:,} tokens of KV in all) into a {pool_tokens:,}-token "
        f"pool; medians of {repeats}", table, ratios)


# -- sliding window --------------------------------------------------------------------------------
def sliding_window(model: str = "tiny-mistral", requests: int = 16, pool_tokens: int = 4096,
                   seed: int = 0, progress=None) -> Comparison:
    """Long requests on a sliding-window model: the blocks the engine held at its busiest step
    against the blocks the same sequences' tokens fill without window freeing."""
    import pandas as pd

    eng = LLMEngine.from_pretrained(model, EngineConfig(
        num_kv_blocks=pool_tokens // EngineConfig().block_size, max_num_seqs=requests))
    window = eng.model_config.sliding_window
    if window is None:
        raise ValueError(f"model: {model} has no sliding window (try tiny-mistral)")
    rng = random.Random(seed)
    vocab = eng.model_config.vocab_size
    work = Workload(_random_prompts(rng, vocab, requests, window, 2 * window),
                    [rng.randint(2 * window, 4 * window) for _ in range(requests)])
    got = eng.generate(work.prompts, work.params())
    steps = telemetry_frame(eng)
    bs = eng.config.block_size
    # Without freeing, a step's sequences would hold a block per block_size tokens of context.
    unfreed = -(-steps.sum_context_tokens // bs)
    busiest = int(unfreed.idxmax())
    table = pd.DataFrame({"with window freeing": {
        "window tokens": window, "sequences": int(steps.num_seqs[busiest]),
        "blocks held": int(steps.kv_blocks_used[busiest]),
        "blocks without freeing": int(unfreed[busiest]),
        "most blocks held": int(steps.kv_blocks_used.max()),
        "preemptions": int(steps.num_preempted.sum()),
        "output tokens": sum(len(o.token_ids) for o in got)}}).T
    row = table.iloc[0]
    return Comparison(
        "Sliding window", f"model {model} (window {window}), seed {seed}: {requests} requests "
        f"at once, prompts {window}-{2 * window}, outputs {2 * window}-{4 * window}, a "
        f"{pool_tokens:,}-token pool", table,
        {"blocks without freeing / held, busiest step":
         row["blocks without freeing"] / row["blocks held"]})
