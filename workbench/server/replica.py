"""One engine replica behind a gateway (workbench/server/gateway.py): the same app as
`workbench serve` (create_app), on a loopback port it picks itself, plus GET /stats, the
engine's published snapshot as JSON, which the gateway polls for least-kv and /metrics.

    python -m workbench.server.replica --model tiny --engine-config '{...}' --threads 1
        --parent-pid PID [--name tiny] [--limits '{...}'] [--response-cache N]

Admission limits and the response cache apply per replica (the gateway passes them on): a
queue bound or a cache of N answers is then one per replica, as with N separate servers.

It binds port 0 (no race for a free port) and writes `PORT <n>` as its first and only line on
stdout; everything else goes to stderr. No API keys: it listens on 127.0.0.1 only, for its
gateway, which checks the keys.

It never outlives the gateway: the kernel sends it SIGTERM when the gateway dies
(PR_SET_PDEATHSIG, Linux), and a watchdog thread checks that its parent is still the gateway
(every other platform, and the race where the gateway died before prctl ran). SIGTERM takes
uvicorn's graceful path and the process exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import threading
import time
from dataclasses import asdict

PORT_LINE = "PORT"


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below covers it

    def watch():
        while True:
            if os.getppid() != parent_pid:  # re-parented: the gateway is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default=None, help="what clients call the model")
    ap.add_argument("--engine-config", default="{}", help="EngineConfig fields as JSON")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--limits", default="{}", help="admission.Limits fields as JSON")
    ap.add_argument("--response-cache", type=int, default=0)
    args = ap.parse_args(argv)
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)

    import torch
    import uvicorn

    from workbench.engine import EngineConfig, LLMEngine
    from workbench.server.admission import Limits
    from workbench.server.app import create_app, listen_socket, served_name
    from workbench.server.metrics import FINISH_REASONS, PREFIX

    if args.threads > 0:  # replicas share the machine's cores; see `workbench serve --help`
        torch.set_num_threads(args.threads)
    sock = listen_socket("127.0.0.1", 0, allow_zero=True)
    engine = LLMEngine.from_pretrained(args.model,
                                       EngineConfig.from_dict(json.loads(args.engine_config)))
    aliases = {args.model}
    if engine.model_path is not None:
        aliases |= {str(engine.model_path)}
    app = create_app(engine, args.name or served_name(args.model), aliases,
                     limits=Limits(**json.loads(args.limits)),
                     response_cache=args.response_cache)
    worker, registry = app.state.worker, app.state.metrics.registry

    @app.get("/stats")
    async def stats():
        ended = {r: registry.get_sample_value(f"{PREFIX}request_success_total",
                                              {"finished_reason": r}) or 0.0
                 for r in FINISH_REASONS}
        return asdict(worker.stats) | {"dead": worker.dead, "request_success": ended}

    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5.0)
    server = uvicorn.Server(config)
    # The port goes out only once the engine is loaded; the gateway still waits for /health.
    print(f"{PORT_LINE} {sock.getsockname()[1]}", flush=True)
    os.dup2(2, 1)  # nothing else on the pipe the gateway stopped reading
    # uvicorn re-raises the SIGTERM it handled after its graceful shutdown: a no-op handler
    # makes that an exit 0 (as the gateway does).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
