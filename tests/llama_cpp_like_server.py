"""A small server on 127.0.0.1 that behaves like llama.cpp's OpenAI-compatible server
(llama-cpp-python 0.3.x, `python -m llama_cpp.server`) in the ways that matter to a load
driver, as documented and observed (see the project's field notes); building the real one takes
about 8 minutes on two cores, so the tests use this stand-in:

- prompts must be text: a token-id prompt is answered with HTTP 500;
- one request at a time; with `interrupt_requests` (llama.cpp's default) a new request ends the
  running stream with `[DONE]` and no finish_reason;
- one SSE chunk per token, a final chunk with empty text and the finish_reason, then `[DONE]`;
  a character split across tokens streams as an empty chunk first (incomplete UTF-8 is held
  back); no `usage` in streams, whatever stream_options asks;
- `ignore_eos` is ignored: a request whose "model" emits EOS stops early with "stop";
- GET /v1/models lists the GGUF path, owned_by "me"; /health is 404.

`accept_token_ids=True` departs from llama.cpp on purpose: a server that takes token ids but
still reports no usage (for the driver's approximate-count path).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

WORDS = [" the", " cat", " sat", " on", " a", " mat", " and", " then", " it", " slept"]
SPLIT_CHAR = "é"  # streamed as "" then "é": two tokens, one of them an empty chunk


class LlamaCppLikeServer:
    """Context manager: `with LlamaCppLikeServer(eos_after={2: 3}) as srv: srv.url ...`.

    eos_after: request seed -> tokens generated before the model emits EOS.
    hold_from: requests after this many are held open (until the client goes away).
    split_every: every n-th token is SPLIT_CHAR, streamed as an empty chunk plus the char."""

    def __init__(self, eos_after: dict[int, int] | None = None, interrupt_requests: bool = False,
                 hold_from: int | None = None, split_every: int = 0,
                 accept_token_ids: bool = False, token_delay_s: float = 0.0):
        self.eos_after = eos_after or {}
        self.interrupt_requests = interrupt_requests
        self.hold_from = hold_from
        self.split_every = split_every
        self.accept_token_ids = accept_token_ids
        self.token_delay_s = token_delay_s
        self.bodies: list[dict] = []  # every completion request received
        self.authorization: list[str | None] = []  # its Authorization header
        self.cut = 0  # streams ended early by a newer request
        self.texts: dict[int, str] = {}  # seed -> the text streamed for it
        self.finished = 0
        self.model_path = "/models/tiny-f32.gguf"

    # -- the app ---------------------------------------------------------------------------
    def app(self) -> FastAPI:  # Request is imported at module level: FastAPI resolves it there
        app = FastAPI()
        lock = asyncio.Lock()
        running: list[asyncio.Event] = []

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": self.model_path, "object": "model",
                                                "owned_by": "me", "permissions": []}]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.bodies.append(body)
            self.authorization.append(request.headers.get("authorization"))
            prompt = body.get("prompt")
            if not self.accept_token_ids and isinstance(prompt, list) and prompt and isinstance(
                    prompt[0], int):
                # llama-cpp-python fails inside tokenization and answers with a bare 500
                return JSONResponse({"error": {"message": "'list' object has no attribute "
                                               "'encode'", "type": "internal_server_error"}},
                                    status_code=500)
            index = len(self.bodies) - 1
            if self.interrupt_requests:
                for ev in running:
                    ev.set()
            cut = asyncio.Event()
            return StreamingResponse(self._stream(body, index, lock, running, cut),
                                     media_type="text/event-stream")

        return app

    async def _stream(self, body, index, lock, running, cut):
        async with lock:  # one request at a time, like llama.cpp
            running.append(cut)
            try:
                if self.hold_from is not None and index >= self.hold_from:
                    for _ in range(1200):  # held open; ends when the client goes away
                        await asyncio.sleep(0.05)
                seed = int(body.get("seed", index))
                tokens = self._tokens(int(body.get("max_tokens", 16)))
                stop_at = self.eos_after.get(seed)
                if stop_at is not None and stop_at < len(tokens):
                    tokens, reason = tokens[:stop_at], "stop"  # EOS: ignore_eos not honoured
                else:
                    reason = "length"
                text = []
                for piece in tokens:
                    if cut.is_set():  # interrupted by a newer request
                        self.cut += 1
                        yield "data: [DONE]\n\n"
                        return
                    text.append(piece)
                    yield self._chunk(piece, None)
                    await asyncio.sleep(self.token_delay_s)
                self.texts[seed] = "".join(text)
                yield self._chunk("", reason)
                yield "data: [DONE]\n\n"
                self.finished += 1
            finally:
                running.remove(cut)

    def _tokens(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            k = len(out)
            if self.split_every and k % self.split_every == self.split_every - 1 and k + 1 < n:
                out += ["", SPLIT_CHAR]  # incomplete UTF-8 is held back: an empty chunk first
            else:
                out.append(WORDS[k % len(WORDS)])
        return out

    def _chunk(self, text: str, finish_reason) -> str:
        return "data: " + json.dumps({
            "id": "cmpl-x", "object": "text_completion", "created": int(time.time()),
            "model": self.model_path,
            "choices": [{"text": text, "index": 0, "logprobs": None,
                         "finish_reason": finish_reason}]}) + "\n\n"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LlamaCppLikeServer:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(
            self.app(), host="127.0.0.1", port=port, log_level="warning",
            timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the llama.cpp-like server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
