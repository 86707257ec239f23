"""Turns a scheduled step into tensors, runs the model over the paged cache, samples tokens.

Layout of the flat batch: all single-token queries first (decodes, attended in one batched
call), then multi-token prefill chunks. Logits are computed only for rows that sample.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from workbench.engine.sampler import sample
from workbench.engine.scheduler import ScheduledSeq
from workbench.models.attention import AttentionMetadata, PrefillChunk
from workbench.models.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_caches, block_size: int, seed: int,
                 attention_backend: str = "sdpa"):
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.window = model.config.sliding_window
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.profile: dict[str, float] = {}
        self.decode_kernel = None
        if attention_backend == "cpu-kernel":
            from workbench.models import paged_attention_cpu

            if self.device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
                raise ValueError("attention_backend: cpu-kernel needs a float32 model on CPU; "
                                 "use attention_backend='sdpa'")
            paged_attention_cpu.load_kernel()  # compile now: start-up pays, not a request
            self.decode_kernel = paged_attention_cpu.decode_attention

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
        hidden states that sample, the scheduled entries they belong to).

        Positions and cache slots come from numpy array ops over the step's block tables (one
        row per sequence), not from a Python loop per token. Measured against that loop
        (tests/test_runner_inputs.py keeps it as the reference): 0.43 vs 0.87 ms for a step
        of ~1,400 tokens, 0.06 vs 0.04 ms for a single decode; either is ~1% of a `small`
        step or less."""
        decodes = [i for i, s in enumerate(scheduled) if s.num_tokens == 1]
        prefills = [i for i, s in enumerate(scheduled) if s.num_tokens > 1]
        order = decodes + prefills
        seqs = [scheduled[i].seq for i in order]
        bs = self.block_size

        count = np.fromiter((scheduled[i].num_tokens for i in order), np.int64, len(order))
        start = np.fromiter((s.num_computed_tokens for s in seqs), np.int64, len(order))
        end = start + count  # context length after this step
        first = np.cumsum(count) - count  # each sequence's first row in the flat batch
        tables = self._block_tables(seqs, -(-int(end.max(initial=0)) // bs))
        owner = np.repeat(np.arange(len(order)), count)  # the sequence of each flat row
        positions = np.arange(int(count.sum())) - first[owner] + start[owner]
        slots = tables[owner, positions // bs] * bs + positions % bs

        input_ids: list[int] = []
        for seq, a, b in zip(seqs, start.tolist(), end.tolist(), strict=True):
            input_ids += seq.token_ids[a:b]
        row_of = dict(zip(order, (first + count - 1).tolist(), strict=True))
        sample_entries = [i for i in order if scheduled[i].samples]
        sample_rows = [row_of[i] for i in sample_entries]

        num_decode = len(decodes)
        chunks = [self._chunk(int(first[k]), int(count[k]), int(start[k]), tables[k])
                  for k in range(num_decode, len(order))]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(dev),
            num_decode=num_decode,
            decode_block_tables=None,
            decode_mask=None,
            prefills=chunks,
        )
        if num_decode:
            self._decode_metadata(meta, tables[:num_decode], end[:num_decode])

        return (torch.tensor(input_ids, device=dev), torch.from_numpy(positions).to(dev), meta,
                torch.tensor(sample_rows, device=dev, dtype=torch.long), sample_entries)

    @staticmethod
    def _block_tables(seqs, width: int) -> np.ndarray:
        """[len(seqs), width] block ids, zero-padded. Entries a sliding window released (-1)
        read block 0 instead: new tokens never land there, and the window mask hides them."""
        tables = np.zeros((len(seqs), width), np.int64)
        for row, seq in enumerate(seqs):
            ids = seq.block_table[:width]
            tables[row, : len(ids)] = ids
        return np.maximum(tables, 0, out=tables)

    def _decode_metadata(self, meta: AttentionMetadata, tables: np.ndarray,
                         ctx: np.ndarray) -> None:
        """Block tables cut to the longest context, and a mask hiding the padding (and, with
        a sliding window, what lies outside it); for the C++ kernel, the context lengths and
        first attended positions instead of the mask."""
        bs = self.block_size
        width = -(-int(ctx.max()) // bs)
        dev = self.device
        meta.decode_block_tables = torch.from_numpy(
            np.ascontiguousarray(tables[:, :width])).to(dev)
        if self.decode_kernel is not None:
            first = (np.maximum(ctx - self.window, 0) if self.window is not None
                     else np.zeros_like(ctx))
            meta.decode_kernel = self.decode_kernel
            meta.decode_context = (torch.from_numpy(ctx.copy()), torch.from_numpy(first))
            return
        key_pos = torch.arange(width * bs, device=dev)
        ctx_t = torch.from_numpy(ctx).to(dev).unsqueeze(1)
        mask = key_pos < ctx_t
        if self.window is not None:
            mask &= key_pos >= ctx_t - self.window  # query sits at position ctx - 1
        meta.decode_mask = mask[:, None, None, :]

    def _chunk(self, flat_start: int, n: int, start: int, table: np.ndarray) -> PrefillChunk:
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
            blocks = torch.from_numpy(table[: -(-ctx // self.block_size)].copy()).to(dev)
        return PrefillChunk(flat_start, n, ctx, blocks, mask)
