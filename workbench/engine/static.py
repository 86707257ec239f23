"""Static (padded) batching baseline on the same model code and KV cache as the engine.

Requests are taken in fixed batches. A batch prefills together, then decodes in lockstep until
its LONGEST member is done: members that finished early keep occupying (and computing) their
slot, and nobody from the queue may join. The batch returns as a whole, so every member's
finish time is the batch's end. That is the head-of-line blocking continuous batching removes.
Prompts are not padded here (the flat varlen prefill computes only real tokens), which makes
this baseline slightly generous.
"""

from __future__ import annotations

from workbench.engine.block_manager import BlockManager
from workbench.engine.outputs import RequestMetrics, RequestOutput
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.scheduler import ScheduledSeq
from workbench.engine.sequence import Sequence, SequenceStatus


class StaticBatcher:
    def __init__(self, engine, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        self.engine = engine  # borrows its model runner and KV cache; do not run both at once
        self.batch_size = batch_size
        self.num_steps = 0  # model forward passes run, to compare with the engine's steps

    def generate(self, prompts,
                 params: SamplingParams | list[SamplingParams]) -> list[RequestOutput]:
        eng = self.engine
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        now = eng.clock()
        seqs = []
        for i, (prompt, p) in enumerate(zip(prompts, per_prompt, strict=True)):
            ids = eng.encode(prompt)
            eng.scheduler.check_request(len(ids), p.max_tokens)
            seqs.append(Sequence(f"static-{i}", ids, len(ids), p, now))
        for start in range(0, len(seqs), self.batch_size):
            self._run_batch(seqs[start : start + self.batch_size])
        tok = eng.tokenizer
        return [RequestOutput(s.request_id, s.prompt_token_ids, s.output_token_ids, [],
                              tok.decode(s.output_token_ids, skip_special_tokens=True)
                              if tok else "", "", True,
                              s.finish_reason, RequestMetrics.of(s), s.token_times) for s in seqs]

    def _run_batch(self, batch: list[Sequence]) -> None:
        eng = self.engine
        bm = BlockManager(eng.num_kv_blocks, eng.config.block_size)
        steps = max(s.params.max_tokens for s in batch)
        # The padded length; a finished member's padding stops at max_model_len (see below).
        longest = min(max(s.num_prompt_tokens for s in batch) + steps, eng.max_model_len)
        if sum(bm.blocks_for(longest) for _ in batch) > bm.num_blocks:
            raise ValueError(f"batch_size: {len(batch)} padded sequences of {longest} tokens do "
                             f"not fit the KV pool of {bm.num_blocks} blocks")
        t = eng.clock()
        for s in batch:
            s.status, s.first_scheduled = SequenceStatus.RUNNING, t
        for step in range(steps):
            scheduled = []
            for s in batch:
                if s.num_tokens > eng.max_model_len:
                    # Padding past the model's positions (the RoPE table ends there) would
                    # crash; a static server reserves max_model_len per slot and stops there.
                    continue
                n = s.num_uncomputed_tokens
                bm.allocate(s, n)
                scheduled.append(ScheduledSeq(s, n, True, step > 0))
            tokens = eng.runner.execute(scheduled)
            self.num_steps += 1
            t = eng.clock()
            for sch, token in zip(scheduled, tokens, strict=True):
                s = sch.seq
                s.num_computed_tokens += sch.num_tokens
                # Finished members still compute (the padding waste) but keep no tokens.
                if s.finish_reason is None:
                    s.token_ids.append(token)
                    s.token_times.append(t)
                    s.finish_reason = eng.scheduler.stop_reason(s, token)
                else:
                    s.token_ids.append(token)  # padding token, dropped below
            if all(s.finish_reason is not None for s in batch):
                break  # like HF generate: a batch ends when every member has stopped
        for s in batch:
            kept = len(s.token_times)
            del s.token_ids[s.num_prompt_tokens + kept :]
            s.finish_reason = s.finish_reason or "length"
            s.status, s.finish = SequenceStatus.FINISHED, t
            bm.free(s)
