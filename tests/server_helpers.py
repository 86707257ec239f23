"""Helpers of the server tests: `workbench serve` as a real process on a loopback port (the
tests that drive it as clients do), and /metrics parsed as Prometheus text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, *args: str, env: dict | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """Start `workbench serve` (extra CLI `args`, extra `env` variables) and wait (bounded)
    until /health answers; (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--max-num-seqs", "8", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):  # bounded: about two minutes
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not come up")


def kill_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the graceful path), then kill if it is still there after a minute."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    finally:
        kill_server(proc)


def scrape(url: str, headers: dict | None = None) -> dict[str, float]:
    """GET /metrics as {'name{label=value,...}': value}, parsed by prometheus_client."""
    r = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def delta(after: dict, before: dict, name: str) -> float:
    """How much the workbench:`name` sample grew between two scrapes."""
    return after["workbench:" + name] - before.get("workbench:" + name, 0.0)


def wait_until(cond, what: str, timeout_s: float = 60.0):
    """Poll `cond()` until it is truthy (its value is returned); a bounded wait, so something
    that never happens fails the test (naming `what`) instead of hanging it."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        time.sleep(0.05)
    return value


def wait_for(url: str, ready, what: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Scrape /metrics until `ready(samples)` (bounded): the server counts an abort when its
    engine thread has taken it, a moment after the client left."""
    found = {}

    def check():
        found["samples"] = samples = scrape(url)
        return ready(samples)

    wait_until(check, f"/metrics showing {what}", timeout_s)
    return found["samples"]
