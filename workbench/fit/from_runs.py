"""Fit a step model from run directories (profile sweeps or real scenario runs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.fit.step_model import StepTimeModel, fit_step_model
from workbench.traffic.run_store import load_run


def fit_from_runs(run_dirs: list[str | Path], seed: int = 0) -> StepTimeModel:
    frames, target, hardware, memory = [], None, None, None
    for i, d in enumerate(run_dirs):
        run = load_run(d)
        if run.steps is None or run.steps.empty:
            raise ValueError(f"runs: {d} has no step telemetry (HTTP runs have none)")
        t = run.manifest.get("target", {})
        if "architecture" not in t:
            raise ValueError(f"runs: {d} lacks the engine description a fit needs")
        if target is not None and (t["path"], t["dtype"], t["engine_config"]["block_size"]) != (
                target["path"], target["dtype"], target["engine_config"]["block_size"]):
            raise ValueError(f"runs: {d} measured {t['path']} ({t['dtype']}), the first run "
                             f"measured {target['path']} ({target['dtype']}); fit one model "
                             "and precision at a time")
        target = target or t
        hardware = hardware or run.manifest.get("hardware")
        memory = memory or run.manifest.get("memory")
        frames.append(run.steps.assign(run=i))  # the fit holds out whole runs or cases
    if not frames:
        raise ValueError("runs: give at least one run directory")
    model, engine = describe_fit_target(target)
    if memory:
        model["memory"] = memory
    return fit_step_model(pd.concat(frames, ignore_index=True), model, engine, hardware, seed,
                          sources=[str(d) for d in run_dirs])


def describe_fit_target(target: dict) -> tuple[dict, dict]:
    """A run manifest's engine description -> the fit's `model` and `engine` dicts: what the
    simulator sizes its replicas from (`sizing.ModelFacts.from_step_model`), the recorded pool
    `num_kv_blocks` and memory report (for memory_utilization) included."""
    model = {k: target.get(k) for k in ("path", "architecture", "hidden_size", "num_layers",
                                        "weight_bytes", "kv_bytes_per_token", "max_model_len",
                                        "vocab_size", "eos_token_ids", "num_kv_blocks",
                                        "memory_report", "sliding_window")}
    model["name"] = target["model"]
    engine = {"dtype": target["dtype"], "device": target["device"],
              "block_size": target["engine_config"]["block_size"],
              # Runs recorded before quantized KV / weights existed ran in the model's dtype.
              "kv_cache_dtype": target["engine_config"].get("kv_cache_dtype", "auto"),
              "quantization": target["engine_config"].get("quantization", "none")}
    return model, engine
