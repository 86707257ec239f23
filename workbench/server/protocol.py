"""The OpenAI wire format the server speaks: request bodies (pydantic, so a bad field is a 400
naming it), the error body, and the response shapes of /v1/completions and /v1/chat/completions.

Both endpoints take the same sampling fields (`SamplingRequest`, turned into the engine's
SamplingParams in one place) and answer in the same shapes but for a few names (`Dialect`):
the handlers in app.py run one code path for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from workbench.engine import SamplingParams
from workbench.engine.sampling_params import require_utf8

# OpenAI's default max_tokens for /v1/completions. Chat has none: it runs to the end of the
# context, which the server knows once it has tokenized the prompt (server/admission.py).
DEFAULT_MAX_TOKENS = 16


def _encodable(value, info: ValidationInfo):
    """JSON can carry a lone surrogate ("\\ud800") that no tokenizer accepts and no response
    can echo: reject it here, as a 400 naming the field, by the engine's own rule."""
    for s in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
        if isinstance(s, str):
            require_utf8(info.field_name, s)
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # vLLM extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    ignore_eos: bool = False  # vLLM extension, used by load tests
    n: int = 1  # choices per request: only 1 is served
    stream: bool = False
    stream_options: StreamOptions | None = None

    _text = field_validator("model", "stop")(_encodable)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 (one choice per request) is served, got {n}")
        return n

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        """max_tokens as the client sent it; None when it sent none."""
        return self.max_tokens

    def default_max_tokens(self, room: int) -> int:
        """max_tokens when the client sent none; `room`: what the context leaves after the
        prompt."""
        return DEFAULT_MAX_TOKENS

    def output_limit(self, room: int) -> int:
        asked = self.requested_max_tokens()
        return self.default_max_tokens(room) if asked is None else asked

    def sampling_params(self, room: int) -> SamplingParams:
        """The engine's params; raises SamplingParams' ValueError (naming the field)."""
        return SamplingParams(max_tokens=self.output_limit(room), temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                              stop=self.stop, stop_token_ids=self.stop_token_ids,
                              ignore_eos=self.ignore_eos)


class CompletionRequest(SamplingRequest):
    prompt: str | list[int]

    _prompt_text = field_validator("prompt")(_encodable)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name`
    role: Literal["system", "user", "assistant"]
    content: str

    _content_text = field_validator("content")(_encodable)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    # OpenAI's newer name for max_tokens in chat; either may be given, not two different ones.
    max_completion_tokens: int | None = None

    def requested_max_tokens(self) -> int | None:
        a, b = self.max_completion_tokens, self.max_tokens
        if a is not None and b is not None and a != b:
            raise ValueError(f"max_completion_tokens: {a} contradicts max_tokens {b}; "
                             "give one of them")
        return b if a is None else a

    def default_max_tokens(self, room: int) -> int:
        # OpenAI's chat runs to the end of the context. At least 1: a prompt that leaves no
        # room is then refused by the context check.
        return max(1, room)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error this server answers, as OpenAI's API answers it."""

    error: ErrorDetail


# What the generation endpoints may answer besides 200, for the OpenAPI document (FastAPI
# would otherwise document a 422 for bad bodies, which this server answers 400, as OpenAI).
GENERATION_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "a malformed body or a bad field (named in `param`)"),
    (401, "API keys are configured and the request has none of them"),
    (404, "the request names a model not served here"),
    (413, "the body is larger than --max-request-bytes"),
    (429, "over a rate limit (Retry-After says when to retry)"),
    (500, "the engine failed while running the request"),
    (503, "the engine is unavailable, the admission queue is full or the server is draining"),
    (504, "the request did not finish within --request-timeout"))}


def drop_validation_422(schema: dict) -> dict:
    """Remove FastAPI's documented 422 (never answered here: bad bodies are 400s)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def error_response(status: int, message: str, param: str | None = None,
                   kind: str = "invalid_request_error", code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": message, "type": kind, "param": param, "code": code}})


def usage_of(out) -> dict:
    p, c = len(out.prompt_token_ids), len(out.token_ids)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the completions and chat responses: names and where text goes."""

    id_prefix: str
    object: str  # of the whole response
    chunk_object: str  # of each streamed chunk
    chat: bool
    prompt_field: str  # what the client sent the prompt as (errors about it name this)

    def choice(self, text: str, finish_reason: str | None) -> dict:
        """The one choice of a whole (non-streamed) response."""
        if self.chat:
            return {"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, text: str, finish_reason: str | None, role: bool = False) -> dict:
        """The one choice of a streamed chunk; `role` marks chat's first chunk."""
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": text} if role else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


COMPLETION = Dialect("cmpl", "text_completion", "text_completion", False, "prompt")
CHAT = Dialect("chatcmpl", "chat.completion", "chat.completion.chunk", True, "messages")
