"""HTTP driver overhead: how late requests leave against their schedule.

    python benchmarks/bench_driver_lateness.py [--rate 50] [--requests 500] [--repeats 3]

Starts the stub endpoint (one token per request, no model) on 127.0.0.1 in its own process,
drives it with a constant-rate schedule of 1-token requests, and prints send-time lateness
percentiles per repeat and their median. Target: p99 < 5 ms at 50 requests/s.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from workbench.traffic.http_driver import drive_http
from workbench.traffic.scenario import parse_scenario
from workbench.traffic.workload import build_requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stub = subprocess.Popen([sys.executable, "-m", "workbench.server.stub", "--port", str(port)])
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        sc = parse_scenario({
            "name": "lateness", "seed": args.seed,
            "target": {"kind": "http", "url": url, "model": "stub"},
            "arrival": {"kind": "constant", "rate": args.rate},
            "prompt_tokens": {"dist": "fixed", "value": 16},
            "output_tokens": {"dist": "fixed", "value": 1}, "num_requests": args.requests})
        specs = build_requests(sc, 4096)
        print(f"workload: {args.requests} requests of 1 output token at {args.rate:g}/s "
              f"(constant), stub endpoint on 127.0.0.1, seed {args.seed}")
        p50s, p99s = [], []
        for i in range(args.repeats):
            res = drive_http(sc.target, specs, max_wall_s=args.requests / args.rate + 60)
            late = np.array([r["send_lateness"] for r in res.records]) * 1e3
            errors = sum(1 for r in res.records if r.get("error"))
            p50s.append(float(np.percentile(late, 50)))
            p99s.append(float(np.percentile(late, 99)))
            print(f"  repeat {i + 1}: lateness p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms, "
                  f"max {late.max():.2f} ms, errors {errors}")
        p99 = statistics.median(p99s)
        print(f"median of {args.repeats}: p50 {statistics.median(p50s):.2f} ms, "
              f"p99 {p99:.2f} ms (target < 5 ms: {'met' if p99 < 5 else 'NOT met'})")
    finally:
        stub.terminate()
        stub.wait(timeout=10)


if __name__ == "__main__":
    main()
