"""A minimal OpenAI-compatible server: POST /v1/completions (SSE streaming or not),
GET /v1/models, GET /health. The serving issue grows it (chat, auth, limits, /metrics).

A client's mistake is a 400 with an OpenAI-style error body naming the field, never a 500.
"""

from __future__ import annotations

import itertools
import json
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from workbench.engine import SamplingParams
from workbench.server.worker import EngineFailure, EngineWorker


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


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": None}})


def create_app(engine, model_name: str) -> FastAPI:
    worker = EngineWorker(engine)
    ids = itertools.count()

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="workbench", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req, exc: RequestValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(400, f"{field}: {first['msg']}", field)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "workbench"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.model not in (None, model_name):
            return _error(404, f"model: {body.model!r} is not served here; "
                               f"available: {model_name!r}", "model")
        try:
            params = SamplingParams(max_tokens=body.max_tokens, temperature=body.temperature,
                                    top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                                    stop=body.stop, stop_token_ids=body.stop_token_ids,
                                    ignore_eos=body.ignore_eos)
            rid = f"cmpl-{next(ids)}"
            sink = await worker.submit(rid, body.prompt, params)
        except ValueError as e:
            return _error(400, str(e), str(e).split(":")[0])
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
            out = None
            try:
                while out is None or not out.finished:
                    out = await sink.get()
                    if isinstance(out, EngineFailure):
                        return JSONResponse(status_code=500, content={"error": {
                            "message": f"engine failure: {out.message}",
                            "type": "server_error", "param": None, "code": None}})
            finally:
                if out is None or isinstance(out, EngineFailure) or not out.finished:
                    worker.abort(rid)
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
                        err = {"error": {"message": f"engine failure: {out.message}",
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


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, engine_config=None,
          log_level: str = "warning") -> None:
    import uvicorn

    from workbench.engine import EngineConfig, LLMEngine

    engine = LLMEngine.from_pretrained(model, engine_config or EngineConfig())
    name = str(model)
    uvicorn.run(create_app(engine, name), host=host, port=port, log_level=log_level)
