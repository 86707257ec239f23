"""Run the server on a background thread of this process (notebooks, tests): the same uvicorn
server and app as `workbench serve`, with the engine object at hand for inspection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout_s: float = 120.0,
                    graceful_shutdown_s: float = 5.0) -> Iterator[str]:
    """Yields the base URL once the server accepts requests; stops it on exit (the same path
    SIGTERM takes: graceful wait, then in-flight requests cancelled, then the engine stopped).
    Port 0 picks a free port."""
    import uvicorn

    from workbench.server.app import listen_socket

    sock = listen_socket(host, port, allow_zero=True)
    url = f"http://{host}:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=graceful_shutdown_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=graceful_shutdown_s + 30)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the background server did not stop")
