"""Real replicas behind the gateway vs the simulator's prediction, for each load balancer.

    python benchmarks/bench_replicas.py [--scenario scenarios/shared-system-prompt.yaml]
        [--replicas 2] [--lbs round-robin least-outstanding least-kv prefix-affinity]
        [--set arrival.rate=6 --set num_requests=60] [--fit FIT.json | --save-fit FIT.json]

1. Profile the model with the scenario's engine config and fit the step model (as
   bench_sim_fidelity.py does), in this process with ONE torch thread: each replica runs with
   one thread (`--replica-threads 1`), so the fit measures the engine the replicas are. On a
   2-core machine two replicas with several threads each would contend for the same cores and
   the fit would not describe them; with one each, N replicas need N free cores (plus a little
   for the gateway and the driver) to measure anything meaningful.
2. For each balancer: start `workbench serve --replicas N --lb LB` (the gateway, a real
   process on a loopback port), drive the scenario through it with the workbench's HTTP driver
   (token-id prompts, so lengths are exact), stop it; then simulate the same scenario (same
   seed, same requests) on N simulated replicas with the same policy class.
3. Print per balancer: measured vs predicted TTFT / TPOT / E2E medians and p90s and request
   throughput, with the % error (sim / real - 1), and how many requests each replica got,
   really and in the simulation (placements differ where the balancer reads state the two
   runs have at different moments: least-outstanding, least-kv).

The real side includes the gateway's proxy hop and the HTTP relay, which the simulator does not
model (it predicts engine-side time from arrival): a constant few ms on TTFT and E2E.
Smoke run: --set num_requests=8 --set target.engine.max_num_seqs=4 --lbs round-robin.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.sim.compare import compare_runs  # noqa: E402
from workbench.sim.load_balancer import POLICIES  # noqa: E402
from workbench.sim.simulator import simulate_scenario  # noqa: E402
from workbench.traffic import load_run, load_scenario  # noqa: E402
from workbench.traffic.run_scenario import run_scenario  # noqa: E402
from workbench.traffic.scenario import HttpTarget  # noqa: E402

SHOWN = ("ttft_p50", "tpot_p50", "e2e_p50", "ttft_p90", "tpot_p90", "e2e_p90",
         "request_throughput")


def serve_flags(engine: dict) -> list[str]:
    """The scenario's engine config as `workbench serve` options."""
    flags = []
    for key, value in engine.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(model: str, replicas: int, lb: str, engine: dict):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", "--model", model, "--port", str(port),
         "--replicas", str(replicas), "--lb", lb, "--replica-threads", "1",
         *serve_flags(engine)], env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the gateway did not come up")


def routed_counts(url: str, model: str) -> list[int]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "workbench:lb_routed_total" and s.labels["model"] == model:
                counts[int(s.labels["replica"])] = int(s.value)
    return [counts[i] for i in sorted(counts)]


def get_fit(args, sc, out: Path):
    import torch

    from workbench.fit.from_runs import fit_from_runs
    from workbench.fit.profile import profile_model
    from workbench.fit.step_model import load_fit

    if args.fit:
        return load_fit(args.fit)
    torch.set_num_threads(1)  # as each replica runs (see the module docstring)
    t = time.perf_counter()
    prof = profile_model(sc.target.model, dict(sc.target.engine), out, progress=False)
    fit = fit_from_runs([prof])
    print(f"profiled {len(load_run(prof).steps)} steps in {time.perf_counter() - t:.0f} s "
          f"(1 torch thread); held-out step MAPE {fit.validation['mape'] * 100:.1f}%",
          flush=True)
    if args.save_fit:
        fit.save(args.save_fit)
    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "shared-system-prompt.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="scenario override (repeatable)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--lbs", nargs="+", default=[p for p in POLICIES if p != "random"],
                    choices=POLICIES)
    ap.add_argument("--fit", help="reuse a fit (JSON) instead of profiling")
    ap.add_argument("--save-fit", help="write the fit made here to this file")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="replicas-"))
    sc = load_scenario(args.scenario, args.overrides + [f"target.model={args.model}"])
    fit = get_fit(args, sc, out)
    engine = dict(sc.target.engine)
    print(f"scenario {sc.name}: seed {sc.seed}, {sc.num_requests} requests, arrival "
          f"{sc.arrival.model_dump()}, engine {engine}; {args.replicas} replicas of "
          f"{args.model}, 1 torch thread each; out {out}", flush=True)
    http = sc.model_copy(update={"target": HttpTarget(
        kind="http", url="http://127.0.0.1:1", model=args.model,
        vocab_size=fit.model["vocab_size"])})  # the same vocab: the same request specs
    rows = []
    for lb in args.lbs:
        proc, url = start_gateway(args.model, args.replicas, lb, engine)
        try:
            target = http.target.model_copy(update={"url": url})
            real = load_run(run_scenario(http.model_copy(update={"target": target}), out,
                                         progress=False, log=lambda m: print(m, flush=True)))
            placed_real = routed_counts(url, args.model)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        sim = load_run(simulate_scenario(sc, fit, out, log=lambda m: None,
                                         replicas=args.replicas, lb=lb))
        placed_sim = (sim.requests["replica"].value_counts().sort_index().tolist()
                      if "replica" in sim.requests else [])
        failed = int((real.requests["finish_reason"] == "error").sum())
        table = compare_runs(real, sim).set_index("metric").loc[list(SHOWN)]
        print(f"\n{lb}: requests per replica real {placed_real}, simulated {placed_sim}"
              + (f"; {failed} real requests failed" if failed else ""))
        print(table.to_string(formatters={"real": "{:.4f}".format, "sim": "{:.4f}".format,
                                          "error": "{:+.1%}".format}), flush=True)
        rows.append(table["error"].rename(lb))
    print("\n% error (simulated / real - 1) by balancer:")
    print(pd.concat(rows, axis=1).to_string(float_format="{:+.1%}".format))


if __name__ == "__main__":
    main()
