"""Drive any OpenAI-compatible /v1/completions endpoint with streaming SSE (asyncio + httpx).

Timestamps are taken at the client: send, each streamed chunk, end. Token counts come from the
server's `usage` when it sends one (stream_options.include_usage), else from the chunk count.
`send_lateness` records how late each request left against its schedule: the driver's own
overhead, which must stay small for the measurement to mean anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx

from workbench.traffic.engine_driver import DriveResult
from workbench.traffic.metrics import request_record
from workbench.traffic.workload import RequestSpec


def drive_http(target, specs: list[RequestSpec], temperature: float = 0.0,
               ignore_eos: bool = True, concurrency: int | None = None,
               think_time_s: float = 0.0, progress=None, prompts: list | None = None,
               max_wall_s: float | None = None) -> DriveResult:
    """`prompts` overrides what is sent per request (e.g. text); default: the token ids.

    Ctrl-C stops sending and returns the requests that completed, marked interrupted."""
    res = DriveResult(t0=time.monotonic())
    try:
        asyncio.run(_drive(res, target, specs, temperature, ignore_eos, concurrency,
                           think_time_s, progress, prompts, max_wall_s))
    except KeyboardInterrupt:  # asyncio.run re-raises it after cancelling the work
        res.interrupted = True
    return res


async def _drive(res, target, specs, temperature, ignore_eos, concurrency, think_time_s,
                 progress, prompts, max_wall_s) -> None:
    headers = {}
    key = target.api_key or (os.environ.get(target.api_key_env) if target.api_key_env else None)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    res.t0 = time.monotonic()
    in_flight = 0

    async with httpx.AsyncClient(base_url=target.url.rstrip("/"), headers=headers,
                                 timeout=target.timeout_s, limits=limits) as client:

        async def send(spec: RequestSpec, scheduled: float) -> None:
            nonlocal in_flight
            in_flight += 1
            res.max_concurrency = max(res.max_concurrency, in_flight)
            prompt = prompts[spec.index] if prompts is not None else spec.prompt_token_ids
            rec = await _one(client, target.model, spec, prompt, temperature, ignore_eos,
                             res.t0, scheduled)
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
        except (TimeoutError, asyncio.CancelledError):
            res.interrupted = True


async def _one(client: httpx.AsyncClient, model: str, spec: RequestSpec, prompt, temperature,
               ignore_eos, t0: float, scheduled: float) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": spec.max_tokens,
            "temperature": temperature, "stream": True, "ignore_eos": ignore_eos,
            "seed": spec.index, "stream_options": {"include_usage": True}}
    times: list[float] = []
    usage, finish_reason, error = None, None, None
    sent = time.monotonic() - t0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:300]}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    now = time.monotonic() - t0
                    chunk = json.loads(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("text") or choice.get("finish_reason") is None:
                            times.append(now)
                        finish_reason = choice.get("finish_reason") or finish_reason
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    end = time.monotonic() - t0
    if error:
        finish_reason = "error"
    rec = request_record(spec.index, sent, None, times, end,
                         (usage or {}).get("prompt_tokens", len(spec.prompt_token_ids)),
                         finish_reason, output_tokens=(usage or {}).get("completion_tokens"))
    rec["token_times"] = times
    rec["send_lateness"] = sent - scheduled
    rec["error"] = error
    return rec
