"""Quantized KV: bytes per token, tokens one KV budget holds, and the predictions it changes.

    python benchmarks/bench_kv_dtype.py [--models MODEL:DTYPE,...] [--budget-mib 64]
                                        [--prompts 16] [--new-tokens 32] [--seed 0]

--models defaults to tiny:float32,tiny:bfloat16,small:float32,small:bfloat16 (the presets load
in float32; bfloat16 is how a 16-bit deployment runs them).

For every model:dtype, rows for full-precision KV ("auto", the model's dtype), its noise floor
(auto KV again, with a 64-token step budget instead of 512: other prompt chunks and batch
shapes), int8 and fp8_e4m3. Columns: KV bytes per token (scales included), the tokens a
`kv_cache_memory` of --budget-mib holds (the engine's own sizing) and that as a multiple of
auto, then top-1 agreement and the mean / max KL(full || tested) of next-token distributions
over teacher-forced greedy continuations (workbench.engine.kv_quality: --prompts seeded
prompts of 16-192 tokens, --new-tokens forced tokens each, on the engine's scheduler, runner
and paged attention), and "flip gap": the widest gap between the reference's top two logits
at a position whose argmax changed (how near a tie every changed prediction was). No
timings: every figure is deterministic for a seed and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.engine import EngineConfig  # noqa: E402
from workbench.engine.kv_quality import NOISE_FLOOR, compare_kv_dtypes  # noqa: E402
from workbench.engine.sizing import ModelFacts, size_engine  # noqa: E402


def pool_tokens(kv_bytes_per_token: int, budget: int, block_size: int = 16) -> int:
    config = EngineConfig(kv_cache_memory=budget, block_size=block_size)
    return size_engine(config, ModelFacts(kv_bytes_per_token, 1 << 20)).num_kv_blocks * block_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny:float32,tiny:bfloat16,small:float32,small:bfloat16")
    ap.add_argument("--budget-mib", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    budget = args.budget_mib << 20
    print(f"seed {args.seed}: {args.prompts} prompts of 16-192 tokens, {args.new_tokens} "
          f"teacher-forced greedy tokens each ({args.prompts * args.new_tokens} positions); "
          f"KV budget {args.budget_mib} MiB")
    head = (f"{'model':8s}{'dtype':10s}{'KV':22s}{'bytes/token':>12s}{'tokens':>10s}"
            f"{'x auto':>8s}{'top-1':>9s}{'mean KL':>11s}{'max KL':>11s}{'flip gap':>10s}")
    for spec in args.models.split(","):
        model, _, dtype = spec.partition(":")
        t = time.perf_counter()
        rows = compare_kv_dtypes(model, ["auto", NOISE_FLOOR, "int8", "fp8_e4m3"],
                                 dtype or "auto", seed=args.seed, num_prompts=args.prompts,
                                 new_tokens=args.new_tokens)
        print(f"\n{head}")
        base = pool_tokens(rows[0].reference_kv_bytes_per_token, budget)
        for q in rows:
            label = q.kv_cache_dtype + (" (64-token steps)" if q.step_budget == 64 else "")
            tokens = pool_tokens(q.kv_bytes_per_token, budget)
            print(f"{model:8s}{q.dtype:10s}{label:22s}{q.kv_bytes_per_token:>12,d}"
                  f"{tokens:>10,d}{tokens / base:>8.3f}{q.top1_agreement:>9.2%}"
                  f"{q.mean_kl:>11.2e}{q.max_kl:>11.2e}{q.max_flipped_margin:>10.4f}")
        print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
