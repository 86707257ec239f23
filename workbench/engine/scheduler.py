"""Continuous-batching scheduler (pure Python: the simulator runs this class on a virtual clock).

Every step has a token budget (`max_num_batched_tokens`). Running sequences are served first,
in priority order (lower first; 0 unless a request says otherwise), then admission order: a
decode needs one token, a sequence still prefilling takes a chunk of what is left of the
budget. Waiting sequences are then admitted by priority, first-come first-served within a
level, while the budget, `max_num_seqs` and free KV blocks allow (keeping a small watermark of
blocks free for the running sequences to grow into). When blocks run out, the running
sequence of the lowest priority admitted last is preempted, in one of two modes (vLLM's
`preemption_mode`):
- recompute: its blocks are freed and it goes back to the front of its level of the waiting
  queue to be recomputed later (prompt + the tokens it had produced), so it resumes exactly;
- swap: its blocks are copied to the host pool and it waits in the swapped queue; swapped
  sequences resume (copied back) before any new admission, in vLLM V0's order: running, then
  swapped, then waiting. A victim that does not fit the host pool is recomputed instead.

With prefix caching on, a sequence admitted with nothing computed first takes every cached
block its tokens start with (workbench.engine.block_manager) and computes only the rest; blocks
filled by a step are registered for later sequences. A preempted sequence finds its own blocks
again if they have not been evicted meanwhile.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from workbench.engine.block_manager import BlockManager
from workbench.engine.sequence import Sequence, SequenceStatus


class RequestRejected(ValueError):
    """A request that can never be served with this configuration."""


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    eos_token_ids: tuple[int, ...] = ()
    # vLLM's V0 scheduler without chunked prefill: a step runs either new prompts or the
    # decodes, prompts first (decodes wait while prompts are admitted). Off: prompts join the
    # decodes' step (V1, and V0 with chunked prefill).
    prefill_first: bool = False
    # Share of the pool kept free when admitting while others run (vLLM's watermark, 0.01):
    # a prompt admitted into the very last blocks is preempted by the next decode that needs a
    # block, its prefill wasted.
    kv_watermark: float = 0.01
    enable_prefix_caching: bool = False
    preemption_mode: str = "recompute"  # recompute | swap
    # Mistral-style attention window: blocks no query can see any more are released.
    sliding_window: int | None = None


@dataclass(slots=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed for this sequence in this step
    samples: bool  # the chunk reaches the end of the sequence, so a token is sampled
    is_decode: bool


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    cached_tokens: int = 0  # tokens admissions in this step took from the prefix cache
    # Block copies the engine makes before the model runs: out first, since a block swapped
    # out may be handed to another sequence in the same step.
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device, host) blocks
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (host, device) blocks
    num_swapped_out: int = 0  # of `preempted`, sequences swapped rather than recomputed
    num_swapped_in: int = 0

    @property
    def num_prefill_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled if not s.is_decode)

    @property
    def num_decode_seqs(self) -> int:
        return sum(1 for s in self.scheduled if s.is_decode)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[Sequence] = deque()  # preempted by swap, in priority order
        self.watermark_blocks = math.ceil(config.kv_watermark * block_manager.num_blocks)
        self.num_preemptions = 0  # since construction (a server's /metrics counter)

    # -- admission ---------------------------------------------------------------------------
    @property
    def max_request_tokens(self) -> int:
        """The most tokens (prompt + output) one request may hold: what check_request allows,
        max_model_len or the whole KV pool, whichever is smaller. Fixed at construction, so
        other threads may read it (the server sizes defaults and checks prompts with it)."""
        bm = self.block_manager
        return min(self.config.max_model_len, bm.num_blocks * bm.block_size)

    def check_request(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise RequestRejected if a request of this size could never complete. Reads only
        sizes fixed at construction, so the server calls it off the engine thread."""
        limit = self.config.max_model_len
        if num_prompt_tokens >= limit:
            raise RequestRejected(
                f"prompt: {num_prompt_tokens} tokens; must be shorter than max_model_len "
                f"({limit}) to leave room for output")
        if num_prompt_tokens + max_tokens > limit:
            raise RequestRejected(
                f"max_tokens: prompt ({num_prompt_tokens}) + max_tokens ({max_tokens}) = "
                f"{num_prompt_tokens + max_tokens} exceeds max_model_len ({limit})")
        bm = self.block_manager
        need = bm.blocks_for(num_prompt_tokens + max_tokens)
        if need > bm.num_blocks:
            raise RequestRejected(
                f"max_tokens: prompt + max_tokens = {num_prompt_tokens + max_tokens} tokens needs "
                f"{need} KV blocks but the pool has only {bm.num_blocks} "
                f"({bm.num_blocks * bm.block_size} tokens)")

    def add(self, seq: Sequence) -> None:
        if isinstance(seq.priority, bool) or not isinstance(seq.priority, int):
            raise RequestRejected(f"priority: must be an integer (lower runs first, 0 by "
                                  f"default), got {seq.priority!r}")
        self.check_request(seq.num_prompt_tokens, seq.params.max_tokens)
        seq.status = SequenceStatus.WAITING
        self._insert(self.waiting, seq, before_equals=False)

    @staticmethod
    def _insert(queue, seq: Sequence, before_equals: bool) -> None:
        """Put `seq` in a queue kept in priority order (lower first): after the sequences of
        its level (FCFS), or before them (a preempted sequence resumes first)."""
        if not before_equals and (not queue or queue[-1].priority <= seq.priority):
            queue.append(seq)  # the usual case, O(1): a long overloaded queue stays cheap
            return
        for i, other in enumerate(queue):
            if other.priority > seq.priority or (before_equals and
                                                 other.priority == seq.priority):
                queue.insert(i, seq)
                return
        queue.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_swapped(self) -> int:
        return len(self.swapped)

    # -- one step ----------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        bm = self.block_manager
        if self.config.prefill_first and self.waiting and not self.swapped:
            self._admit(out, budget, now)
            if out.scheduled:
                return out

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n < seq.num_uncomputed_tokens and not self.config.enable_chunked_prefill:
                i += 1
                continue
            self._release_out_of_window(seq)
            while not bm.can_allocate(seq, n):
                victim = self.running.pop()  # lowest priority, then latest admitted
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                bm.allocate(seq, n)
                out.scheduled.append(self._scheduled(seq, n))
                budget -= n
                i += 1
                continue
            break  # seq preempted itself: it was the last running sequence

        # Nothing resumes or is admitted while anything is being preempted: the pool is under
        # pressure. Swapped sequences resume before new ones are admitted.
        if not out.preempted:
            budget = self._swap_in(out, budget)
            if not self.swapped:
                self._admit(out, budget, now)
        return out

    def _swap_in(self, out: SchedulerOutput, budget: int) -> int:
        """Resume swapped sequences in order while they fit; the budget left."""
        bm = self.block_manager
        while (self.swapped and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            seq = self.swapped[0]
            n = min(seq.num_uncomputed_tokens, budget)
            if n < seq.num_uncomputed_tokens and not self.config.enable_chunked_prefill:
                break
            if not bm.can_swap_in(seq, n, self.watermark_blocks if self.running else 0):
                break
            self.swapped.popleft()
            out.swap_in.extend(bm.swap_in(seq))
            out.num_swapped_in += 1
            bm.allocate(seq, n)
            seq.status = SequenceStatus.RUNNING
            self._insert(self.running, seq, before_equals=False)  # as a re-admission would
            out.scheduled.append(self._scheduled(seq, n))
            budget -= n
        return budget

    def _admit(self, out: SchedulerOutput, budget: int, now: float) -> int:
        """Admit waiting sequences first-come first-served into `out`; the budget left."""
        bm = self.block_manager
        while (self.waiting and budget > 0
               and len(self.running) < self.config.max_num_seqs):
            seq = self.waiting[0]
            cached = self._take_cached_prefix(seq)
            n = seq.num_uncomputed_tokens
            if n > budget:
                if not self.config.enable_chunked_prefill:
                    self._give_back(seq, cached)
                    break
                n = budget
            # Alone in the pool a sequence can take every block: check_request made sure it
            # fits whole, so there is nobody to preempt and nothing to keep free for.
            if not bm.can_allocate(seq, n, self.watermark_blocks if self.running else 0):
                self._give_back(seq, cached)
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            bm.allocate(seq, n)
            seq.status = SequenceStatus.RUNNING
            if cached is not None:
                bm.count_lookup(seq, cached)
                out.cached_tokens += cached
            if seq.first_scheduled is None:
                seq.first_scheduled = now
                seq.cached_prompt_tokens = min(cached or 0, seq.num_prompt_tokens)
            self._insert(self.running, seq, before_equals=False)
            out.scheduled.append(self._scheduled(seq, n))
            budget -= n
        return budget

    def _take_cached_prefix(self, seq: Sequence) -> int | None:
        """With prefix caching, start a sequence that has nothing computed on the cached blocks
        its tokens begin with; the tokens they hold (None: no lookup was made)."""
        if not self.config.enable_prefix_caching or seq.num_computed_tokens:
            return None
        blocks = self.block_manager.cached_prefix(seq)
        self.block_manager.share(seq, blocks)
        cached = seq.num_computed_tokens
        self._release_out_of_window(seq)  # a long cached prefix may start past the window
        return cached

    def _release_out_of_window(self, seq: Sequence) -> None:
        if self.config.sliding_window is not None:
            self.block_manager.release_out_of_window(seq, self.config.sliding_window)

    def _give_back(self, seq: Sequence, cached: int | None) -> None:
        """Undo `_take_cached_prefix` for a sequence that stays waiting."""
        if cached is not None:
            self.block_manager.free(seq)
            seq.num_computed_tokens = 0

    @staticmethod
    def _scheduled(seq: Sequence, n: int) -> ScheduledSeq:
        samples = seq.num_computed_tokens + n == seq.num_tokens
        is_decode = n == 1 and samples and seq.num_output_tokens > 0
        return ScheduledSeq(seq, n, samples, is_decode)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        seq.preemptions += 1
        self.num_preemptions += 1
        out.preempted.append(seq)
        bm = self.block_manager
        if self.config.preemption_mode == "swap" and bm.can_swap_out(seq):
            out.swap_out.extend(bm.swap_out(seq))
            out.num_swapped_out += 1
            seq.status = SequenceStatus.SWAPPED
            self._insert(self.swapped, seq, before_equals=True)
            return
        bm.free(seq)  # recompute (or the host pool is full: fall back to recompute)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self._insert(self.waiting, seq, before_equals=True)

    # -- after the model ran -----------------------------------------------------------------
    def update(self, out: SchedulerOutput, sampled: list[int | None], now: float) -> list[Sequence]:
        """Record computed tokens and sampled ones; return sequences that finished."""
        finished = []
        for sch, token in zip(out.scheduled, sampled, strict=True):
            seq = sch.seq
            seq.num_computed_tokens += sch.num_tokens
            if self.config.enable_prefix_caching:
                self.block_manager.register_full_blocks(seq)
            if token is None:
                continue
            seq.token_ids.append(token)
            seq.token_times.append(now)
            reason = self.stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason, now, remove=False)
                finished.append(seq)
        if finished:
            self.running = [s for s in self.running if not s.is_finished]
        return finished

    def stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if (not p.ignore_eos and token in self.config.eos_token_ids) or (
            p.stop_token_ids and token in p.stop_token_ids
        ):
            return "stop"
        if seq.num_output_tokens >= p.max_tokens:
            return "length"
        return None

    def finish(self, seq: Sequence, reason: str, now: float, remove: bool = True) -> None:
        if seq.is_finished:
            return
        if remove:
            {SequenceStatus.RUNNING: self.running, SequenceStatus.WAITING: self.waiting,
             SequenceStatus.SWAPPED: self.swapped}[seq.status].remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.finish = now

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.swapped, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None
