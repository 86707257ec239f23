"""An exact-match response cache (`workbench serve --response-cache N`, off by default): a
greedy request identical to one already answered gets the stored answer without the engine.

What is cached: only greedy requests (temperature 0, or top_k 1: SamplingParams.greedy), whose
answer is a function of the request alone; only answers that completed (finish_reason stop or
length), never an abort or a failure. The key is the served model, the prompt exactly as
submitted (text, or token ids: a text and its ids are different keys), and every field of the
engine's SamplingParams except those greedy decoding ignores (`GREEDY_IGNORES`): max_tokens,
stop, stop_token_ids, ignore_eos, and any field SamplingParams gains later, so a new knob that
changes the output can never be answered from a stale entry. A chat's prompt is its templated
text, so a chat and a completion of the same text share an entry (their answers are equal).

Bounded: at most N entries, the least recently used evicted first. Identical requests in flight
together each run (no coalescing): the cache only answers requests that arrive after an answer
is stored.

A hit answers as a request would (`Replay`, read like relay.Flight): non-streaming, the stored
text and usage; streaming (SSE or WebSocket), one chunk with the whole text and the finish
reason, then usage when asked: the token-by-token pieces are not stored, as nothing would be
learnt from replaying them. /metrics: response_cache_queries_total counts lookups of cacheable
requests, response_cache_hits_total the hits; a hit counts in request_success_total (a request
answered, with what its client saw) but not in prompt_tokens_total, generation_tokens_total or
the latency histograms, which measure the engine's work (metrics.py).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from workbench.engine import SamplingParams

# Fields of SamplingParams that greedy decoding does not read (the sampler takes the argmax).
GREEDY_IGNORES = frozenset({"temperature", "top_k", "top_p", "seed"})
CACHED_FINISHES = ("stop", "length")


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


def cache_key(model: str, prompt: str | list[int], params: SamplingParams) -> tuple | None:
    """The key of a request, None when its answer is not deterministic (sampled)."""
    if not params.greedy:
        return None
    fields = tuple((f.name, _frozen(getattr(params, f.name)))
                   for f in dataclasses.fields(params) if f.name not in GREEDY_IGNORES)
    prompt_key = ("text", prompt) if isinstance(prompt, str) else ("ids", tuple(prompt))
    return model, prompt_key, fields


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """A completed answer, shaped like the engine's final RequestOutput for the handlers."""

    text: str
    finish_reason: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    finished: bool = True

    @property
    def new_text(self) -> str:  # replayed as one chunk
        return self.text


class ResponseCache:
    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"response-cache: must be a number of entries >= 1, got {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple, CachedOutput] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> CachedOutput | None:
        out = self._entries.get(key)
        if out is not None:
            self._entries.move_to_end(key)
        return out

    def put(self, key: tuple, out) -> None:
        """Store a finished output (a RequestOutput) if it completed."""
        if out.finish_reason not in CACHED_FINISHES:
            return
        self._entries[key] = CachedOutput(out.text, out.finish_reason,
                                          tuple(out.prompt_token_ids), tuple(out.token_ids))
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class Replay:
    """A cache hit read through the interface of relay.Flight (`over`, `next`,
    `final_unless_gone`, `abandon`, `cut_reason`): one output, the whole answer."""

    cut_reason = None  # nothing runs, so the server never cuts it

    def __init__(self, out: CachedOutput, on_read):
        self.out, self.on_read = out, on_read  # on_read(out): count it as answered
        self.over = False

    async def next(self) -> CachedOutput:
        if not self.over:
            self.over = True
            self.on_read(self.out)
        return self.out

    async def final_unless_gone(self, _receive) -> CachedOutput:
        return await self.next()

    def abandon(self) -> None:
        pass  # no engine request to abort
