"""A minimal OpenAI-compatible server: POST /v1/completions (SSE streaming or not),
GET /v1/models, GET /health. The serving issue grows it (chat, auth, limits, /metrics).

A client's mistake is a 400 with an OpenAI-style error body naming the field, never a 500; an
engine fault is a 500 for the requests it touched and never stops the server; an engine that
cannot serve at all makes /health and every completion a fast 503. Clients see the model by
its name (preset or directory basename), never a local path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from workbench.engine import SamplingParams
from workbench.engine.sampling_params import require_utf8
from workbench.server import WORKBENCH_OWNER
from workbench.server.worker import EngineFailure, EngineFault, EngineUnavailable, EngineWorker

GRACEFUL_SHUTDOWN_S = 5.0  # in-flight requests get this long after SIGTERM, then are aborted


def _encodable(value, info: ValidationInfo):
    """JSON can carry a lone surrogate ("\\ud800") that no tokenizer accepts and no response
    can echo: reject it here, as a 400 naming the field, by the engine's own rule."""
    for s in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
        if isinstance(s, str):
            require_utf8(info.field_name, s)
    return value


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str | None = None
    prompt: str | list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # vLLM extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    ignore_eos: bool = False  # vLLM extension, used by load tests
    stream: bool = False
    stream_options: dict | None = Field(None, description="{include_usage: bool}")

    _text = field_validator("model", "prompt", "stop")(_encodable)


def _error(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": kind, "param": param, "code": None}})


def served_name(model: str | os.PathLike) -> str:
    """What clients call the model: the preset name, else the checkpoint directory's name."""
    from workbench.models.tiny import PRESETS

    if str(model) in PRESETS:
        return str(model)
    return Path(model).expanduser().resolve().name or "model"


async def _final(sink: asyncio.Queue):
    """The finished output (or the EngineFailure) of a non-streaming request."""
    while True:
        out = await sink.get()
        if isinstance(out, EngineFailure) or out.finished:
            return out


async def _disconnected(receive) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(engine, model_name: str | None = None, aliases: Iterable[str] = ()) -> FastAPI:
    """`model_name` is what /v1/models lists; requests may also name the model by an alias
    (e.g. the path it was loaded from), which is accepted but never echoed."""
    worker = EngineWorker(engine)
    model_name = model_name or served_name(engine.model_path or "model")
    accepted = {model_name, *aliases}
    paths = sorted({a for a in accepted if os.sep in a}, key=len, reverse=True)
    ids = itertools.count()

    def redact(text: str) -> str:  # exception messages may carry the checkpoint path
        for p in paths:
            text = text.replace(p, model_name)
        return text

    def unavailable(reason: str) -> JSONResponse:
        return _error(503, f"engine unavailable: {redact(reason)}", None, "server_error")

    def engine_failure(message: str) -> JSONResponse:
        return _error(500, f"engine failure: {redact(message)}", None, "server_error")

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="workbench", lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req, exc: RequestValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        message = first["msg"].removeprefix("Value error, ")
        if not message.startswith(f"{field}: "):  # the engine's own checks name the field
            message = f"{field}: {message}"
        return _error(400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), None)

    @app.get("/health")
    async def health():
        if (reason := worker.dead) is not None:
            return JSONResponse(status_code=503, content={"status": "error",
                                                          "reason": redact(reason)})
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": WORKBENCH_OWNER}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.model is not None and body.model not in accepted:
            return _error(404, f"model: {body.model!r} is not served here; "
                               f"available: {model_name!r}", "model")
        rid = f"cmpl-{next(ids)}"
        try:
            params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature,
                                    top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                                    stop=body.stop, stop_token_ids=body.stop_token_ids,
                                    ignore_eos=body.ignore_eos)
            sink = await worker.submit(rid, body.prompt, params)
        except ValueError as e:
            return _error(400, redact(str(e)), str(e).split(":")[0])
        except EngineUnavailable as e:
            return unavailable(str(e))
        except EngineFault as e:
            return engine_failure(str(e))
        created = int(time.time())

        def chunk(text: str, finish_reason, usage=None) -> str:
            data = {"id": rid, "object": "text_completion", "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish_reason}] if usage is None else [],
                    "usage": usage}
            return f"data: {json.dumps(data)}\n\n"

        def usage_of(out) -> dict:
            p, c = len(out.prompt_token_ids), len(out.token_ids)
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        if not body.stream:
            # Nothing is sent until the end, so watch the connection: a client that leaves
            # frees its slot now instead of when max_tokens runs out.
            result = asyncio.ensure_future(_final(sink))
            gone = asyncio.ensure_future(_disconnected(request.receive))
            try:
                await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not result.done():
                    result.cancel()
                    worker.abort(rid)
            if not result.done():
                return Response(status_code=499)  # nobody is left to read it
            out = result.result()
            if isinstance(out, EngineFailure):
                return engine_failure(out.message)
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "text": out.text, "logprobs": None,
                                 "finish_reason": out.finish_reason}],
                    "usage": usage_of(out)}

        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events():
            out = None
            try:
                while out is None or not out.finished:
                    out = await sink.get()
                    if isinstance(out, EngineFailure):  # headers are sent: report in-stream
                        err = {"error": {"message": f"engine failure: {redact(out.message)}",
                                         "type": "server_error"}}
                        yield f"data: {json.dumps(err)}\n\n"
                        return
                    yield chunk(out.new_text, out.finish_reason if out.finished else None)
                if include_usage:
                    yield chunk("", None, usage_of(out))
                yield "data: [DONE]\n\n"
            finally:
                if out is None or isinstance(out, EngineFailure) or not out.finished:
                    worker.abort(rid)  # client went away (or the step failed): free the slot

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def listen_socket(host: str, port: int, allow_zero: bool = False):
    """Bind (not yet listen) before the model loads: a bad host or port is a one-line user
    error at once, and the port stays ours while the model loads. `allow_zero` lets port 0
    pick a free port (in-process servers); `workbench serve` refuses it, since a user could
    not tell where the server went. The bound port is `sock.getsockname()[1]`."""
    import errno
    import socket

    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"port: must be in {low}..65535, got {port!r}")
    if not host or not host.strip():
        raise ValueError("host: must be an IP address or host name, got an empty string")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"host: cannot resolve {host!r} ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            raise ValueError(f"port: cannot listen on {host}:{port}: {e.strerror}") from None
        raise ValueError(f"host: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, engine_config=None,
          log_level: str = "warning", graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S) -> None:
    import uvicorn

    from workbench.engine import EngineConfig, LLMEngine

    sock = listen_socket(host, port)
    try:
        engine = LLMEngine.from_pretrained(model, engine_config or EngineConfig())
        print(engine.memory_report(), file=sys.stderr, flush=True)  # as vLLM logs it at start
        aliases = {str(model)}
        if engine.model_path is not None:
            aliases |= {str(engine.model_path), str(Path(engine.model_path).resolve())}
        app = create_app(engine, served_name(model), aliases)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=graceful_shutdown_s)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
