"""The workbench's server vs llama.cpp's, same model, same scenario, same machine, one run.

    python benchmarks/bench_peers.py [--model small] [--types f32,q8_0] [--streams 1,16]
        [--prompt-tokens 128] [--output-tokens 128] [--requests-per-stream 2] [--repeats 3]
        [--threads 2] [--instances 2] [--seed 0] [--json out.json]

`model` is exported to GGUF (f32 and q8_0) by the project's own exporter. Contestants, each its
own server process on 127.0.0.1, started and stopped in turn (rotated within each repeat):
- `workbench serve` on the checkpoint (f32) and on the q8_0 GGUF (which it loads as int8);
- llama.cpp's OpenAI server (llama-cpp-python) on each GGUF with its default one request at a
  time, and, since it has no parallel-slots setting (see workbench.peers), `--instances` copies
  sharing the threads behind a least-busy proxy: what it offers instead.
Every server gets `--threads` threads in all. Each is driven by the workbench's HTTP driver
(the scenario machinery, closed loop) at each stream count. Output lengths are kept equal by
keeping EOS out: the workbench honours ignore_eos; llama.cpp ignores it, so it gets a
logit_bias of -1e9 on EOS (and on the tokens it cannot stream one chunk each: bare bytes,
other specials, tokens over 32 bytes; see workbench.peers.llama_cpp_bias). llama.cpp streams
no usage, so its output tokens are counted one per streamed chunk (one per token); the table
shows them per request. Prints output tokens/s, TTFT and TPOT medians (medians over repeats of
each run's median) and the workbench/llama.cpp ratios per pair.
Exits 0 with a message, measuring nothing, when llama-cpp-python is not installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workbench.peers import (
    LlamaCppPool,
    llama_cpp_bias,
    llama_cpp_installed,
    llama_cpp_server,
    workbench_server,
)


@dataclass
class Contestant:
    label: str
    kind: str  # "workbench" | "llama.cpp"
    qtype: str  # f32 | q8_0: which llama.cpp contestants it is compared with
    start: object  # () -> a context manager with .url
    parallel: str = "-"  # how requests share the server
    results: dict = field(default_factory=dict)  # streams -> [summary per repeat]


def served_model_id(url: str) -> str:
    data = httpx.get(url.rstrip("/") + "/v1/models", timeout=10).json()["data"]
    return str(data[0]["id"])


def scenario(url: str, model: str, tokenizer: str, extra_body: dict, streams: int,
             num_requests: int, prompt_tokens: int, output_tokens: int, seed: int) -> dict:
    # llama.cpp streams no usage but one chunk per token (with llama_cpp_bias): counting chunks
    # is exact where re-tokenizing its text is not; the workbench reports usage
    return {"name": "peers", "seed": seed,
            "target": {"kind": "http", "url": url, "model": model, "tokenizer": tokenizer,
                       "extra_body": extra_body, "output_tokens_from": "chunks",
                       "timeout_s": 900},
            "arrival": {"kind": "closed_loop", "concurrency": streams},
            "prompt_tokens": {"dist": "fixed", "value": prompt_tokens},
            "output_tokens": {"dist": "fixed", "value": output_tokens},
            "num_requests": num_requests, "temperature": 0.0, "ignore_eos": True}


def drive(url: str, c: Contestant, args, tokenizer, streams: int, num_requests: int,
          output_tokens: int, out: Path) -> dict:
    from workbench.traffic import load_run
    from workbench.traffic.run_scenario import run_scenario
    from workbench.traffic.scenario import parse_scenario

    extra = llama_cpp_bias(tokenizer) if c.kind == "llama.cpp" else {}
    data = scenario(url, served_model_id(url), args.model, extra, streams, num_requests,
                    args.prompt_tokens, output_tokens, args.seed)
    notes: list[str] = []
    # an hour at most: a one-request-at-a-time server takes streams x its single-stream time
    run = load_run(run_scenario(parse_scenario(data), out, progress=False, log=notes.append,
                                max_wall_s=3600))
    for n in notes:
        if n.startswith("warning"):
            print(f"  {c.label} @ {streams}: {n}", flush=True)
    if run.manifest.get("stopped_by"):
        print(f"  {c.label} @ {streams}: stopped by {run.manifest.get('stopped_by')}", flush=True)
    s = dict(run.manifest["summary"])
    done = run.requests[run.requests.finish_reason.isin(("stop", "length"))]
    s["out_per_request"] = float(done.output_tokens.mean()) if len(done) else float("nan")
    return s


def contestants(args, files: dict, logs: Path) -> list[Contestant]:
    t, n = args.threads, args.instances
    out = []
    for q in args.types:
        wb_model = args.model if q == "f32" else str(files[q])
        wb_label = f"workbench {args.model} f32" if q == "f32" else "workbench q8_0.gguf (int8)"
        out.append(Contestant(wb_label, "workbench", q, lambda m=wb_model, q=q: workbench_server(
            m, logs / f"workbench-{q}.log", t), "continuous batching"))
        out.append(Contestant(f"llama.cpp {q}", "llama.cpp", q,
                              lambda q=q: llama_cpp_server(files[q], logs / f"llama-{q}.log", t),
                              "one request at a time (default)"))
        if n > 1:
            out.append(Contestant(
                f"llama.cpp {q} x{n}", "llama.cpp", q,
                lambda q=q: LlamaCppPool(files[q], logs / f"pool-{q}", n, max(1, t // n)),
                f"{n} instances x {max(1, t // n)} thread, least-busy proxy"))
    return out


def med(values) -> float:
    v = [x for x in values if x == x]  # NaN-free
    return statistics.median(v) if v else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--types", default="f32,q8_0", help="GGUF types: f32, q8_0 or both")
    ap.add_argument("--streams", default="1,16", help="closed-loop stream counts")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of each server, in all")
    ap.add_argument("--instances", type=int, default=2,
                    help="llama.cpp copies behind a proxy (its stand-in for parallel slots); "
                         "1: leave that contestant out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the runs and server logs here")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    args.types = [q.strip() for q in args.types.split(",") if q.strip()]
    args.streams = [int(s) for s in args.streams.split(",")]
    if not set(args.types) <= {"f32", "q8_0"}:
        ap.error("--types: f32 and/or q8_0")

    if not llama_cpp_installed():
        print("skipped: llama-cpp-python (with its server extra) is not installed; install the "
              "peers extra with `make peers` (builds llama.cpp from source, ~8 min on 2 cores)")
        return 0

    from workbench.models.gguf_io import export_gguf
    from workbench.models.loader import load_tokenizer
    from workbench.models.tiny import resolve_model

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-peers-"))
    files = {q: export_gguf(args.model, work / f"{args.model}-{q}.gguf", q) for q in args.types}
    tokenizer = load_tokenizer(resolve_model(args.model))
    field_list = contestants(args, files, work / "logs")
    import llama_cpp

    print(f"peers: {args.model}, {args.prompt_tokens} prompt + {args.output_tokens} output "
          "tokens, greedy, EOS kept out (workbench: ignore_eos; llama.cpp: logit_bias, also on "
          f"tokens it streams badly), closed loop at {args.streams} streams, "
          f"{args.requests_per_stream} requests per stream, seed {args.seed}, {args.threads} "
          f"threads per server, medians of {args.repeats} repeats (contestants rotated within "
          f"each); llama-cpp-python {llama_cpp.__version__}", flush=True)
    t_start = time.monotonic()
    for r in range(args.repeats):
        for c in field_list:
            t0 = time.monotonic()
            with c.start() as srv:
                # warm-up, not counted: first-call allocations, thread pools, batch shapes
                drive(srv.url, c, args, tokenizer, max(args.streams), max(args.streams), 8,
                      work / "warmup")
                for s in args.streams:
                    c.results.setdefault(s, []).append(drive(
                        srv.url, c, args, tokenizer, s, s * args.requests_per_stream,
                        args.output_tokens, work / "runs"))
            print(f"  repeat {r + 1}/{args.repeats}: {c.label} done in "
                  f"{time.monotonic() - t0:.0f} s", flush=True)

    rows = []
    for c in field_list:
        for s in args.streams:
            runs = c.results[s]
            rows.append({"contestant": c.label, "kind": c.kind, "type": c.qtype,
                         "parallel": c.parallel, "streams": s,
                         "output_throughput": med(x["output_throughput"] for x in runs),
                         "ttft_p50": med(x["ttft_p50"] for x in runs),
                         "tpot_p50": med(x["tpot_p50"] for x in runs),
                         "out_per_request": med(x["out_per_request"] for x in runs),
                         "failed": sum(x["failed"] for x in runs),
                         "requests": sum(x["requests"] for x in runs)})
    print_tables(rows, args)
    print(f"(took {time.monotonic() - t_start:.0f} s; runs and logs under {work})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                               "rows": rows}, indent=1))
    return 1 if any(row["failed"] for row in rows) else 0


def print_tables(rows: list[dict], args) -> None:
    print(f"\n{'contestant':30} {'parallel':44} {'streams':>7} {'out tok/s':>9} "
          f"{'TTFT p50 ms':>11} {'TPOT p50 ms':>11} {'out tok/req':>11} {'failed':>6}")
    for r in rows:
        print(f"{r['contestant']:30} {r['parallel']:44} {r['streams']:>7} "
              f"{r['output_throughput']:>9.1f} {1e3 * r['ttft_p50']:>11.1f} "
              f"{1e3 * r['tpot_p50']:>11.2f} {r['out_per_request']:>11.1f} "
              f"{r['failed']:>3}/{r['requests']}")
    print("\nratios workbench / llama.cpp (tok/s: >1 means the workbench is faster; TTFT, "
          "TPOT: <1 means the workbench is faster)")
    print(f"{'workbench':30} {'llama.cpp':22} {'streams':>7} {'tok/s x':>8} {'TTFT x':>7} "
          f"{'TPOT x':>7}")
    for w in (r for r in rows if r["kind"] == "workbench"):
        for p in (r for r in rows if r["kind"] == "llama.cpp" and r["type"] == w["type"]
                  and r["streams"] == w["streams"]):
            print(f"{w['contestant']:30} {p['contestant']:22} {w['streams']:>7} "
                  f"{w['output_throughput'] / p['output_throughput']:>8.2f} "
                  f"{w['ttft_p50'] / p['ttft_p50']:>7.2f} {w['tpot_p50'] / p['tpot_p50']:>7.2f}")
    print("\nllama-cpp-python's server has no parallel-slots setting (one global lock around one "
          "model; the C++ llama-server with --parallel is not part of the pip package)"
          + (f": 'x{args.instances}' is {args.instances} copies of it behind a proxy instead."
             if args.instances > 1 else "."))


if __name__ == "__main__":
    sys.exit(main())
