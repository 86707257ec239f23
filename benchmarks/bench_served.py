"""Served vs in-process: what `workbench serve` costs against the engine driven directly.

    python benchmarks/bench_served.py [--model small] [--concurrency 16] [--requests 64]
        [--prompt-tokens 64] [--output-tokens 128] [--repeats 3] [--threads N] [--seed 0]
        [--breakdown] [--switch-interval S]

One closed-loop scenario (`concurrency` clients, each sending its next request when the last
one completes; fixed prompt and output lengths, greedy, ignore_eos), driven two ways with the
same engine configuration (dtype, max_num_seqs, block size, KV blocks):
- in-process: LLMEngine in this process, driven by the traffic engine driver (drive_engine);
- served: `workbench serve` in its own process on 127.0.0.1, driven by the traffic HTTP driver
  (drive_http: asyncio + httpx, SSE streams with usage), token-id prompts.
Both are the drivers `workbench run` uses, and both are summarized by traffic.metrics
(output tokens/s over first arrival -> last completion, TTFT, TPOT), so the two numbers are
measured by one piece of code each and differ only by the serving path.

Each repeat draws a fresh workload (seed + repeat) so no pass finds the last one's prompts in
the prefix cache, and runs both systems on it, in rotated order. Printed: each pass, the
medians over repeats, and the served / in-process ratio of output tokens/s (target >= 0.90).

Threads: torch runs `--threads` intra-op threads in both (set here with torch.set_num_threads,
in the server through OMP_NUM_THREADS). The server process, its engine thread and the HTTP
driver in this process share the machine's cores during a served pass, as a client on the
same host would; the in-process pass has the engine and its driver on one thread. On a small
machine this contention is part of what the ratio measures. The environment (e.g.
OMP_WAIT_POLICY, printed) reaches both processes: on a busy machine, set
OMP_WAIT_POLICY=passive, or OpenMP threads spinning at barriers can slow either side by 10x.

--breakdown: where the served pass loses time. The served process then runs `workbench
serve`'s own function (workbench.server.app.serve) from this script, which keeps the engine
and writes its per-step telemetry at exit; both systems' steps within each pass are then
compared: steps and mean batch, mean step time by phase (forward, scheduling and input
preparation, sampling, postprocessing incl. detokenization), the time between steps, and
the share of the wall time the engine was stepping, and the CPU seconds of each process per
pass (/proc). Both processes read CLOCK_MONOTONIC, so the passes' windows select the child's
steps. --switch-interval S (an experiment, implies --breakdown) sets the served process's
sys.setswitchinterval: its event loop and engine thread hand the GIL to each other.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from workbench.traffic.engine_driver import drive_engine
from workbench.traffic.http_driver import drive_http
from workbench.traffic.metrics import records_frame, summarize
from workbench.traffic.scenario import parse_scenario
from workbench.traffic.workload import build_requests

SYSTEMS = ("in-process", "served")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario(args, url: str, seed: int, num_requests: int, output_tokens: int):
    return parse_scenario({
        "name": "served-vs-in-process", "seed": seed,
        "target": {"kind": "http", "url": url, "model": args.model, "timeout_s": 600},
        "arrival": {"kind": "closed_loop", "concurrency": args.concurrency},
        "prompt_tokens": {"dist": "fixed", "value": args.prompt_tokens},
        "output_tokens": {"dist": "fixed", "value": output_tokens},
        "num_requests": num_requests, "temperature": 0.0, "ignore_eos": True})


def engine_config(args, num_kv_blocks: int):
    from workbench.engine import EngineConfig

    return EngineConfig(dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                        block_size=args.block_size, num_kv_blocks=num_kv_blocks)


@contextlib.contextmanager
def server_process(args, port: int, num_kv_blocks: int, steps_path: str | None = None):
    """`workbench serve` with this run's engine configuration, up (GET /health) until exit;
    with `steps_path`, `serve_child` instead (the same serve function, telemetry kept).
    Its output goes to a temporary file: a pipe nobody reads could fill and block it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    url = f"http://127.0.0.1:{port}"
    engine_args = ["--model", args.model, "--dtype", args.dtype, "--max-num-seqs",
                   str(args.max_num_seqs), "--block-size", str(args.block_size)]
    if steps_path is None:
        cmd = [sys.executable, "-m", "workbench", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--num-kv-blocks", str(num_kv_blocks), *engine_args]
    else:
        cmd = [sys.executable, __file__, "--serve-child", steps_path, "--port", str(port),
               "--num-kv-blocks", str(num_kv_blocks), *engine_args]
        if args.switch_interval is not None:
            cmd += ["--switch-interval", str(args.switch_interval)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    sys.exit(f"the server exited: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("the server did not come up within 600 s")
                time.sleep(0.2)
            yield url, proc.pid
        finally:
            # SIGINT: uvicorn's graceful stop, after which serve_child writes its telemetry.
            proc.send_signal(signal.SIGINT if steps_path else signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_child(args) -> None:
    """`workbench serve` (workbench.server.app.serve, as the CLI calls it) keeping the engine
    it loads; at exit (SIGINT) its step records go to args.serve_child as JSON."""
    from workbench.engine import LLMEngine
    from workbench.server import worker
    from workbench.server.app import serve

    worker.TELEMETRY_KEPT = None  # every step record, for the breakdown
    engines = []
    load = LLMEngine.from_pretrained

    def keep(*a, **kw):
        engines.append(load(*a, **kw))
        return engines[-1]

    LLMEngine.from_pretrained = keep
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT once stopped
        serve(args.model, "127.0.0.1", args.port, engine_config(args, args.num_kv_blocks))
    with open(args.serve_child, "w") as f:
        json.dump([dataclasses.asdict(r) for r in engines[0].telemetry], f)


def step_stats(steps, t0: float, t1: float) -> dict:
    """The engine's steps within one pass [t0, t1] (monotonic clock)."""
    sel = [r for r in steps if t0 <= r.t_start and r.t_end <= t1]
    n, wall = max(len(sel), 1), t1 - t0
    busy = sum(r.t_end - r.t_start for r in sel)

    def ms(total: float) -> float:
        return total / n * 1e3

    return {"steps": len(sel), "batch": sum(r.num_seqs for r in sel) / n,
            "step_ms": ms(busy), "forward_ms": ms(sum(r.phase_forward_s for r in sel)),
            "prepare_ms": ms(sum(r.phase_schedule_s + r.phase_prepare_s for r in sel)),
            "sample_ms": ms(sum(r.phase_sample_s for r in sel)),
            "post_ms": ms(sum(r.phase_postprocess_s for r in sel)),
            "gap_ms": ms(wall - busy), "busy": busy / wall}


def print_breakdown(windows: dict, cpu: dict, engine, steps_path: str) -> None:
    from workbench.engine.telemetry import StepRecord

    with open(steps_path) as f:
        served_steps = [StepRecord(**d) for d in json.load(f)]
    steps = {"in-process": engine.telemetry, "served": served_steps}
    print("where the time goes (engine telemetry within each pass, medians over repeats):")
    for system in SYSTEMS:
        stats = [step_stats(steps[system], t0, t1) for t0, t1 in windows[system]]
        for s, (t0, t1), (own, server) in zip(stats, windows[system], cpu[system]):
            s |= {"wall": t1 - t0, "own_cpu": own, "server_cpu": server}
        m = {k: statistics.median(s[k] for s in stats) for k in stats[0]}
        print(f"  {system:>10}: {m['steps']:.0f} steps, mean batch {m['batch']:.1f}; per step "
              f"{m['step_ms']:.2f} ms (forward {m['forward_ms']:.2f}, schedule+prepare "
              f"{m['prepare_ms']:.2f}, sample {m['sample_ms']:.2f}, postprocess "
              f"{m['post_ms']:.2f}) + {m['gap_ms']:.2f} ms between steps; engine stepping "
              f"{m['busy']:.0%} of the wall time; CPU seconds: this process "
              f"{m['own_cpu']:.1f}, server process {m['server_cpu']:.1f}, in {m['wall']:.1f} "
              f"s wall on {os.cpu_count()} cores")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def one_pass(system: str, engine, sc, vocab: int) -> dict:
    """Drive one system through the scenario; its summary, or exit if any request failed."""
    specs = build_requests(sc, vocab)
    kw = dict(temperature=sc.temperature, ignore_eos=sc.ignore_eos,
              concurrency=sc.arrival.concurrency, max_wall_s=3600)
    if system == "in-process":
        res = drive_engine(engine, specs, **kw)
    else:
        res = drive_http(sc.target, specs, **kw)
    frame = records_frame(res.records)
    want = sc.output_tokens.value
    bad = frame[(frame["finish_reason"] != "length") | (frame["output_tokens"] != want)]
    if res.stopped_by or len(frame) != len(specs) or len(bad):
        errors = [r.get("error") for r in res.records if r.get("error")][:3]
        sys.exit(f"{system}: {len(bad)} of {len(frame)} requests did not produce {want} "
                 f"tokens (stopped by: {res.stopped_by}; first errors: {errors})")
    return summarize(frame)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--breakdown", action="store_true",
                    help="also print where each system's time goes (engine telemetry)")
    ap.add_argument("--switch-interval", type=float,
                    help="an experiment (implies --breakdown): sys.setswitchinterval in the "
                         "served process; the GIL hand-off between its event loop and engine "
                         "thread waits up to this long (Python's default: 0.005 s)")
    ap.add_argument("--serve-child", help=argparse.SUPPRESS)  # internal: see serve_child
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--num-kv-blocks", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_child:
        serve_child(args)
        return
    args.breakdown = args.breakdown or args.switch_interval is not None
    for name in ("concurrency", "requests", "prompt_tokens", "output_tokens", "repeats",
                 "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1")

    import torch

    from workbench.engine import LLMEngine

    torch.set_num_threads(args.threads)
    # Both engines get the same explicit pool (default sizing reads free memory, which differs
    # between the processes): twice what the concurrent sequences can hold at their longest.
    per_seq = math.ceil((args.prompt_tokens + args.output_tokens) / args.block_size)
    num_kv_blocks = 2 * per_seq * max(args.concurrency, 1)
    engine = LLMEngine.from_pretrained(args.model, engine_config(args, num_kv_blocks))
    vocab = engine.model_config.vocab_size
    print(f"model {args.model} ({args.dtype}, {engine.device}), max_num_seqs "
          f"{args.max_num_seqs}, block size {args.block_size}, {num_kv_blocks} KV blocks; "
          f"torch threads {args.threads} in each process, {os.cpu_count()} cores, "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}"
          + ("" if args.switch_interval is None
             else f"; served process switch interval {args.switch_interval} s"))
    print(f"workload: closed loop, {args.concurrency} concurrent streams, {args.requests} "
          f"requests of {args.prompt_tokens} prompt + {args.output_tokens} output tokens, "
          f"greedy, ignore_eos; seed {args.seed} + repeat; {args.repeats} repeats, order "
          "rotated; served: workbench serve on 127.0.0.1 + the HTTP driver")
    with tempfile.TemporaryDirectory() as tmp:
        steps_path = os.path.join(tmp, "steps.json") if args.breakdown else None
        results, windows, cpu = measure(args, engine, vocab, num_kv_blocks, steps_path)
        report(args, results)
        if steps_path:
            print_breakdown(windows, cpu, engine, steps_path)


def measure(args, engine, vocab: int, num_kv_blocks: int, steps_path: str | None):
    """Each system's summary per repeat, and per pass its [start, end] and the CPU seconds
    this process (driver, and the in-process engine) and the server process used."""
    results: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    windows: dict[str, list[tuple[float, float]]] = {s: [] for s in SYSTEMS}
    cpu: dict[str, list[tuple[float, float]]] = {s: [] for s in SYSTEMS}
    with server_process(args, free_port(), num_kv_blocks, steps_path) as (url, pid):
        # Warm-up (not reported): first steps allocate and pick kernels in each process.
        warm = scenario(args, url, args.seed + args.repeats, args.concurrency, 4)
        for system in SYSTEMS:
            one_pass(system, engine, warm, vocab)
        for i in range(args.repeats):
            sc = scenario(args, url, args.seed + i, args.requests, args.output_tokens)
            order = SYSTEMS[i % 2:] + SYSTEMS[:i % 2]
            for system in order:
                t0, own0, server0 = time.monotonic(), time.process_time(), cpu_seconds(pid)
                s = one_pass(system, engine, sc, vocab)
                windows[system].append((t0, time.monotonic()))
                cpu[system].append((time.process_time() - own0, cpu_seconds(pid) - server0))
                results[system].append(s)
                print(f"  repeat {i + 1} {system:>10}: {s['output_throughput']:8.1f} output "
                      f"tok/s, TTFT p50 {s['ttft_p50'] * 1e3:7.1f} ms, TPOT p50 "
                      f"{s['tpot_p50'] * 1e3:6.2f} ms, {s['duration_s']:.2f} s")
    return results, windows, cpu


def report(args, results: dict[str, list[dict]]) -> None:
    med = {s: {k: statistics.median(r[k] for r in results[s])
               for k in ("output_throughput", "ttft_p50", "tpot_p50")} for s in SYSTEMS}
    print(f"median of {args.repeats}:")
    for system in SYSTEMS:
        m = med[system]
        print(f"  {system:>10}: {m['output_throughput']:8.1f} output tok/s, TTFT p50 "
              f"{m['ttft_p50'] * 1e3:7.1f} ms, TPOT p50 {m['tpot_p50'] * 1e3:6.2f} ms")
    ratios = [s["output_throughput"] / p["output_throughput"]
              for s, p in zip(results["served"], results["in-process"])]
    ratio = med["served"]["output_throughput"] / med["in-process"]["output_throughput"]
    print(f"served / in-process output tok/s: {ratio:.3f} (per repeat: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; target >= 0.90: "
          f"{'met' if ratio >= 0.90 else 'NOT met'})")

if __name__ == "__main__":
    main()
