"""LLMEngine: add requests, step (schedule -> run -> postprocess), generate, stream."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

from workbench.engine.block_manager import BlockManager
from workbench.engine.config import EngineConfig
from workbench.engine.detokenizer import IncrementalDetokenizer
from workbench.engine.kv_cache import allocate_kv_cache, allocate_swap_space, copy_blocks
from workbench.engine.memory_profile import measure_device_memory
from workbench.engine.memory_report import MemoryReport, memory_report
from workbench.engine.outputs import RequestMetrics, RequestOutput
from workbench.engine.runner import ModelRunner
from workbench.engine.sampling_params import SamplingParams, require_utf8
from workbench.engine.scheduler import Scheduler
from workbench.engine.sequence import Sequence
from workbench.engine.sizing import (
    ModelFacts,
    default_kv_budget,
    effective_max_len,
    pool_rule,
    size_engine,
)
from workbench.engine.telemetry import StepRecord, step_record
from workbench.progress import progress_bar


class LLMEngine:
    def __init__(self, model, model_config, tokenizer, config: EngineConfig, model_path=None,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.config = config
        self.model_path = model_path
        self.clock = clock
        if getattr(model, "quantization", "none") != config.quantization:
            # Quantizing here would change the caller's model in place: say so instead.
            raise ValueError(f"quantization: the model is {model.quantization!r} but the config "
                             f"asks for {config.quantization!r}; build with "
                             "LLMEngine.from_pretrained or workbench.models.quantize."
                             "quantize_model first")
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        rule = pool_rule(config)
        # Measured before the KV cache exists; the profiling step runs only where it sizes
        # the pool (memory_utilization on CUDA), the rest is a few cheap reads.
        max_len = effective_max_len(config, model_config.max_position_embeddings)
        memory = measure_device_memory(model, model_config, config, max_len,
                                       measure_activation=rule == "memory_utilization")
        budget = default_kv_budget(memory.available_bytes) if rule == "default" else None
        self.kv_cache_dtype = config.kv_cache_dtype
        # K and V of every layer for one token, quantization scales included.
        self.kv_bytes_per_token = model_config.kv_bytes_per_token(self.dtype.itemsize,
                                                                   self.kv_cache_dtype)
        self._facts = ModelFacts(self.kv_bytes_per_token, model_config.max_position_embeddings,
                                 model_config.eos_token_ids, budget, memory,
                                 model_config.sliding_window)
        self._sizing = sizing = size_engine(config, self._facts)
        self.max_model_len = sizing.scheduler.max_model_len
        self.num_kv_blocks = sizing.num_kv_blocks
        self.kv_caches = allocate_kv_cache(model_config, self.num_kv_blocks, config.block_size,
                                           self.dtype, self.device, self.kv_cache_dtype)
        self.swap_caches = allocate_swap_space(self.kv_caches, sizing.num_swap_blocks)
        self._block_tensors = [layer.block_tensors() for layer in self.kv_caches]
        self.block_manager = BlockManager(self.num_kv_blocks, config.block_size,
                                          sizing.num_swap_blocks)
        self.scheduler = Scheduler(sizing.scheduler, self.block_manager)
        self.runner = ModelRunner(model, self.kv_caches, config.block_size, config.seed,
                                  config.attention_backend)
        self.telemetry: list[StepRecord] = []
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._ids = itertools.count()
        self._live: dict[str, Sequence] = {}

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, config: EngineConfig | None = None,
                        **kwargs) -> LLMEngine:
        """A preset name ("tiny", "small", ...), a local HF checkpoint directory, or a .gguf
        file (whose Q8_0/Q4_0 weights set the engine's quantization: gguf_io.engine_config_for)."""
        from workbench.models.gguf_io import engine_config_for, is_gguf_path, load_gguf
        from workbench.models.loader import load_model, load_tokenizer
        from workbench.models.quantize import quantize_model

        config = config or EngineConfig()
        if is_gguf_path(model):
            net, cfg, tokenizer = load_gguf(model, config.dtype, config.device,
                                            config.max_model_len)
            config, path = engine_config_for(net, config), model
        else:
            net, cfg, path = load_model(model, config.dtype, config.device, config.max_model_len)
            tokenizer = load_tokenizer(path)
        awq = None
        if config.quantization == "int4-awq":
            from workbench.models.awq import calibrate_model

            awq = calibrate_model(net, cfg, tokenizer, config, path)
        if net.quantization == "none":  # a quantized GGUF arrives quantized already
            quantize_model(net, config.quantization, config.quantization_group_size, awq=awq)
        if config.onednn_linear:
            from workbench.models.cpu_linear import pack_linears

            pack_linears(net)
        return cls(net, cfg, tokenizer, config, path, **kwargs)

    def memory_report(self) -> MemoryReport:
        """Where memory went at start: weights, activation peak, other, KV cache, what is left;
        blocks, concurrent tokens and concurrency (vLLM's start-up log, as data)."""
        return memory_report(self.config, self._facts, self._sizing, str(self.device))

    # -- requests ----------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        """The prompt's token ids; ValueError naming `prompt`. Reads only the tokenizer and the
        vocabulary size, so the server calls it off the engine thread."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt: must not be empty")
            if self.tokenizer is None:
                raise ValueError("prompt: this checkpoint has no tokenizer; pass token ids")
            require_utf8("prompt", prompt)
            return list(self.tokenizer(prompt)["input_ids"])
        if not isinstance(prompt, list | tuple) or not prompt:
            raise ValueError("prompt: must be a non-empty string or list of token ids")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt: token ids must be integers in [0, {vocab}), got {bad[:3]}")
        return list(prompt)

    def add_request(self, request_id: str | None, prompt: str | list[int],
                    params: SamplingParams | None = None, priority: int = 0,
                    arrival_time: float | None = None) -> str:
        """Queue a request; bad input raises ValueError naming the field, and changes nothing."""
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._live:
            raise ValueError(f"request_id: {request_id!r} is already in use")
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: must be SamplingParams, got {type(params).__name__}")
        ids = self.encode(prompt)
        seq = Sequence(request_id, ids, len(ids), params,
                       self.clock() if arrival_time is None else arrival_time, priority)
        detok = IncrementalDetokenizer(self.tokenizer, len(ids))  # before any state changes
        self.scheduler.add(seq)  # raises RequestRejected (a ValueError) if it can never fit
        self._live[request_id] = seq
        self._detok[request_id] = detok
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self._live.get(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort", self.clock())
        detok = self._detok[request_id]
        return self._output(seq, [], self._release(detok, seq.params.stop, True))

    def reset_prefix_cache(self) -> int:
        """Forget cached prompt prefixes not in use (vLLM's `reset_prefix_cache`): benchmarks
        call it between passes over the same prompts, which would otherwise find them all
        cached. Returns the number of blocks forgotten."""
        return self.block_manager.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- one step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, postprocess; outputs for requests that got a token."""
        t_start = self.clock()
        w0 = time.perf_counter()
        sched = self.scheduler.schedule(t_start)
        # Before the model runs: blocks swapped out this step may be written by it.
        copy_blocks(self._block_tensors, self.swap_caches, sched.swap_out)
        copy_blocks(self.swap_caches, self._block_tensors, sched.swap_in)
        if sched.is_empty:
            return []
        w1 = time.perf_counter()
        sampled = self.runner.execute(sched.scheduled)
        w2 = time.perf_counter()
        t_sampled = self.clock()
        self.scheduler.update(sched, sampled, t_sampled)
        outputs = [self._postprocess(sch.seq, token, t_sampled)
                   for sch, token in zip(sched.scheduled, sampled, strict=True)
                   if token is not None]
        # t_end includes postprocessing: the simulator's step time stands for the whole step.
        record = step_record(len(self.telemetry), t_start, self.clock(), sched, self.scheduler)
        p = self.runner.profile
        record.phase_schedule_s, record.phase_prepare_s = w1 - w0, p["prepare"]
        record.phase_forward_s, record.phase_attention_s = p["forward"], p["attention"]
        record.phase_sample_s, record.phase_postprocess_s = p["sample"], time.perf_counter() - w2
        self.telemetry.append(record)
        return outputs

    def _postprocess(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        detok = self._detok[seq.request_id]
        delta = detok.update(seq.token_ids, final=seq.is_finished)
        stops = seq.params.stop
        if stops:
            # Only the tail can hold a new match: the delta plus the longest stop string.
            tail_from = max(0, len(detok.text) - len(delta) - max(map(len, stops)) + 1)
            hits = [i for s in stops if (i := detok.text.find(s, tail_from)) != -1]
            if hits:
                detok.text = detok.text[: min(hits)]
                if seq.is_finished:  # the same token also hit max_tokens: the stop string wins
                    seq.finish_reason = "stop"
                else:
                    self.scheduler.finish(seq, "stop", now)
        return self._output(seq, [token], self._release(detok, stops, seq.is_finished))

    @staticmethod
    def _release(detok: IncrementalDetokenizer, stops: list[str] | None, final: bool) -> str:
        """The text not yet streamed, less a tail that could still grow into a stop string:
        streamed text cannot be taken back when the match completes a token later."""
        end = len(detok.text)
        if stops and not final:
            end -= _stop_prefix_len(detok.text, stops)
        delta = detok.text[detok.sent : end]
        detok.sent = max(detok.sent, end)
        return delta

    def _output(self, seq: Sequence, new_ids: list[int], new_text: str) -> RequestOutput:
        if seq.is_finished:
            self._live.pop(seq.request_id, None)
            detok = self._detok.pop(seq.request_id)
        else:
            detok = self._detok[seq.request_id]
        # `text` is what has been streamed so far: a held-back stop prefix is not shown yet.
        return RequestOutput(seq.request_id, seq.prompt_token_ids, seq.output_token_ids, new_ids,
                             detok.text[: detok.sent], new_text, seq.is_finished, seq.finish_reason,
                             RequestMetrics.of(seq), seq.token_times)

    # -- conveniences ------------------------------------------------------------------------
    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Run prompts to completion; outputs come back in prompt order."""
        if isinstance(params, list):
            if len(params) != len(prompts):
                raise ValueError(f"params: {len(params)} given for {len(prompts)} prompts")
            per_prompt = params
        else:
            per_prompt = [params or SamplingParams()] * len(prompts)
        ids = []
        try:
            for prompt, p in zip(prompts, per_prompt, strict=True):
                ids.append(self.add_request(None, prompt, p))
        except ValueError:
            for rid in ids:  # all or nothing: do not leave half a batch queued
                self.abort(rid)
            raise
        wanted = set(ids)
        done: dict[str, RequestOutput] = {}
        bar = progress_bar(len(ids), use_tqdm, "generate")
        while len(done) < len(ids) and self.has_unfinished():
            for out in self.step():
                if out.finished and out.request_id in wanted:
                    done[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [done[rid] for rid in ids]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None,
               request_id: str | None = None) -> Iterator[RequestOutput]:
        """Yield this request's output at every step that produced a token (deltas included).

        Other queued requests advance too; breaking out of the loop aborts this request."""
        rid = self.add_request(request_id, prompt, params)
        finished = False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == rid:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.abort(rid)


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop string (not all of it:
    a whole match has already cut the text)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
