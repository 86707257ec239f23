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
repeats, sides rotating), and the ratios. The contiguous side keeps vLLM's admission
watermark (1% of blocks, rounded up: one of its blocks), as the engine does for any pool.

int8 vs 16-bit: the same workload on the model in bfloat16, paged, with one `kv_cache_memory`
worth `--int8-budget-tokens` tokens of bf16 KV (small enough that memory, not the request
count, limits the batch): kv_cache_dtype "auto" (bf16 K/V) beside "int8" (int8 K/V + a bf16
scale per token and head, so the same bytes hold ~1.9x the tokens). Same columns. Timings on a
shared machine are noisy: read the ratios. The measurements themselves are
`workbench.kv_strategies.paging` and `.kv_precision` (notebook 03 runs the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import kv_strategies  # noqa: E402


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
    if args.only != "int8":
        print(kv_strategies.paging(args.model, args.requests, args.max_model_len,
                                   args.budget_tokens, args.repeats, args.seed))
    if args.only != "paging":
        print(kv_strategies.kv_precision(args.model, args.requests, args.int8_budget_tokens,
                                         args.repeats, args.seed))


if __name__ == "__main__":
    main()
