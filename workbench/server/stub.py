"""A stub OpenAI-compatible endpoint that answers every completion with one streamed token at
once: with no model behind it, what a load driver measures against it is the driver's own
overhead. It lists itself at GET /v1/models as a workbench server, since like one it takes
token-id prompts (it ignores the prompt), so the HTTP driver's `prompt_format: auto` sends ids
and spends no time detokenizing. Run: python -m workbench.server.stub --port 8001
"""

from __future__ import annotations

import argparse
import json

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from workbench.server import WORKBENCH_OWNER

_CHUNK = {"id": "stub", "object": "text_completion", "model": "stub",
          "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]}
_USAGE = {"id": "stub", "object": "text_completion", "model": "stub", "choices": [],
          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
_BODY = f"data: {json.dumps(_CHUNK)}\n\ndata: {json.dumps(_USAGE)}\n\ndata: [DONE]\n\n"
_MODELS = {"object": "list",
           "data": [{"id": "stub", "object": "model", "owned_by": WORKBENCH_OWNER}]}


def create_stub_app() -> FastAPI:
    app = FastAPI(title="workbench-stub")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return _MODELS

    @app.post("/v1/completions")
    async def completions():
        async def events():
            yield _BODY

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_stub_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
