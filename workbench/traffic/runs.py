"""The run store: runs/<run-id>/{requests.parquet, steps.parquet, manifest.json}.

A run directory is staged under a hidden name and renamed into place in one step, so an
interrupted run never leaves half-written files behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import workbench
from workbench.engine.telemetry import STEP_COLUMNS

REQUEST_COLUMNS = ["request_id", "arrival", "first_scheduled", "first_token", "finish",
                   "prompt_tokens", "output_tokens", "finish_reason", "ttft", "tpot", "e2e",
                   "itl_mean", "cached_prompt_tokens", "preemptions"]


@dataclass(slots=True)
class Run:
    path: Path
    requests: pd.DataFrame
    steps: pd.DataFrame | None
    manifest: dict


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def git_revision() -> str | None:
    root = Path(workbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict:
    import torch

    return {"package_version": workbench.__version__, "git_revision": git_revision(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def requests_frame(records: list[dict]) -> pd.DataFrame:
    cols = REQUEST_COLUMNS + [c for c in ("token_times", "send_lateness", "error", "replica")
                              if any(c in r for r in records)]
    return pd.DataFrame(records, columns=cols)


def write_run(out_root: str | Path, run_id: str, requests: pd.DataFrame,
              steps: pd.DataFrame | None, manifest: dict) -> Path:
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / run_id
    stage = root / f".{run_id}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        requests.to_parquet(stage / "requests.parquet", index=False)
        if steps is not None:
            steps.to_parquet(stage / "steps.parquet", index=False)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final


def load_run(path: str | Path) -> Run:
    """A run directory -> DataFrames (requests, steps or None) and the manifest, for notebooks."""
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise ValueError(f"run: {path} is not a run directory (no manifest.json)")
    steps_file = path / "steps.parquet"
    steps = pd.read_parquet(steps_file) if steps_file.exists() else None
    if steps is not None:  # contract columns first; extras (e.g. replica) after
        steps = steps[[c for c in STEP_COLUMNS if c in steps]
                      + [c for c in steps if c not in STEP_COLUMNS]]
    return Run(path, pd.read_parquet(path / "requests.parquet"), steps,
               json.loads((path / "manifest.json").read_text()))
