"""Execute a scenario against its target and store the run (see run_store for the layout)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from workbench.progress import progress_bar
from workbench.traffic.arrivals import ClosedLoop
from workbench.traffic.metrics import records_frame, summarize
from workbench.traffic.run_store import store_run
from workbench.traffic.scenario import EngineTarget, Scenario
from workbench.traffic.workload import build_requests, check_inputs


def make_engine(scenario: Scenario):
    from workbench.engine import EngineConfig, LLMEngine

    t = scenario.target
    return LLMEngine.from_pretrained(t.model, EngineConfig.from_dict(t.engine))


def run_scenario(scenario: Scenario, out: str | Path = "runs", engine=None,
                 progress: bool = True, max_wall_s: float | None = None,
                 log=print) -> Path:
    """Drive the scenario's target, write runs/<run-id>/ and return that directory.

    Pass `engine` to reuse a loaded engine (e.g. across a sweep); it must be idle. The
    scenario's files are read before any model loads. Ctrl-C ends the drive early; the
    completed requests are stored and the manifest says `stopped_by: "interrupt"`. What the
    driver found wrong with the target is logged and kept as the manifest's `warnings`."""
    check_inputs(scenario)
    target = scenario.target
    started = dt.datetime.now(dt.UTC).isoformat()
    loop = scenario.arrival if isinstance(scenario.arrival, ClosedLoop) else None
    drive_kw = dict(temperature=scenario.temperature, ignore_eos=scenario.ignore_eos,
                    concurrency=loop.concurrency if loop else None,
                    think_time_s=loop.think_time_s if loop else 0.0,
                    max_wall_s=max_wall_s or _wall_bound(scenario))
    steps = None
    if isinstance(target, EngineTarget):
        from workbench.engine.telemetry import telemetry_frame
        from workbench.traffic.engine_driver import drive_engine

        engine = engine or make_engine(scenario)
        specs = build_requests(scenario, engine.model_config.vocab_size)
        first_step = len(engine.telemetry)
        bar = progress_bar(len(specs), progress, "requests")
        result = drive_engine(engine, specs, progress=bar, **drive_kw)
        steps = telemetry_frame(engine.telemetry[first_step:])
        steps[["t_start", "t_end"]] -= result.t0
        model_info = describe_engine(engine, target.model)
    else:
        from workbench.traffic.http_driver import drive_http, resolve_prompts

        specs = build_requests(scenario, target.vocab_size)
        prompts, tokenizer, prompt_info = resolve_prompts(target, specs, log)
        bar = progress_bar(len(specs), progress, "requests")
        result = drive_http(target, specs, progress=bar, prompts=prompts, tokenizer=tokenizer,
                            **drive_kw)
        model_info = {"model": target.model, "url": target.url, **prompt_info}
    bar.close()
    for w in result.warnings:
        log(f"warning: {w}")

    requests = records_frame(sorted(result.records, key=lambda r: int(r["request_id"])))
    return store_run(out, scenario.name, "real", requests, steps, started, scenario=scenario,
                     target=model_info, hardware=scenario.hardware,
                     interrupted=result.interrupted, stopped_by=result.stopped_by,
                     num_requests_planned=len(specs), max_concurrency=result.max_concurrency,
                     warnings=result.warnings, summary=summarize(requests, scenario.slos))


def describe_engine(engine, name: str) -> dict:
    """What a fit or a simulation needs to know about the engine a run measured.

    `max_model_len` is the model's own limit (max_position_embeddings), what
    `sizing.ModelFacts` expects: a simulated scenario applies its own engine max_model_len to
    it, as the engine does. The limit this engine ran with (its config's max_model_len, else
    the model's) is `effective_max_model_len`; recorded as the model's, it would make a
    simulation of a scenario that sets no max_model_len reject requests the engine accepts."""
    from dataclasses import asdict

    cfg = engine.model_config
    return {
        "model": str(name), "path": str(engine.model_path), "architecture": cfg.architecture,
        "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
        "weight_bytes": engine.model.weight_bytes(),
        "kv_bytes_per_token": engine.kv_bytes_per_token, "kv_cache_dtype": engine.kv_cache_dtype,
        "max_model_len": cfg.max_position_embeddings, "vocab_size": cfg.vocab_size,
        "eos_token_ids": list(cfg.eos_token_ids), "sliding_window": cfg.sliding_window,
        "effective_max_model_len": engine.max_model_len,
        "engine_config": asdict(engine.config),
        "dtype": str(engine.dtype).replace("torch.", ""),
        "device": str(engine.device), "num_kv_blocks": engine.num_kv_blocks,
        # Where memory went; a simulation sizes memory_utilization from it.
        "memory_report": engine.memory_report().as_dict(),
    }


def _wall_bound(scenario: Scenario) -> float:
    """Every run stops by itself: the schedule's length plus generous slack."""
    base = scenario.duration_s or 0.0
    return max(600.0, 4 * base)
