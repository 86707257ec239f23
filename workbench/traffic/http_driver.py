"""Drive any OpenAI-compatible /v1/completions endpoint with streaming SSE (asyncio + httpx).

Timestamps are taken at the client: send, each streamed chunk that carries text, end.
Output token counts, best first: the server's `usage` (stream_options.include_usage); the
streamed text re-tokenized when a tokenizer is at hand; else the number of text chunks,
marked approximate (`output_tokens_source` = "usage" | "retokenized" | "chunks"). A target with
`output_tokens_from: chunks` counts one token per text chunk instead of re-tokenizing
("chunk per token"): exact where the server streams one chunk per token.
`send_lateness` records how late each request left against its schedule: the driver's own
overhead, which must stay small for the measurement to mean anything.

Foreign servers differ from this project's (see llama.cpp's server): token-id prompts get
HTTP 500, so prompts go as text unless the server is a workbench server (`resolve_prompts`);
a stream may end with `[DONE]` and no finish_reason (cut off), and `ignore_eos` may be
ignored. Such requests are failures with a message in `error`, not short successes, and
`diagnose` turns them into run-level warnings. `target.extra_body` is merged into every request:
llama.cpp honours `logit_bias`, and a large negative bias on EOS does what ignore_eos does.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter

import httpx

from workbench.server import WORKBENCH_OWNER  # `owned_by` in this project's GET /v1/models
from workbench.traffic.drive_result import INTERRUPT, WALL_LIMIT, DriveResult
from workbench.traffic.metrics import request_record
from workbench.traffic.workload import RequestSpec, token_ids_to_text

CUT_OFF = "the stream ended without a finish_reason"
SHORT = "short completion"


def auth_headers(target) -> dict:
    key = target.api_key or (os.environ.get(target.api_key_env) if target.api_key_env else None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def server_owner(target) -> str | None:
    """`owned_by` of the first model the server lists at GET /v1/models (None: not listed)."""
    url = target.url.rstrip("/")
    try:
        resp = httpx.get(f"{url}/v1/models", headers=auth_headers(target),
                         timeout=min(target.timeout_s, 10.0))
    except httpx.HTTPError as e:
        raise ValueError(f"target.url: no server answers at {url} ({type(e).__name__}: {e})"
                         ) from None
    if resp.status_code != 200:
        return None
    try:
        models = resp.json().get("data") or []
        return str(models[0].get("owned_by")) if models else None
    except (ValueError, AttributeError, TypeError, IndexError, KeyError):
        return None


def resolve_prompts(target, specs: list[RequestSpec], log=print):
    """(prompts to send, tokenizer or None, facts for the manifest) for an HTTP target.

    prompt_format "auto": token ids to a workbench server (exact prompt lengths), text to any
    other (llama.cpp answers token ids with HTTP 500). Text needs the served model's
    tokenizer (target.tokenizer) so that each prompt has the scenario's length."""
    fmt = target.prompt_format
    owner = None
    if fmt == "auto":
        owner = server_owner(target)
        fmt = "tokens" if owner == WORKBENCH_OWNER else "text"
        if fmt == "text":
            log(f"note: {target.url} is not a workbench server (GET /v1/models owned_by: "
                f"{owner!r}); sending text prompts, since servers such as llama.cpp answer "
                "token-id prompts with HTTP 500 (set target.prompt_format to choose)")
    tokenizer = None
    if target.tokenizer:
        from workbench.models.loader import load_tokenizer
        from workbench.models.tiny import resolve_model

        tokenizer = load_tokenizer(resolve_model(target.tokenizer))
        if tokenizer is None:
            raise ValueError(f"target.tokenizer: {target.tokenizer!r} has no tokenizer files")
    if fmt == "text" and tokenizer is None:
        raise ValueError(
            f"target.tokenizer: {target.url} gets text prompts, which need the served model's "
            "tokenizer (a preset or a local checkpoint directory) to have the scenario's "
            "lengths; or set target.prompt_format: tokens if the server accepts token ids")
    prompts = ([token_ids_to_text(s.prompt_token_ids, tokenizer) for s in specs]
               if fmt == "text" else None)
    info = {"prompt_format": fmt, "tokenizer": target.tokenizer, "server_owned_by": owner,
            "output_token_count": "usage, else " + (
                "one token per streamed chunk" if target.output_tokens_from == "chunks"
                else "re-tokenized text" if tokenizer else "streamed chunks (approximate)")}
    return prompts, tokenizer, info


def drive_http(target, specs: list[RequestSpec], temperature: float = 0.0,
               ignore_eos: bool = True, concurrency: int | None = None,
               think_time_s: float = 0.0, progress=None, prompts: list | None = None,
               max_wall_s: float | None = None, tokenizer=None) -> DriveResult:
    """`prompts` is what is sent per request (see `resolve_prompts`); None sends the token
    ids, which only servers that accept them (this project's, vLLM) answer. `tokenizer`
    re-tokenizes streamed text when the server reports no usage.

    Ctrl-C stops sending and returns the requests that completed, marked interrupted."""
    res = DriveResult(t0=time.monotonic())
    try:
        _run_to_end(_drive(res, target, specs, temperature, ignore_eos, concurrency,
                           think_time_s, progress, prompts, max_wall_s, tokenizer))
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the event loop's handler
        res.stop(INTERRUPT)
    res.warnings = diagnose(res.records, ignore_eos, token_prompts=prompts is None)
    return res


def _run_to_end(coro) -> None:
    """asyncio.run, also where this thread already runs an event loop (a Jupyter kernel does,
    and asyncio.run refuses there): the drive then gets a loop of its own on a thread, and a
    Ctrl-C (kernel interrupt) cancels it as asyncio.run's own handler would."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(task)
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            failure.append(e)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="http-driver")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)
        thread.join()
    if failure and not isinstance(failure[0], asyncio.CancelledError):
        raise failure[0]


async def _drive(res, target, specs, temperature, ignore_eos, concurrency, think_time_s,
                 progress, prompts, max_wall_s, tokenizer) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    res.t0 = time.monotonic()
    in_flight = 0

    async with httpx.AsyncClient(base_url=target.url.rstrip("/"), headers=auth_headers(target),
                                 timeout=target.timeout_s, limits=limits) as client:

        async def send(spec: RequestSpec, scheduled: float) -> None:
            nonlocal in_flight
            in_flight += 1
            res.max_concurrency = max(res.max_concurrency, in_flight)
            prompt = prompts[spec.index] if prompts is not None else spec.prompt_token_ids
            rec = await _one(client, target.model, spec, prompt, temperature, ignore_eos,
                             res.t0, scheduled, tokenizer, target.extra_body,
                             target.output_tokens_from == "chunks")
            in_flight -= 1
            res.records.append(rec)
            if progress is not None:
                progress.update(1)

        async def open_loop():
            async def at(spec):
                delay = res.t0 + spec.arrival_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send(spec, spec.arrival_s)

            await asyncio.gather(*(at(s) for s in specs))

        async def closed_loop():
            todo = iter(specs)

            async def client_loop():
                ready = time.monotonic() - res.t0
                for spec in todo:
                    await send(spec, ready)
                    await asyncio.sleep(think_time_s)
                    ready = time.monotonic() - res.t0

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))

        work = closed_loop() if concurrency else open_loop()
        try:
            await asyncio.wait_for(work, timeout=max_wall_s)
        except TimeoutError:
            res.stop(WALL_LIMIT)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task
            res.stop(INTERRUPT)


async def _one(client: httpx.AsyncClient, model: str, spec: RequestSpec, prompt, temperature,
               ignore_eos, t0: float, scheduled: float, tokenizer=None,
               extra_body: dict | None = None, count_chunks: bool = False) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": spec.max_tokens,
            "temperature": temperature, "stream": True, "ignore_eos": ignore_eos,
            "seed": spec.index, "stream_options": {"include_usage": True}, **(extra_body or {})}
    times: list[float] = []
    pieces: list[str] = []
    usage, finish_reason, error, done = None, None, None, False
    sent = time.monotonic() - t0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                error = (f"HTTP {resp.status_code}: "
                         f"{(await resp.aread()).decode(errors='replace')[:300]}")
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    now = time.monotonic() - t0
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        chunk = None
                    if not isinstance(chunk, dict):
                        error = f"not a JSON object in the stream: {data[:100]!r}"
                        break
                    if chunk.get("error"):  # a server failure reported mid-stream
                        err = chunk["error"]
                        msg = err.get("message", err) if isinstance(err, dict) else err
                        error = f"server error in the stream: {str(msg)[:300]}"
                        break
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):  # an empty chunk carries no token
                            times.append(now)
                            pieces.append(choice["text"])
                        finish_reason = choice.get("finish_reason") or finish_reason
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    end = time.monotonic() - t0
    n, source = _output_tokens(usage, "".join(pieces), tokenizer, len(times), count_chunks)
    if error is None and finish_reason is None:
        error = CUT_OFF + (" (it ended with [DONE]: the server cut the request off)" if done
                           else " (the connection closed before [DONE])")
    elif error is None and ignore_eos and finish_reason == "stop" and n < spec.max_tokens:
        error = (f"{SHORT}: {n} of {spec.max_tokens} tokens with finish_reason 'stop' although "
                 "ignore_eos was sent")
    if error:
        finish_reason = "error"
    rec = request_record(spec.index, sent, None, times, end,
                         (usage or {}).get("prompt_tokens", len(spec.prompt_token_ids)),
                         finish_reason, output_tokens=n)
    rec["token_times"] = times
    rec["send_lateness"] = sent - scheduled
    rec["error"] = error
    rec["output_tokens_source"] = source
    return rec


def _output_tokens(usage, text: str, tokenizer, chunks: int,
                   count_chunks: bool = False) -> tuple[int, str]:
    if usage and usage.get("completion_tokens") is not None:
        return int(usage["completion_tokens"]), "usage"
    if count_chunks:  # chosen by the scenario: the server streams one chunk per token
        return chunks, "chunk per token"
    if tokenizer is not None:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]), "retokenized"
    return chunks, "chunks"


def diagnose(records: list[dict], ignore_eos: bool, token_prompts: bool = False) -> list[str]:
    """Run-level warnings about the target, one line each, from the per-request records."""
    total = len(records)
    errors = [r["error"] for r in records if r.get("error")]
    out = []
    short = sum(e.startswith(SHORT) for e in errors)
    if short and ignore_eos:
        out.append(f"{short} of {total} requests stopped before max_tokens with finish_reason "
                   "'stop' although ignore_eos was sent: the server ignores ignore_eos (as "
                   "llama.cpp's does), so output lengths do not follow the scenario; they "
                   "count as failed")
    cut = sum(e.startswith(CUT_OFF) for e in errors)
    if cut:
        out.append(f"{cut} of {total} streams ended without a finish_reason (cut off by the "
                   "server; llama.cpp does this with --interrupt_requests True); they count as "
                   "failed")
    http = Counter(e.split(":")[0] for e in errors if e.startswith("HTTP "))
    for status, k in sorted(http.items()):
        first = next(e for e in errors if e.startswith(status + ":"))
        hint = (" - servers such as llama.cpp answer token-id prompts with HTTP 500: set "
                "target.prompt_format: text" if token_prompts and status == "HTTP 500" else "")
        out.append(f"{k} of {total} requests failed with {status} (first: {first[:200]}){hint}")
    chunks = sum(r.get("output_tokens_source") == "chunks" for r in records)
    if chunks:
        out.append(f"output token counts of {chunks} of {total} requests are approximate: the "
                   "server sent no usage and no tokenizer is at hand (target.tokenizer), so "
                   "streamed text chunks were counted")
    return out
