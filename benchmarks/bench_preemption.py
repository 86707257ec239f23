"""Preemption cost: recompute vs swap on a memory-starved workload, side by side in one run.

    python benchmarks/bench_preemption.py [--model tiny] [--requests 48] [--pool-tokens 2048]
                                          [--repeats 3] [--seed 0]

Workload: `--requests` requests submitted at once, prompts 64-192 tokens, outputs 96-256
(greedy, ignore_eos), into a KV pool of `--pool-tokens` tokens: far less than the batch's
sequences grow to, so decodes keep running out of blocks and preempt. Sides, each a fresh
engine on the same requests, order rotating between repeats:
- recompute: a victim's blocks are freed and its prompt + output recomputed (prefix caching
  off, so nothing of it is found again);
- swap: a victim's blocks are copied to a host pool (as big as the device pool) and back;
- recompute + prefix caching (the engine's default, vLLM V1's only mode): a victim finds what
  is left of its own blocks in the cache.
Prints per side the medians over repeats of output tokens/s, p50 / p99 TPOT (per request,
vLLM's definition), preemptions by kind, prefill tokens computed (prompts + recomputation)
and blocks copied; then the ratios to recompute. Outputs are checked equal across sides. The
measurement itself is `workbench.kv_strategies.preemption` (notebook 03 runs the same).
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
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--pool-tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(kv_strategies.preemption(args.model, args.requests, args.pool_tokens, args.repeats,
                                   args.seed))


if __name__ == "__main__":
    main()
