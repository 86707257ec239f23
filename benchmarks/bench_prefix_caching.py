"""Prefix caching on vs off, measured side by side in one run.

    python benchmarks/bench_prefix_caching.py [--model tiny] [--requests 64] [--prefix 1024]
                                              [--repeats 3] [--seed 0]

Workload: `--requests` requests that share a `--prefix`-token system prompt, each followed by a
unique suffix of 8-32 tokens, asking for 16-32 tokens (greedy), submitted at once (a burst of
an assistant product's users). Each repeat runs the same requests on a fresh engine per
setting, the order rotating between repeats. Prints, per setting, the medians over repeats of
the prefill tokens the engine computed, the mean TTFT, the output throughput and the cache's
hit rate; then the ratios. Outputs are checked equal between the settings. The measurement
itself is `workbench.kv_strategies.prefix_caching` (notebook 03 runs the same).
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
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(kv_strategies.prefix_caching(args.model, args.requests, args.prefix, args.repeats,
                                       args.seed))


if __name__ == "__main__":
    main()
