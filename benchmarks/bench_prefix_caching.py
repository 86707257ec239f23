"""Prefix caching on vs off, measured side by side in one run.

    python benchmarks/bench_prefix_caching.py [--model tiny] [--requests 64] [--prefix 1024]
                                              [--repeats 3] [--seed 0]

Workload: `--requests` requests that share a `--prefix`-token system prompt, each followed by a
unique suffix of 8-32 tokens, asking for 16-32 tokens (greedy), submitted at once (a burst of
an assistant product's users). Each repeat runs the same requests on a fresh engine with
prefix caching off, then on one; the order alternates between repeats so the machine's drift
does not favour one side. Prints, per setting, the medians over repeats of the prefill tokens
the engine computed, the mean TTFT, the output throughput, and the cache's hit rate; then
the ratios (off / on). Outputs are checked equal between the two settings.
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


def workload(n: int, prefix_len: int, vocab: int, seed: int):
    rng = random.Random(seed)
    token = lambda: rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab)  # noqa: E731
    prefix = [token() for _ in range(prefix_len)]
    prompts = [prefix + [token() for _ in range(rng.randint(8, 32))] for _ in range(n)]
    return prompts, [rng.randint(16, 32) for _ in range(n)]


def run(model: str, caching: bool, prompts, outputs) -> dict:
    eng = LLMEngine.from_pretrained(model, EngineConfig(enable_prefix_caching=caching))
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in outputs]
    t = time.perf_counter()
    got = eng.generate(prompts, params)
    wall = time.perf_counter() - t
    steps = telemetry_frame(eng)
    return {"prefill_tokens": int(steps.num_prefill_tokens.sum()),
            "ttft_mean_s": statistics.mean(o.metrics.ttft for o in got),
            "output_tok_s": sum(len(o.token_ids) for o in got) / wall,
            "hit_rate": eng.block_manager.hit_rate,
            "outputs": [o.token_ids for o in got]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vocab = LLMEngine.from_pretrained(args.model, EngineConfig()).model_config.vocab_size
    prompts, outputs = workload(args.requests, args.prefix, vocab, args.seed)
    print(f"model {args.model}, seed {args.seed}: {args.requests} requests sharing a "
          f"{args.prefix}-token prefix + 8-32 unique tokens, 16-32 output tokens, all at once; "
          f"{args.repeats} repeats, medians")
    results = {False: [], True: []}
    for r in range(args.repeats):
        for caching in ((False, True) if r % 2 == 0 else (True, False)):
            results[caching].append(run(args.model, caching, prompts, outputs))
    assert all(x["outputs"] == results[False][0]["outputs"] for x in results[True]), \
        "prefix caching changed the outputs"
    med = {c: {k: statistics.median(x[k] for x in rs) for k in rs[0] if k != "outputs"}
           for c, rs in results.items()}
    print(f"{'':18s}{'prefill tokens':>16s}{'mean TTFT (s)':>15s}{'output tok/s':>14s}"
          f"{'hit rate':>10s}")
    for c, label in ((False, "caching off"), (True, "caching on")):
        m = med[c]
        print(f"{label:18s}{m['prefill_tokens']:>16,.0f}{m['ttft_mean_s']:>15.3f}"
              f"{m['output_tok_s']:>14.1f}{m['hit_rate']:>10.1%}")
    off, on = med[False], med[True]
    print(f"off / on: prefill tokens {off['prefill_tokens'] / on['prefill_tokens']:.2f}x, "
          f"mean TTFT {off['ttft_mean_s'] / on['ttft_mean_s']:.2f}x (target >= 3x), "
          f"throughput on / off {on['output_tok_s'] / off['output_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
