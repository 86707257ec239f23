"""Paged KV vs a contiguous max_model_len reservation, and int8 KV vs 16-bit KV, each at one
fixed KV budget, in one run.

    python benchmarks/bench_kv_paging.py [--model tiny] [--requests 64] [--max-model-len 1024]
                                         [--budget-tokens 16384] [--repeats 3] [--seed 0]
                                         [--int8-budget-tokens 4096] [--only paging|int8]

Both sides are the same engine with the same KV memory (`kv_cache_memory` worth
`--budget-tokens` tokens): paged with 16-token blocks, and "contiguous" with one block of
max_model_len tokens per sequence, which is what reserving a whole context per request (a
static KV cache) amounts to. Workload: `--requests` requests submitted at once, prompts 32-256
tokens, outputs 16-128 (greedy, ignore_eos: a mixed chat-like batch). Prints per side the most
and the mean sequences running per step, output tokens/s and preemptions (medians over
repeats, sides alternating), and the ratios. The contiguous side keeps vLLM's admission
watermark (1% of blocks, rounded up: one of its blocks), as the engine does for any pool.

int8 vs 16-bit: the same workload on the model in bfloat16, paged, with one `kv_cache_memory`
worth `--int8-budget-tokens` tokens of bf16 KV (small enough that memory, not the request
count, limits the batch): kv_cache_dtype "auto" (bf16 K/V) beside "int8" (int8 K/V + a bf16
scale per token and head, so the same bytes hold ~1.9x the tokens). Same columns, medians
over repeats, sides alternating. Timings on a shared machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from workbench.engine.telemetry import telemetry_frame  # noqa: E402
from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID  # noqa: E402


def run(model: str, block_size: int, budget_bytes: int, max_len: int, prompts, outputs,
        dtype: str = "auto", kv_cache_dtype: str = "auto"):
    eng = LLMEngine.from_pretrained(model, EngineConfig(
        block_size=block_size, kv_cache_memory=budget_bytes, max_model_len=max_len,
        max_num_seqs=len(prompts), enable_prefix_caching=False, dtype=dtype,
        kv_cache_dtype=kv_cache_dtype))
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in outputs]
    t = time.perf_counter()
    got = eng.generate(prompts, params)
    wall = time.perf_counter() - t
    steps = telemetry_frame(eng)
    return {"blocks": eng.block_manager.num_blocks, "max_seqs": int(steps.num_seqs.max()),
            "mean_seqs": float(steps.num_seqs.mean()),
            "tok_s": sum(len(o.token_ids) for o in got) / wall,
            "preemptions": int(steps.num_preempted.sum())}


def compare(sides: dict, repeats: int) -> dict:
    """Run every side `repeats` times, alternating their order; medians per side."""
    results = {k: [] for k in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            results[name].append(sides[name]())
    return {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}


def print_table(med: dict) -> None:
    print(f"{'':34s}{'blocks':>8s}{'max seqs':>10s}{'mean seqs':>11s}{'output tok/s':>14s}"
          f"{'preemptions':>13s}")
    for name, m in med.items():
        print(f"{name:34s}{m['blocks']:>8.0f}{m['max_seqs']:>10.0f}{m['mean_seqs']:>11.1f}"
              f"{m['tok_s']:>14.1f}{m['preemptions']:>13.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--budget-tokens", type=int, default=16384)
    ap.add_argument("--int8-budget-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["paging", "int8"], default=None)
    args = ap.parse_args()
    probe = LLMEngine.from_pretrained(args.model, EngineConfig(num_kv_blocks=1))
    vocab = probe.model_config.vocab_size
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab) for _ in range(rng.randint(32, 256))]
               for _ in range(args.requests)]
    outputs = [rng.randint(16, 128) for _ in prompts]
    workload = (f"model {args.model}, seed {args.seed}: {args.requests} requests at once, "
                f"prompts 32-256, outputs 16-128; max_model_len {args.max_model_len}; "
                f"{args.repeats} repeats, medians")
    if args.only != "int8":
        budget = args.budget_tokens * probe.kv_bytes_per_token
        print(f"{workload}\npaged vs contiguous, model dtype {str(probe.dtype)[6:]}: KV budget "
              f"{args.budget_tokens} tokens ({budget / 1e6:.1f} MB)")
        sides = {"paged (16-token blocks)": 16,
                 "contiguous (max_model_len each)": args.max_model_len}
        med = compare({name: lambda b=b: run(args.model, b, budget, args.max_model_len,
                                             prompts, outputs) for name, b in sides.items()},
                      args.repeats)
        print_table(med)
        paged, contiguous = med.values()
        print(f"paged / contiguous: max sequences "
              f"{paged['max_seqs'] / contiguous['max_seqs']:.1f}x (target >= 3x), mean "
              f"sequences {paged['mean_seqs'] / contiguous['mean_seqs']:.1f}x, throughput "
              f"{paged['tok_s'] / contiguous['tok_s']:.2f}x")
    if args.only != "paging":
        bf16 = probe.model_config.kv_bytes_per_token(2)  # the model's KV in bfloat16
        budget = args.int8_budget_tokens * bf16
        print(f"\n{workload}\nint8 vs 16-bit KV, model in bfloat16, paged (16-token "
              f"blocks): KV budget {budget / 1e6:.2f} MB ({args.int8_budget_tokens} tokens of "
              f"bf16 KV at {bf16} bytes, or "
              f"{budget // probe.model_config.kv_bytes_per_token(2, 'int8')} of int8 KV)")
        sides = {"bf16 KV (kv_cache_dtype auto)": "auto", "int8 KV": "int8"}
        med = compare({name: lambda kv=kv: run(args.model, 16, budget, args.max_model_len,
                                               prompts, outputs, "bfloat16", kv)
                       for name, kv in sides.items()}, args.repeats)
        print_table(med)
        wide, narrow = med.values()
        print(f"int8 / bf16: blocks {narrow['blocks'] / wide['blocks']:.2f}x, max sequences "
              f"{narrow['max_seqs'] / wide['max_seqs']:.2f}x, mean sequences "
              f"{narrow['mean_seqs'] / wide['mean_seqs']:.2f}x, throughput "
              f"{narrow['tok_s'] / wide['tok_s']:.2f}x, preemptions "
              f"{wide['preemptions']:.0f} -> {narrow['preemptions']:.0f}")


if __name__ == "__main__":
    main()
