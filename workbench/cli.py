"""`workbench` command line. A user's mistake prints one line `error: ...` and exits 2."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from workbench.cli_errors import user_errors
from workbench.plan.cli import plan_app
from workbench.plan.cli_options import HardwareFile
from workbench.plan.cost import DEFAULT_UTILIZATION
from workbench.server import GRACEFUL_SHUTDOWN_S

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="LLM Serving Workbench: run, measure and plan LLM inference.")
models_app = typer.Typer(no_args_is_help=True, help="Embedded model presets.")
app.add_typer(models_app, name="models")
app.add_typer(plan_app, name="plan")


@app.command()
@user_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    model: Annotated[str, typer.Option(help="Preset name or local HF checkpoint dir.")] = "tiny",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off.")] = 0,
    top_p: float = 1.0,
    seed: Annotated[int | None, typer.Option(help="Per-request sampling seed.")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    stream: Annotated[bool, typer.Option(help="Print tokens as they are produced.")] = True,
):
    """Generate text for PROMPT and print it."""
    from workbench.engine import EngineConfig, LLMEngine, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
    engine = LLMEngine.from_pretrained(model, EngineConfig(dtype=dtype, max_num_seqs=1))
    if stream:
        for out in engine.stream(prompt, params):
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        typer.echo(engine.generate([prompt], params)[0].text)


@app.command()
@user_errors
def bench(
    model: Annotated[str, typer.Option(help="Preset or checkpoint dir.")] = "small",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    requests: Annotated[int, typer.Option(help="Requests in the mixed workload.")] = 64,
    batch_size: Annotated[int, typer.Option(help="max_num_seqs / static batch size.")] = 16,
    repeats: Annotated[int, typer.Option(help="Runs per system; medians reported.")] = 1,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    hf: Annotated[bool, typer.Option(help="Include Hugging Face generate as a peer.")] = True,
    out: Annotated[str | None, typer.Option(help="Directory for bench.json / bench.md.")] = None,
    prompts: Annotated[str, typer.Option(help="Prompt tokens, MIN-MAX (uniform).")] = "16-512",
    outputs: Annotated[str, typer.Option(help="Output tokens, MIN-MAX (uniform).")] = "16-256",
    profile: Annotated[bool, typer.Option(
        help="Print where each step's time goes (batch 1, batch-size, mixed).")] = False,
    attention_backend: Annotated[str, typer.Option(
        help="sdpa | cpu-kernel (fp32 CPU decode attention in C++, compiled on first use).")
    ] = "sdpa",
):
    """Throughput: this engine vs static batching vs HF generate on one seeded workload."""
    from workbench.bench import parse_range, run_benchmark, save

    for name, value in (("requests", requests), ("batch-size", batch_size),
                        ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    result = run_benchmark(model, dtype, requests, batch_size, repeats, seed, include_hf=hf,
                           log=typer.echo, prompt_range=parse_range("prompts", prompts),
                           output_range=parse_range("outputs", outputs), profile=profile,
                           attention_backend=attention_backend)
    if out:
        typer.echo(f"\nresults written to {save(result, out)}")


@app.command()
@user_errors
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario YAML file.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a field: dotted.key=value (repeatable).")] = None,
    out: Annotated[str, typer.Option(help="Directory that receives the run directory.")] = "runs",
    progress: bool = True,
):
    """Run a scenario against its target; print the run directory.

    Ctrl-C stops the run, keeps the completed requests in the run directory and exits 130."""
    from workbench.traffic import load_run, load_scenario
    from workbench.traffic.drive_result import INTERRUPT, WALL_LIMIT
    from workbench.traffic.run_scenario import run_scenario

    sc = load_scenario(scenario, set_ or [])
    try:
        path = run_scenario(sc, out, progress=progress, log=_note)
    except KeyboardInterrupt:  # before the drive began (e.g. while the model loaded)
        _note("interrupted before the run was stored; nothing recorded")
        raise typer.Exit(130) from None
    manifest = load_run(path).manifest
    typer.echo(path)
    summary = manifest["summary"]
    done = f"{summary['completed']} of {manifest['num_requests_planned']} requests completed"
    if manifest.get("stopped_by") == INTERRUPT:
        _note(f"interrupted: {done}; kept in {path}")
        raise typer.Exit(130)
    if manifest.get("stopped_by") == WALL_LIMIT:
        _note(f"warning: the run reached its time bound: {done}")


@app.command()
@user_errors
def sweep(
    scenario: Annotated[str, typer.Argument(help="Scenario YAML file.")],
    rates: Annotated[str | None, typer.Option(help="Comma-separated request rates.")] = None,
    auto: Annotated[bool, typer.Option(
        help="Find the saturation rate, then spread rates below it.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
    out: str = "runs",
):
    """Rate sweep: throughput, latency percentiles, goodput and saturation per rate."""
    from workbench.traffic import load_scenario
    from workbench.traffic.sweep import auto_rates, find_saturation, format_sweep
    from workbench.traffic.sweep import sweep as run_sweep

    sc = load_scenario(scenario, set_ or [])
    if auto == (rates is not None):
        raise ValueError("rates: give either --rates R1,R2,... or --auto")
    if auto:
        start = getattr(sc.arrival, "rate", 1.0)
        try:
            saturation = find_saturation(sc, start=start, out=out, log=typer.echo)
        except KeyboardInterrupt:
            _note("interrupted: the runs done so far are kept")
            raise typer.Exit(130) from None
        rate_list = auto_rates(saturation)
        typer.echo(f"saturation near {saturation:g} req/s; sweeping {rate_list}")
    else:
        try:
            rate_list = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise ValueError(f"rates: must be comma-separated numbers, got {rates!r}") from None
        if not rate_list:
            raise ValueError("rates: give at least one rate")
    try:
        frame, _ = run_sweep(sc, rate_list, out, progress=False, log=typer.echo)
    except KeyboardInterrupt:
        _note("interrupted: the runs done so far are kept")
        raise typer.Exit(130) from None
    typer.echo("")
    typer.echo(format_sweep(frame))


def _note(message: str) -> None:
    """Diagnostics go to stderr, so stdout stays what the command prints (a run directory)."""
    typer.echo(message, err=True)


@app.command()
@user_errors
def serve(
    model: Annotated[list[str] | None, typer.Option(
        help="Preset or checkpoint dir (default tiny); repeat to serve several models, each "
             "by its own replica processes behind a gateway.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port, 1..65535.")] = 8000,
    replicas: Annotated[int, typer.Option(
        help="Engine processes per model; above 1 (or with several models) this process is a "
             "gateway that balances requests over them.")] = 1,
    lb: Annotated[str, typer.Option(
        help="Gateway balancer: round-robin | random | least-outstanding | least-kv | "
             "prefix-affinity (the simulator's policies).")] = "round-robin",
    router: Annotated[str | None, typer.Option(
        help="Router YAML: requests naming no model go to the cheapest model whose rule "
             "matches (see workbench/server/router.py).")] = None,
    replica_threads: Annotated[int, typer.Option(
        help="Torch threads per replica process (0: cores / replicas, at least 1), so that "
             "replicas do not contend for the same cores.")] = 0,
    dtype: str = "auto",
    max_num_seqs: int = 32,
    block_size: int = 16,
    num_kv_blocks: int | None = None,
    memory_utilization: Annotated[float | None, typer.Option(
        help="Share of memory (device total, or --memory-budget) the engine may use; the KV "
             "cache gets what weights and activations leave.")] = None,
    memory_budget: Annotated[int | None, typer.Option(
        help="Bytes --memory-utilization takes a share of (default: device / host total).")]
    = None,
    kv_cache_dtype: Annotated[str, typer.Option(help="auto | int8 | fp8_e4m3")] = "auto",
    quantization: Annotated[str, typer.Option(
        help="Weight-only quantization of the decoder layers: none | int8 | int4 | int4-awq "
             "| fp8")] = "none",
    quantization_group_size: Annotated[int, typer.Option(
        help="Input channels per int4 scale/zero group (32, 64, 128).")] = 128,
    api_key_file: Annotated[str | None, typer.Option(
        help="File of API keys, one per line (also $WORKBENCH_API_KEYS, comma-separated); "
             "with keys, every route but /health needs 'Authorization: Bearer <key>'.")]
    = None,
    max_request_bytes: Annotated[int | None, typer.Option(
        help="Largest request body in bytes; larger ones get a 413 before they are parsed "
             "(default: 2,000,000).")] = None,
    max_queued: Annotated[int | None, typer.Option(
        help="Requests that may wait (not yet running) before new ones get a 503 with "
             "Retry-After (default: unbounded).")] = None,
    rate_limit_rpm: Annotated[int | None, typer.Option(
        help="Requests per minute per API key (per client address without keys); over it, a "
             "429 with Retry-After (default: off).")] = None,
    rate_limit_tpm: Annotated[int | None, typer.Option(
        help="Tokens per minute per API key (per address without keys): prompt + max_tokens "
             "reserved at admission, the unused part given back at the end (default: off).")]
    = None,
    request_timeout: Annotated[float | None, typer.Option(
        help="Seconds a request may take from arrival; then it is aborted: a 504, or an "
             "error event ending its stream (default: none).")] = None,
    response_cache: Annotated[int, typer.Option(
        help="Keep the answers of this many greedy (temperature 0) requests and answer an "
             "identical request from them, without the engine; 0 = off.")] = 0,
    shutdown_timeout: Annotated[float, typer.Option(
        help="On SIGTERM: seconds the requests in flight get to finish (new ones get 503) "
             "before the rest are aborted and the server exits 0.")] = GRACEFUL_SHUTDOWN_S,
):
    """OpenAI-compatible server: POST /v1/completions and /v1/chat/completions (SSE or
    whole), the same streamed over a WebSocket at /v1/ws, GET /v1/models, GET /health,
    GET /metrics (Prometheus text). SIGTERM drains it, then it exits 0. Prints the engine's
    memory report to stderr at start. Admission limits (size, queue, rates, timeout):
    workbench/server/admission.py; several models or replicas: workbench/server/gateway.py."""
    from workbench.engine import EngineConfig
    from workbench.server.admission import Limits
    from workbench.server.app import serve as run_server
    from workbench.server.auth import load_api_keys

    api_keys = load_api_keys(api_key_file)  # a bad file is a one-line error before loading
    size = {} if max_request_bytes is None else {"max_request_bytes": max_request_bytes}
    limits = Limits(max_queued=max_queued, rate_limit_rpm=rate_limit_rpm,  # a bad limit too
                    rate_limit_tpm=rate_limit_tpm, request_timeout_s=request_timeout, **size)

    config = EngineConfig(dtype=dtype, max_num_seqs=max_num_seqs, block_size=block_size,
                          num_kv_blocks=num_kv_blocks, memory_utilization=memory_utilization,
                          memory_budget=memory_budget, kv_cache_dtype=kv_cache_dtype,
                          quantization=quantization,
                          quantization_group_size=quantization_group_size)
    models = model or ["tiny"]
    try:  # host and port are checked (and bound) before the model loads
        if replicas == 1 and len(models) == 1 and router is None:  # no proxy hop
            run_server(models[0], host, port, config, api_keys=api_keys, limits=limits,
                       response_cache=response_cache, graceful_shutdown_s=shutdown_timeout)
        else:
            from workbench.server.gateway import serve_gateway

            if rate_limit_rpm or rate_limit_tpm:  # per key needs one count: not per replica
                raise ValueError("rate-limit-rpm / rate-limit-tpm: not yet supported behind a "
                                 "gateway (--replicas > 1, several models or --router)")
            serve_gateway(models, replicas, lb, router, host, port, config, api_keys,
                          threads=replica_threads, graceful_shutdown_s=shutdown_timeout,
                          limits=limits, response_cache=response_cache)
    except KeyboardInterrupt:  # Ctrl-C while loading or after a graceful stop: no traceback
        raise typer.Exit(130) from None


@app.command()
@user_errors
def profile(
    model: Annotated[str, typer.Option(help="Preset or checkpoint dir.")] = "tiny",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="EngineConfig field=value (repeatable), e.g. max_num_seqs=16")] = None,
    hardware: Annotated[str | None, typer.Option(help="Label of the machine measured.")] = None,
    out: str = "runs",
    seed: int = 0,
    progress: bool = True,
):
    """Designed profiling sweep of the engine; print the run directory (steps.parquet)."""
    from workbench.fit.profile import profile_model

    typer.echo(profile_model(model, _engine_settings(set_), out, hardware, seed, progress))


@app.command()
@user_errors
def memory(
    model: Annotated[str, typer.Option(help="Preset or checkpoint dir.")] = "tiny",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="EngineConfig field=value (repeatable), e.g. memory_utilization=0.5")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Build the engine and print where its memory went: weights, activation peak, other,
    KV cache (blocks, concurrent tokens, concurrency). `plan memory` is the analytic forecast
    for catalog GPUs; this is the engine at hand."""
    import json

    from workbench.engine import EngineConfig, LLMEngine

    engine = LLMEngine.from_pretrained(model, EngineConfig.from_dict(_engine_settings(set_)))
    report = engine.memory_report()
    typer.echo(json.dumps(report.as_dict(), indent=2) if json_out else str(report))


@app.command("quant-report")
@user_errors
def quant_report(
    model: Annotated[str, typer.Option(help="Preset or checkpoint dir.")] = "tiny-trained",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    precisions: Annotated[str, typer.Option(
        help="Comma-separated: none, int8, fp8, int4-gN, int4-awq-gN (N: group size).")]
    = ",".join(("none", "int8", "int4-g32", "int4-g64", "int4-g128", "int4-awq-g64",
                "int4-awq-g128", "fp8")),
    repeats: Annotated[int, typer.Option(help="Decode measurements per precision (median).")]
    = 3,
    windows: Annotated[int, typer.Option(help="Held-out windows for perplexity / KL.")] = 16,
    seq_len: Annotated[int, typer.Option(help="Tokens per held-out window.")] = 256,
    quality: Annotated[bool, typer.Option(help="Measure perplexity, KL and top-1.")] = True,
    seed: int = 0,
    out: Annotated[str | None, typer.Option(
        help="JSON file for the table (default fits/precision/MODEL-DTYPE.json), which the "
             "planner and the design review read.")] = None,
):
    """Per weight precision: bytes, load time, decode tok/s at batch 1 and 16, held-out
    perplexity, KL and top-1 agreement against the unquantized model (one run)."""
    from workbench.quant_report import default_table_path, format_table, save_table
    from workbench.quant_report import quant_report as run_report

    frame = run_report(model, dtype, [p.strip() for p in precisions.split(",") if p.strip()],
                       repeats, windows, seq_len, quality, seed, log=typer.echo)
    typer.echo("")
    typer.echo(format_table(frame))
    path = save_table(frame, out or default_table_path(frame.attrs["model"],
                                                       frame.attrs["dtype"]))
    typer.echo(f"\ntable written to {path}")


def _engine_settings(items: list[str] | None) -> dict:
    """--set field=value pairs -> EngineConfig fields (values parsed as YAML scalars)."""
    import yaml

    config = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected field=value")
        config[key] = yaml.safe_load(raw)
    return config


@app.command()
@user_errors
def fit(
    runs: Annotated[list[str], typer.Argument(help="Run directories with steps.parquet.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Fit file to write (JSON).")],
    seed: int = 0,
):
    """Fit the step-latency model from profile or scenario runs; print coefficients and errors."""
    from workbench.fit.from_runs import fit_from_runs

    model = fit_from_runs(runs, seed)
    path = model.save(out)
    typer.echo(model.describe())
    typer.echo(f"fit written to {path}")


@app.command()
@user_errors
def simulate(
    scenario: Annotated[str, typer.Argument(help="Scenario YAML file.")],
    fit_file: Annotated[str, typer.Option("--fit", help="Fit file from `workbench fit`.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
    allow_mismatch: Annotated[bool, typer.Option(
        help="Use a fit measured on another model/precision, with a warning.")] = False,
    compare: Annotated[str | None, typer.Option(
        help="A real run of the same scenario to compare with.")] = None,
    replicas: Annotated[int, typer.Option(help="Replicas behind the load balancer.")] = 1,
    lb: Annotated[str, typer.Option(help="round-robin | random | least-outstanding | least-kv "
                                         "| prefix-affinity")] = "round-robin",
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree (analytic extrapolation).")]
    = 1,
    pp: Annotated[int, typer.Option(help="Pipeline-parallel degree (analytic extrapolation).")]
    = 1,
    out: str = "runs",
):
    """Simulate a scenario on a virtual clock with the real scheduler; print the run directory."""
    from workbench.fit import load_fit
    from workbench.sim.simulator import simulate_scenario
    from workbench.traffic import load_scenario

    sc = load_scenario(scenario, set_ or [])
    path = simulate_scenario(sc, load_fit(fit_file), out, allow_mismatch,
                             log=lambda m: typer.echo(m, err=True), replicas=replicas, lb=lb,
                             tp=tp, pp=pp)
    if compare:
        from workbench.sim.compare import compare_runs

        typer.echo(compare_runs(compare, path).to_string(index=False), err=True)
    typer.echo(path)


@plan_app.command()
@user_errors
def capacity(
    scenario: Annotated[str, typer.Argument(help="Scenario YAML file (its SLOs are the goal).")],
    fit_file: Annotated[str | None, typer.Option(
        "--fit", help="Fit file: simulate the measured engine.")] = None,
    hardware: Annotated[str | None, typer.Option(
        help="Comma-separated catalog GPUs: roofline extrapolation, cheapest first.")] = None,
    model: Annotated[str | None, typer.Option(
        help="With --hardware: catalog model, preset or config dir to plan for.")] = None,
    precision: str = "bf16",
    tp: Annotated[int | None, typer.Option(
        help="With --hardware: GPUs per replica (tensor parallel); default: chosen per GPU "
             "as the capacity calculator does.")] = None,
    utilization: Annotated[float, typer.Option(
        help="With --hardware: target busy share; replicas are sized for rate / utilization, "
             "the calculator's headroom.")] = DEFAULT_UTILIZATION,
    calibrate: Annotated[str | None, typer.Option(
        help="With --hardware: a fit made on this machine; this machine is measured and the "
             "fit's efficiency against it replaces the published defaults.")] = None,
    rate: Annotated[float | None, typer.Option(help="Target rate (default: the scenario's).")]
    = None,
    lb: str = "least-outstanding",
    max_replicas: int = 64,
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
    allow_mismatch: bool = False,
    hardware_file: HardwareFile = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Fewest replicas meeting the scenario's SLOs: on the measured engine (--fit), or across
    hardware candidates with the roofline (--hardware, an extrapolation), cheapest first."""
    import json
    from dataclasses import asdict

    from workbench.traffic import load_scenario

    sc = load_scenario(scenario, (set_ or []) + ([f"arrival.rate={rate}"] if rate else []))
    if (fit_file is None) == (hardware is None):
        raise ValueError("fit: give either --fit FIT.json or --hardware GPU[,GPU...]")
    goal = ", ".join(f"{k} p{sc.slo.percentile:g} <= {v * 1e3:g} ms" for k, v in sc.slos.items())
    if hardware is not None:
        _capacity_by_hardware(sc, hardware, model, precision, tp, utilization, calibrate, lb,
                              max_replicas, json_out, goal)
        return
    from workbench.fit import load_fit
    from workbench.sim.capacity import max_rate, min_replicas, no_rate_met, slo_floor
    from workbench.sim.simulator import check_fit_matches

    fit = load_fit(fit_file)
    check_fit_matches(fit, sc.target, allow_mismatch, log=lambda m: typer.echo(m, err=True))
    target_rate = getattr(sc.arrival, "rate", None)
    unreachable = slo_floor(sc, fit)   # cheap: then nothing is simulated
    n, tried = min_replicas(sc, fit, lb, max_replicas)
    one, curve = max_rate(sc, fit, 1, lb, start=max(0.1, (target_rate or 4.0) / 4))
    one_why = unreachable or no_rate_met(one, curve, sc)
    result = {"replicas": n, "rate": target_rate, "lb": lb, "slo": sc.slos,
              "percentile": sc.slo.percentile, "max_rate_one_replica": one,
              "no_rate_meets_slos": unreachable, "max_rate_one_replica_why": one_why,
              "evaluations": [asdict(e) for e in tried],
              "goodput_curve": [asdict(e) for e in curve]}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"goal: {goal} at {target_rate:g} req/s ({lb})")
    if unreachable:
        typer.echo(unreachable)
        return
    for e in tried:
        got = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in e.percentiles.items())
        typer.echo(f"  {e.replicas:3d} replicas: {'meets' if e.met else 'misses'} ({got})")
    if n is None:
        from workbench.sim.capacity import missed_slos

        typer.echo(f"replicas needed: more than {max_replicas} (with {max_replicas}: "
                   f"{missed_slos(tried[-1], sc)})")
    else:
        typer.echo(f"replicas needed: {n}")
    if one_why:
        typer.echo(f"one replica: {one_why}")
    else:
        typer.echo(f"one replica sustains about {one:.2f} req/s within the SLOs")


def _capacity_by_hardware(sc, hardware, model, precision, tp, utilization, calibrate, lb,
                          max_replicas, json_out, goal) -> None:
    import json

    from workbench.plan import get_hardware, get_model
    from workbench.sim.capacity import cheapest_configuration

    if model is None:
        raise ValueError("model: --hardware needs --model (e.g. llama-3-8b)")
    efficiency = None
    if calibrate:
        from workbench.fit import load_fit
        from workbench.sim.roofline_model import calibrated_efficiency

        fit = load_fit(calibrate)
        # None: measure this machine; a packaged entry would describe another one.
        efficiency = calibrated_efficiency(fit, None, get_model(fit.model["name"]),
                                           fit.engine.get("dtype", "float32"))
    gpus = [get_hardware(h.strip()) for h in hardware.split(",") if h.strip()]
    rows = cheapest_configuration(sc, get_model(model), gpus, precision, tp, lb, max_replicas,
                                  efficiency, utilization=utilization)
    if json_out:
        typer.echo(json.dumps({"goal": goal, "rows": rows}, indent=2, default=str))
        return
    from workbench.plan.step_params import error_band

    typer.echo(f"goal: {goal} at {sc.arrival.rate:g} req/s, sized for {utilization:g} "
               f"utilization; {model} {precision}; step model fitted to published "
               "measurements" + (", shares of peak calibrated on this machine" if calibrate
                                 else "")
               + f"; forecast error {error_band().summary()} on held-out measurements")
    for r in rows:
        if r["replicas"] is None:
            typer.echo(f"  {r['hardware']:>10}: -  ({r['why'].splitlines()[0]})")
        else:
            typer.echo(f"  {r['hardware']:>10}: {r['replicas']} replicas x {r['tp']} GPU = "
                       f"{r['gpus']} GPUs, ${r['cost_per_hour']:.2f}/h, "
                       f"${r['cost_per_month']:,.0f}/month")
            if r.get("note"):
                typer.echo(f"  {'':>10}  note: {r['note']}")


@app.command()
@user_errors
def report(
    scenarios: Annotated[list[str], typer.Argument(help="Scenario YAML files.")],
    smoke: Annotated[bool, typer.Option(help="CI-sized run (fewer requests, small search).")]
    = False,
    out: Annotated[str, typer.Option(help="Directory for <scenario>.html.")] = "reports",
    timeout: Annotated[int, typer.Option(help="Seconds allowed per notebook cell.")] = 900,
    target_url: Annotated[str | None, typer.Option(
        help="Measure the OpenAI-compatible server at this URL (e.g. a `workbench serve` of "
             "the scenario's model) instead of an engine in this process.")] = None,
    target_model: Annotated[str | None, typer.Option(
        help="With --target-url: the model name it serves (default: the scenario's).")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="With --target-url: environment variable holding its API key.")] = None,
):
    """Design-review report per scenario (papermill + nbconvert); print the HTML paths."""
    from workbench.report import render_report

    if target_url is None and (target_model or api_key_env):
        raise ValueError("target-model / api-key-env: only with --target-url")
    for sc in scenarios:
        typer.echo(render_report(sc, out, smoke, timeout_s=timeout, target_url=target_url,
                                 target_model=target_model, api_key_env=api_key_env))


@models_app.command("list")
def models_list():
    """List the embedded presets."""
    from workbench.models.tiny import PRESETS, TRAINED_PRESETS

    for name, spec in PRESETS.items():
        kind = "trained" if name in TRAINED_PRESETS else "random"
        typer.echo(f"{name}\t{spec.architecture}\thidden {spec.hidden_size}, "
                   f"{spec.num_layers} layers, {spec.num_heads} heads / {spec.num_kv_heads} KV"
                   f"\t{kind}")


@models_app.command("build")
@user_errors
def models_build(names: Annotated[list[str], typer.Argument(help="Preset names.")]):
    """Build presets into the cache (once) and print their directories."""
    from workbench.models.tiny import PRESETS, resolve_model

    for name in names:
        if name not in PRESETS:
            raise ValueError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
        typer.echo(resolve_model(name))


@models_app.command("train")
@user_errors
def models_train(
    preset: Annotated[str, typer.Option(help="tiny-trained, tiny-draft or all.")] = "all",
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: the recipe's).")]
    = None,
    out: Annotated[str, typer.Option(help="Directory to write <preset>/ checkpoints into.")]
    = "trained-models",
    seed: Annotated[int | None, typer.Option(help="Seed (default: the recipe's, 0).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Train the trained presets on CPU from the stdlib sources; print held-out perplexity."""
    from pathlib import Path

    from workbench.models.tiny import TRAINED_PRESETS
    from workbench.models.train import train, with_steps

    names = list(TRAINED_PRESETS) if preset == "all" else [preset]
    for name in names:
        if name not in TRAINED_PRESETS:
            raise ValueError(f"preset: must be all or one of {', '.join(TRAINED_PRESETS)}; "
                             f"got {name!r}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    for name in names:
        result = train(name, Path(out) / name, with_steps(name, steps, seed), progress=progress,
                       log=typer.echo)
        typer.echo(result.path)


@models_app.command("export-gguf")
@user_errors
def models_export_gguf(
    model: Annotated[str, typer.Argument(help="Preset name or local HF checkpoint dir.")],
    out: Annotated[str, typer.Argument(help="The .gguf file to write.")],
    type_: Annotated[str, typer.Option("--type", help="Projections' type: f32 | f16 | q8_0 | "
                                       "q4_0 (norms stay f32; embeddings/output f16).")] = "f16",
):
    """Write MODEL as a GGUF file that llama.cpp and `--model OUT.gguf` both serve."""
    from workbench.models.gguf_io import QTYPES, export_gguf, tensor_types

    if type_ not in QTYPES:  # named as the user typed it
        raise ValueError(f"type: must be one of {', '.join(QTYPES)}; got {type_!r}")
    path = export_gguf(model, out, type_)
    types = ", ".join(f"{n} {name}" for name, n in sorted(tensor_types(path).items()))
    typer.echo(f"{path}\t{path.stat().st_size} bytes\ttensors: {types}")


def main() -> None:  # pragma: no cover - console entry point
    app()
