"""Turns a scheduled step into tensors, runs the model over the paged cache, samples tokens.

Layout of the flat batch: all single-token queries first (decodes, attended in one batched
call), then multi-token prefill chunks. Logits are computed only for rows that sample.
"""

from __future__ import annotations

import time

import torch

from workbench.engine.sampler import sample
from workbench.engine.scheduler import ScheduledSeq
from workbench.models.attention import AttentionMetadata, PrefillChunk
from workbench.models.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_caches, block_size: int, seed: int):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.window = model.config.sliding_window
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.profile: dict[str, float] = {}

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSeq]) -> list[int | None]:
        """Run one step; return the sampled token per scheduled entry (None: mid-prefill).
        `self.profile` then holds the step's prepare / forward / attention / sample seconds."""
        sample_entries, logits = self.logits(scheduled)
        t0 = time.perf_counter()
        result: list[int | None] = [None] * len(scheduled)
        if sample_entries:
            seqs = [scheduled[i].seq for i in sample_entries]
            tokens = sample(logits, [s.params for s in seqs], [s.num_tokens for s in seqs],
                            self.generator)
            for i, tok in zip(sample_entries, tokens, strict=True):
                result[i] = tok
        self.profile["sample"] = time.perf_counter() - t0
        return result

    @torch.inference_mode()
    def logits(self, scheduled: list[ScheduledSeq]) -> tuple[list[int], torch.Tensor | None]:
        """Run the model over one step's batch, writing its K/V into the cache; return the
        scheduled entries that sample and their next-token logits (one row each, fp32)."""
        t0 = time.perf_counter()
        input_ids, positions, meta, sample_rows, sample_entries = self.prepare(scheduled)
        t1 = time.perf_counter()
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        logits = (self.model.compute_logits(hidden[sample_rows]) if sample_entries else None)
        if logits is not None and logits.device.type != "cpu":
            torch.cuda.synchronize(logits.device)  # the forward's time, not the next .tolist()
        self.profile = {"prepare": t1 - t0, "forward": time.perf_counter() - t1,
                        "attention": meta.attention_s}
        return sample_entries, logits

    def prepare(self, scheduled: list[ScheduledSeq]):
        """The step's model inputs: (input_ids, positions, attention metadata, rows of the
        hidden states that sample, the scheduled entries they belong to)."""
        decodes = [i for i, s in enumerate(scheduled) if s.num_tokens == 1]
        prefills = [i for i, s in enumerate(scheduled) if s.num_tokens > 1]
        order = decodes + prefills

        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sample_entries: list[int] = []
        chunks: list[PrefillChunk] = []
        bs = self.block_size
        for i in order:
            sch = scheduled[i]
            seq, n = sch.seq, sch.num_tokens
            start = seq.num_computed_tokens
            table = seq.block_table
            if n > 1:
                chunks.append(self._chunk(len(input_ids), n, start, table))
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            if sch.samples:
                sample_rows.append(len(input_ids) - 1)
                sample_entries.append(i)

        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, device=dev),
            num_decode=len(decodes),
            decode_block_tables=None,
            decode_mask=None,
            prefills=chunks,
        )
        if decodes:
            self._decode_metadata(meta, [scheduled[i].seq for i in decodes])

        return (torch.tensor(input_ids, device=dev), torch.tensor(positions, device=dev), meta,
                torch.tensor(sample_rows, device=dev, dtype=torch.long), sample_entries)

    def _decode_metadata(self, meta: AttentionMetadata, seqs) -> None:
        """Block tables padded to the longest context, and a mask hiding the padding."""
        bs = self.block_size
        ctx = [s.num_computed_tokens + 1 for s in seqs]
        width = -(-max(ctx) // bs)
        tables = [s.block_table[:width] + [0] * (width - len(s.block_table[:width]))
                  for s in seqs]
        dev = self.device
        # Released (out-of-window) entries read block 0 instead: the window mask hides them.
        meta.decode_block_tables = torch.tensor(tables, device=dev).clamp_(min=0)
        key_pos = torch.arange(width * bs, device=dev)
        ctx_t = torch.tensor(ctx, device=dev).unsqueeze(1)
        mask = key_pos < ctx_t
        if self.window is not None:
            mask &= key_pos >= ctx_t - self.window  # query sits at position ctx - 1
        meta.decode_mask = mask[:, None, None, :]

    def _chunk(self, flat_start: int, n: int, start: int, table: list[int]) -> PrefillChunk:
        ctx = start + n
        window_bites = self.window is not None and ctx > self.window
        if start == 0 and not window_bites:
            return PrefillChunk(flat_start, n, ctx, None, None)  # plain causal over itself
        dev = self.device
        q_pos = torch.arange(start, ctx, device=dev).unsqueeze(1)
        k_pos = torch.arange(ctx, device=dev).unsqueeze(0)
        mask = k_pos <= q_pos
        if self.window is not None:
            mask &= k_pos > q_pos - self.window
        blocks = None
        if start > 0:
            blocks = torch.tensor(table[: -(-ctx // self.block_size)], device=dev).clamp_(min=0)
        return PrefillChunk(flat_start, n, ctx, blocks, mask)
