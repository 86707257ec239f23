"""Simulator fidelity: real engine vs simulator on scenarios NOT used for fitting.

    python benchmarks/bench_sim_fidelity.py [--model tiny] [--repeats 1]

1. Profile the model with the designed sweep and fit the step model (the only fitting data).
2. For each scenario below, run the real engine and the simulator with the same seed.
3. Print the relative error of p50/p90 TTFT, TPOT, E2E and of request throughput, the median
   absolute errors, and how much faster than real time the simulator ran.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.fit.from_runs import fit_from_runs  # noqa: E402
from workbench.fit.profile import profile_model  # noqa: E402
from workbench.sim.compare import compare_runs  # noqa: E402
from workbench.sim.simulator import simulate_scenario  # noqa: E402
from workbench.traffic import load_run, load_scenario  # noqa: E402
from workbench.traffic.run_scenario import run_scenario  # noqa: E402

# (label, scenario file, overrides): different rates, burstiness, length mixes, a shared-prefix
# one, and one whose small KV pool forces preemption.
CASES = [
    ("chat @6/s", "chat.yaml", ["arrival.rate=6"]),
    ("bursty agents (gamma 0.3)", "bursty-agents.yaml", []),
    ("shared system prompt", "shared-system-prompt.yaml", []),
    ("RAG long prompts, chunked", "rag-long-prompt.yaml", []),
    ("chat, tight KV pool (preemption)", "chat.yaml",
     ["arrival.rate=8", "target.engine.num_kv_blocks=40", "target.engine.block_size=16"]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", default=None)
    ap.add_argument("--big", type=int, default=100_000, help="requests in the speed check")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fidelity-"))

    t = time.perf_counter()
    prof = profile_model(args.model, {"max_num_seqs": 32}, out, progress=False)
    fit = fit_from_runs([prof])
    print(f"model {args.model}: profiled {len(load_run(prof).steps)} steps in "
          f"{time.perf_counter() - t:.0f} s; held-out step MAPE "
          f"{fit.validation['mape'] * 100:.1f}%, R² {fit.validation['r2']:.3f}")

    tables, speed = [], []
    for label, name, overrides in CASES:
        sc = load_scenario(ROOT / "scenarios" / name, overrides + [f"target.model={args.model}"])
        real = run_scenario(sc, out, progress=False)
        t = time.perf_counter()
        sim = simulate_scenario(sc, fit, out, log=lambda m: None)
        sim_wall = time.perf_counter() - t
        real_run = load_run(real)
        speed.append(real_run.manifest["summary"]["duration_s"] / sim_wall)
        table = compare_runs(real_run, sim).assign(scenario=label)
        preempted = int(real_run.requests.preemptions.sum())
        print(f"\n{label}: {len(real_run.requests)} requests, seed {sc.seed}, real preemptions "
              f"{preempted}, simulated {int(load_run(sim).requests.preemptions.sum())}, "
              f"simulator {speed[-1]:.0f}x faster than real time")
        print(table.drop(columns="scenario").to_string(
            index=False, formatters={"real": "{:.4f}".format, "sim": "{:.4f}".format,
                                     "error": "{:+.1%}".format}))
        tables.append(table)

    allr = pd.concat(tables)
    allr["abs"] = allr["error"].abs()
    print("\nmedian absolute error over scenarios and p50/p90:")
    for metric, target in (("ttft", 0.10), ("tpot", 0.05), ("e2e", 0.05)):
        med = allr[allr.metric.str.startswith(metric)]["abs"].median()
        print(f"  {metric.upper():5s} {med:6.1%}  (target <= {target:.0%})")
    thr = allr[allr.metric == "request_throughput"]["abs"]
    print(f"  request throughput: max {thr.max():.1%}, median {thr.median():.1%} "
          "(target within 3%)")
    print(f"  simulator speed: median {statistics.median(speed):.0f}x real time "
          f"(min {min(speed):.0f}x; target >= 200x)")

    sc = load_scenario(ROOT / "scenarios" / "chat.yaml",
                       [f"target.model={args.model}", f"num_requests={args.big}"])
    t = time.perf_counter()
    big = load_run(simulate_scenario(sc, fit, out, log=lambda m: None))
    wall = time.perf_counter() - t
    print(f"  {args.big:,} chat requests ({len(big.steps):,} steps, "
          f"{big.manifest['summary']['duration_s']:,.0f} s simulated) in {wall:.1f} s wall, "
          "including writing the run (target < 60 s)")


if __name__ == "__main__":
    main()
