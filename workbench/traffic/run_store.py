"""The run store: runs/<run-id>/{requests.parquet, steps.parquet, manifest.json}.

Every run directory (real runs, profiles, simulations) is written by `store_run`, whose
manifest comes from the one builder, `build_manifest`: the environment is recorded the same
way everywhere and secrets (API keys, credentials in URLs) never reach the disk.
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
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

import workbench
from workbench.engine.telemetry import STEP_COLUMNS

# The requests table is built in workbench.traffic.metrics, beside the columns it lays out
# (the engine builds it too); re-exported here for the run writers.
from workbench.traffic.metrics import EXTRA_REQUEST_COLUMNS, records_frame  # noqa: F401

# Manifest keys whose values are secrets: kept as "<redacted>" so a reader sees one was set.
SECRET_KEYS = frozenset({"api_key", "api_keys", "authorization", "password", "secret",
                         "token", "access_token", "hf_token"})
REDACTED = "<redacted>"


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


def redact_secrets(value):
    """A copy with secret values replaced and credentials dropped from URLs, at any depth."""
    if isinstance(value, dict):
        return {k: (REDACTED if str(k).lower() in SECRET_KEYS and v not in (None, "", [])
                    else redact_secrets(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    return value


def build_manifest(run_id: str, kind: str, started: str, *, scenario=None, **fields) -> dict:
    """The manifest of every run directory: id, kind ("real" | "profile" | "simulated"), start
    time, the scenario (if any), the caller's fields, and the environment; secrets redacted."""
    manifest: dict = {"run_id": run_id, "kind": kind, "started": started}
    if scenario is not None:
        manifest["scenario"] = (scenario.model_dump(mode="json")
                                if hasattr(scenario, "model_dump") else scenario)
    manifest.update(fields)
    manifest.update(environment())
    return redact_secrets(manifest)


def store_run(out_root: str | Path, name: str, kind: str, requests: pd.DataFrame,
              steps: pd.DataFrame | None, started: str | None = None, *, scenario=None,
              **fields) -> Path:
    """Name a new run, build its manifest and write its directory; return the directory."""
    run_id = new_run_id(name)
    started = started or dt.datetime.now(dt.UTC).isoformat()
    manifest = build_manifest(run_id, kind, started, scenario=scenario, **fields)
    return write_run(out_root, run_id, requests, steps, manifest)


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
