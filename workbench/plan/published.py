"""Published serving measurements shipped with the workbench: the dataset GPU forecasts are
fitted to and judged by (workbench/plan/published/measurements.csv; sources and licences in
that folder's README.md).

One row per measured point: where it comes from, what ran (engine, GPU x count, model,
precision, TP), the workload (mean prompt and output tokens, closed-loop concurrency or an
offline batch) and what was measured (TTFT, TPOT, throughput), in vLLM benchmark_serving's
definitions where the source uses them. Server settings the source states (max_model_len,
max_num_seqs, max_num_batched_tokens, enable_chunked_prefill) are columns; empty = the
engine version's defaults. `load_published` checks every row (units, ranges,
a source present, a model and a GPU the catalogs know) and says which field of which row is
wrong.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandas as pd

DATASET = Path(__file__).parent / "published" / "measurements.csv"

COLUMNS = (
    "source", "source_ref", "date", "engine", "engine_version", "gpu", "gpu_count", "tp",
    "model", "weight_dtype", "kv_dtype", "workload", "input_tokens", "output_tokens",
    "concurrency", "request_rate", "num_requests", "ttft_ms_mean", "ttft_ms_median",
    "tpot_ms_mean", "tpot_ms_median", "itl_ms_mean", "itl_ms_median", "request_throughput",
    "output_throughput", "total_token_throughput", "mode", "max_model_len",
    "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "notes")
METRICS = ("ttft_ms_mean", "ttft_ms_median", "tpot_ms_mean", "tpot_ms_median", "itl_ms_mean",
           "itl_ms_median", "request_throughput", "output_throughput",
           "total_token_throughput")
# How load was offered: a closed loop of `concurrency` clients over num_requests ("online",
# vLLM's benchmark_serving --max-concurrency), or num_requests prompts submitted at once
# ("offline", one batch: vLLM's LLM.generate or TensorRT-LLM's run.py).
MODES = ("online", "offline")
ENGINES = ("vllm",)
WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "mxfp4")

# Hugging Face ids the dataset names -> the catalog architecture that models them.
MODEL_ARCH = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "neuralmagic/Meta-Llama-3.1-8B-FP8": "llama-3.1-8b",
    "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8": "llama-3.1-70b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-v0.3",
    "mistralai/Mistral-Nemo-Instruct-2407": "mistral-nemo-12b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "Qwen/Qwen2-7B": "qwen2-7b",
    "Qwen/Qwen2-72B": "qwen2-72b",
    "meta-llama/Llama-3.1-405B-FP8": "llama-3.1-405b",
    "meta-llama/Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "amd/Llama-3.1-405B-Instruct-FP8-KV": "llama-3.1-405b",
    "NousResearch/Hermes-3-Llama-3.1-405B-FP8": "llama-3.1-405b",
    "mistralai/Mistral-Large-Instruct-2407": "mistral-large-2407",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "mixtral-8x22b",
}


def _present(v) -> bool:
    return not (v is None or (isinstance(v, float) and math.isnan(v)) or v == "")


def check_row(i: int, row: dict) -> list[str]:
    """Every problem of one row, each naming the row and the field."""
    from workbench.plan.hardware import hardware_catalog
    from workbench.plan.models_catalog import MODELS

    bad = []

    def err(field: str, msg: str) -> None:
        bad.append(f"row {i} ({row.get('source_ref', '?')}): {field}: {msg}")

    for field in ("source", "source_ref", "date", "engine", "gpu", "model", "weight_dtype",
                  "mode", "workload"):
        if not _present(row.get(field)):
            err(field, "missing")
    if _present(row.get("date")):
        try:
            day = dt.date.fromisoformat(str(row["date"]))
            if not dt.date(2023, 1, 1) <= day <= dt.date.today():
                err("date", f"{day} is outside 2023..today")
        except ValueError:
            err("date", f"{row['date']!r} is not YYYY-MM-DD")
    for field, allowed in (("engine", ENGINES), ("mode", MODES),
                           ("weight_dtype", WEIGHT_DTYPES)):
        if _present(row.get(field)) and row[field] not in allowed:
            err(field, f"{row[field]!r}; allowed: {', '.join(allowed)}")
    if _present(row.get("gpu")) and row["gpu"] not in hardware_catalog():
        err("gpu", f"{row['gpu']!r} is not in the hardware catalog")
    arch = MODEL_ARCH.get(row.get("model"))
    if _present(row.get("model")) and (arch is None or arch not in MODELS):
        err("model", f"{row['model']!r} has no catalog architecture (MODEL_ARCH)")
    for field, lo, hi in (("gpu_count", 1, 64), ("tp", 1, 64), ("input_tokens", 1, 1e6),
                          ("output_tokens", 1, 1e5), ("num_requests", 1, 1e7)):
        v = row.get(field)
        if not _present(v) or not lo <= float(v) <= hi:
            err(field, f"{v!r} must be a number in [{lo:g}, {hi:g}]")
    # Load: a closed loop's (or an offline batch's) concurrency, or an open loop's rate.
    conc, rate = row.get("concurrency"), row.get("request_rate")
    if _present(conc):
        if not 1 <= float(conc) <= 1e5:
            err("concurrency", f"{conc!r} must be in [1, 1e5]")
    elif not (_present(rate) and 0 < float(rate) < math.inf and row.get("mode") == "online"):
        err("concurrency", "missing; an online row without it needs a finite request_rate")
    for field in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        if _present(row.get(field)) and not 1 <= float(row[field]) <= 1e7:
            err(field, f"{row[field]!r} must be in [1, 1e7]")
    if _present(row.get("enable_chunked_prefill")) and \
            str(row["enable_chunked_prefill"]) not in ("True", "False"):
        err("enable_chunked_prefill", f"{row['enable_chunked_prefill']!r}; allowed: True, False")
    if _present(row.get("tp")) and _present(row.get("gpu_count")) and \
            float(row["gpu_count"]) % float(row["tp"]):
        err("tp", f"{row['tp']} does not divide gpu_count {row['gpu_count']}")
    ranges = {"ms": (0.01, 1e7), "request_throughput": (1e-4, 1e5),
              "output_throughput": (0.1, 1e7), "total_token_throughput": (0.1, 1e8)}
    measured = 0
    for field in METRICS:
        v = row.get(field)
        if not _present(v):
            continue
        measured += 1
        lo, hi = ranges["ms" if field.endswith("_ms_mean") or field.endswith("_ms_median")
                        else field]
        if not lo <= float(v) <= hi:
            err(field, f"{v!r} is outside [{lo:g}, {hi:g}] (unit: the field name's)")
    if not measured:
        err("metrics", f"none of {', '.join(METRICS)} is given")
    return bad


def load_published(path: str | Path = DATASET) -> pd.DataFrame:
    """The dataset as a DataFrame, every row checked (a ValueError lists every problem)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"published dataset: {path} does not exist")
    frame = pd.read_csv(path, keep_default_na=True)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"published dataset: {path} lacks columns {missing}")
    problems = [p for i, row in enumerate(frame.to_dict("records"))
                for p in check_row(i, row)]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"published dataset {path}:\n  {shown}{more}")
    frame["arch"] = frame["model"].map(MODEL_ARCH)
    return frame
