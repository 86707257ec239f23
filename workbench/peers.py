"""Peer servers on 127.0.0.1 for side-by-side measurements: llama.cpp's OpenAI-compatible server
(llama-cpp-python, `python -m llama_cpp.server`) and `workbench serve`, each its own process.

llama-cpp-python's server runs one request at a time: every completion takes one global lock
around the single loaded `Llama` (llama_cpp/server/app.py), and its settings have no
parallel-slots option (no n_parallel; a config file with several models swaps them, one loaded
at a time). The pip package builds the llama.cpp libraries only, not the C++ `llama-server`
(whose `--parallel` gives slots). So the one way to serve requests side by side with it is
several instances, each with a share of the cores: `LlamaCppPool` starts them behind a
round-robin proxy on one port.

Its defaults that would distort a benchmark are set here: n_threads (half the cores by
default), interrupt_requests (True ends the running stream when a new request arrives).
It ignores ignore_eos but honours logit_bias: see `llama_cpp_bias`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_installed() -> bool:
    """llama-cpp-python with its server extra (fastapi, sse-starlette, starlette-context)."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return False
    return True


def llama_cpp_bias(tokenizer) -> dict:
    """The request fields that make llama.cpp's streams comparable with the workbench's, as a
    logit_bias (-1e9, not -inf: JSON has no infinity) against
    - EOS: llama.cpp ignores ignore_eos, so this keeps output lengths at max_tokens;
    - tokens that are not UTF-8 on their own (the bare bytes 0x80-0xFF of a byte-level BPE):
      once one is generated and the next tokens do not complete a character, llama-cpp-python
      streams nothing more until the request ends (its streaming loop waits for decodable
      text), which turns TTFT into the whole generation. An untrained model emits them;
    - the other special tokens (pad, bos): they stream as empty text, so a chunk count would
      miss them;
    - tokens longer than 32 bytes (long runs of spaces or '#'): llama-cpp-python detokenizes
      into a 32-byte buffer per token (`_internals.LlamaModel.detokenize`), so they vanish
      from its output, streamed or not.
    With these out, every generated token streams as one non-empty chunk. llama-cpp-python
    applies the bias in Python per token: ~140 entries here, tens of microseconds against a
    decode step of milliseconds."""
    bad = [i for i in range(len(tokenizer))
           if "\ufffd" in (t := tokenizer.decode([i])) or len(t.encode()) > 32]
    ids = sorted({tokenizer.eos_token_id, *tokenizer.all_special_ids, *bad})
    return {"logit_bias": {str(i): -1e9 for i in ids}}


class LocalServer:
    """A server process on 127.0.0.1, ready once GET `ready_path` answers 200 (bounded wait);
    stopped by SIGTERM, then killed. Its output goes to `log` (a file) for post-mortems."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, log: Path,
                 env: dict | None = None, start_timeout_s: float = 300.0):
        self.cmd, self.port, self.ready_path, self.log = cmd, port, ready_path, Path(log)
        self.env = {**os.environ, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[:4]} exited with {self.proc.returncode}: "
                                   f"{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{self.cmd[:4]} did not answer {self.ready_path} within "
                           f"{self.start_timeout_s:g} s: {self.tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def llama_cpp_server(gguf: str | Path, log: Path, threads: int = 2, n_ctx: int = 2048,
                     port: int | None = None) -> LocalServer:
    """llama.cpp's OpenAI server on `gguf`: `threads` for decode and for prompt batches,
    requests never interrupted (its default interrupts the running stream)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--interrupt_requests", "False", "--verbose", "False"]
    return LocalServer(cmd, port, "/v1/models", log)  # its /health is 404


def workbench_server(model: str, log: Path, threads: int = 2, port: int | None = None,
                     args: tuple[str, ...] = ()) -> LocalServer:
    """`workbench serve` with torch limited to `threads` (OMP_NUM_THREADS, read at start)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "workbench", "serve", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), *args]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return LocalServer(cmd, port, "/health", log, env=env)


class LlamaCppPool:
    """`instances` llama.cpp servers, `threads` each, behind a round-robin streaming proxy on
    one port (workbench.peers_proxy, its own process): what llama-cpp-python offers instead
    of parallel slots. Each instance holds its own copy of the weights and KV cache."""

    def __init__(self, gguf: str | Path, log_dir: Path, instances: int = 2, threads: int = 1,
                 n_ctx: int = 2048):
        self.servers = [llama_cpp_server(gguf, Path(log_dir) / f"llama-cpp-{i}.log", threads,
                                         n_ctx) for i in range(instances)]
        port = free_port()
        cmd = [sys.executable, "-m", "workbench.peers_proxy", "--port", str(port),
               *[s.url for s in self.servers]]
        self.proxy = LocalServer(cmd, port, "/v1/models", Path(log_dir) / "proxy.log")
        self.url = self.proxy.url
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LlamaCppPool:
        try:
            for s in [*self.servers, self.proxy]:
                self._stack.enter_context(s)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
