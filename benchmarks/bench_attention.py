"""Decode attention backends side by side: SDPA over gathered blocks vs the C++ kernel.

    python benchmarks/bench_attention.py [--model small] [--repeats 3] [--seed 0]
                                         [--workloads 64:16-512:16-256,32:16-256:16-128]

For each workload (REQUESTS:PROMPTS:OUTPUTS, the `workbench bench` mixed workloads: all
requests at t=0, greedy, ignore_eos), one engine per backend (fp32, max_num_seqs 16, same
seed), passes rotated between them, each from an empty prefix cache; medians of --repeats.
Prints useful output tokens/s, the kernel's speed-up, the attention time per pass from the
step profiler (telemetry's phase_attention_s) and whether the outputs were identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.bench import _params, mixed_workload, parse_range, run_engine  # noqa: E402
from workbench.engine import EngineConfig, LLMEngine  # noqa: E402

BACKENDS = ("sdpa", "cpu-kernel")


def parse_workload(text: str) -> tuple[int, tuple[int, int], tuple[int, int]]:
    try:
        n, prompts, outputs = text.split(":")
        return int(n), parse_range("prompts", prompts), parse_range("outputs", outputs)
    except ValueError as e:
        raise SystemExit(f"--workloads: {text!r} is not REQUESTS:MIN-MAX:MIN-MAX ({e})") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workloads", default="64:16-512:16-256,32:16-256:16-128")
    args = ap.parse_args()
    engines = {b: LLMEngine.from_pretrained(args.model, EngineConfig(
        dtype="float32", max_num_seqs=16, attention_backend=b, seed=args.seed))
        for b in BACKENDS}
    print(f"model {args.model}, fp32, max_num_seqs 16, seed {args.seed}, medians of "
          f"{args.repeats} rotated passes\n")
    print("| workload | sdpa tok/s | cpu-kernel tok/s | kernel / sdpa | attention s per pass "
          "(sdpa / kernel) | outputs identical |")
    print("|---|---:|---:|---:|---:|---|")
    for spec in args.workloads.split(","):
        n, prompts, outputs = parse_workload(spec)
        w = mixed_workload(n, prompts, outputs, args.seed,
                           engines["sdpa"].model_config.vocab_size)
        seconds = {b: [] for b in BACKENDS}
        attention = {b: [] for b in BACKENDS}
        for _ in range(args.repeats):
            for b, engine in engines.items():
                first = len(engine.telemetry)
                seconds[b].append(run_engine(engine, w)[0])
                attention[b].append(sum(r.phase_attention_s for r in engine.telemetry[first:]))
        tokens = {b: [o.token_ids for o in e.generate(w.prompts, _params(w))]
                  for b, e in engines.items()}
        tps = {b: w.useful_tokens / statistics.median(v) for b, v in seconds.items()}
        att = {b: statistics.median(v) for b, v in attention.items()}
        print(f"| {w.describe().split(', all')[0]} | {tps['sdpa']:.0f} | {tps['cpu-kernel']:.0f}"
              f" | {tps['cpu-kernel'] / tps['sdpa']:.2f}x | {att['sdpa']:.1f} / "
              f"{att['cpu-kernel']:.1f} | {tokens['sdpa'] == tokens['cpu-kernel']} |")


if __name__ == "__main__":
    main()
