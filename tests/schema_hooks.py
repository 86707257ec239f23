"""Schemathesis hooks for tests/test_server_schema.py, loaded by the schemathesis CLI through
SCHEMATHESIS_HOOKS=tests.schema_hooks (the test sets it; nothing imports this otherwise).

- `openai_error_body`: a check; every 4xx must be an OpenAI-shaped JSON error body.
- `before_call`: folds generated output lengths the server would accept and run for long (up
  to max_model_len tokens, seconds each on tiny) into a short range, so the run stays bounded.
  Lengths the server must refuse (< 1, or past max_model_len) are sent as generated; a chat
  that names no length (it would run to the end of the context) gets OUTPUT_CAP.
"""

from __future__ import annotations

import json

import schemathesis

OUTPUT_CAP = 16  # accepted output lengths are folded into [OUTPUT_CAP, 2 * OUTPUT_CAP)
MAX_MODEL_LEN = 2048  # the tiny model's; longer max_tokens are refused at once
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens")
ERROR_FIELDS = {"message", "type", "param", "code"}


def bounded(body):
    """`OUTPUT_CAP + v % OUTPUT_CAP` rather than a constant keeps two different lengths
    different in most cases, so chat's max_tokens-contradicts-max_completion_tokens 400 stays
    reachable."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    for name in LENGTH_FIELDS:
        v = out.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and OUTPUT_CAP < v <= MAX_MODEL_LEN:
            out[name] = OUTPUT_CAP + v % OUTPUT_CAP
    # A chat that names no length runs to the end of the context (as OpenAI's): cap it too.
    if "messages" in out and all(out.get(name) is None for name in LENGTH_FIELDS):
        out["max_tokens"] = OUTPUT_CAP
    return out


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.body is not None:
        case.body = bounded(case.body)


@schemathesis.check
def openai_error_body(ctx, response, case):
    status = response.status_code
    if not 400 <= status < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]  # lists, lowercase keys
    if not content_type.startswith("application/json"):
        raise AssertionError(f"HTTP {status} with content-type {content_type!r}, not JSON")
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"HTTP {status} with a body that is not JSON: "
                             f"{response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if set(body) != {"error"} or not isinstance(error, dict) or set(error) != ERROR_FIELDS:
        raise AssertionError(f"HTTP {status}: not an OpenAI error body: {body!r}")
    if not (isinstance(error["message"], str) and error["message"]):
        raise AssertionError(f"HTTP {status}: the error has no message: {body!r}")
    if error["type"] != "invalid_request_error":
        raise AssertionError(f"HTTP {status}: error type {error['type']!r}: {body!r}")
    return True
