"""Generation throughput: this engine vs the static baseline vs Hugging Face generate.

    python benchmarks/bench_generation.py [--model small] [--repeats 3] [--dtype float32]

Prints useful output tokens/s for each system and the ratios, from one run (same workload,
same seed, same machine), plus batch-1 decode latency against HF and the bandwidth bound.
"""

from workbench.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", *sys.argv[1:]])
