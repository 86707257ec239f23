"""The engine against Hugging Face transformers on the same weights, token for token.

16 concurrent requests of different lengths run through the engine in one batch; each must
match HF greedy `generate` run for that request alone. Configurations cover block size 1 and 16,
chunked prefill with a small token budget, and a KV pool so small that preemption happens.
"""

from __future__ import annotations

import pytest

from tests.hf_reference import hf_greedy, random_workload
from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.engine.telemetry import telemetry_frame
from workbench.models.config import ModelConfig
from workbench.models.tiny import spec_with, write_checkpoint

FAMILIES = {
    # Llama with Llama-3.1-style RoPE scaling, so the scaled frequencies are exercised.
    "llama": spec_with("tiny", extra={"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}),
    # Mistral with a sliding window shorter than the longest sequences.
    "mistral": spec_with("tiny-mistral", extra={"sliding_window": 48}),
    # Qwen2: q/k/v biases and tied embeddings.
    "qwen2": spec_with("tiny-qwen2"),
}

CONFIGS = {
    "block16": dict(block_size=16),
    "block1": dict(block_size=1),
    "chunked": dict(block_size=16, max_num_batched_tokens=32),
    "preempt": dict(block_size=4, num_kv_blocks=48, max_num_batched_tokens=64),
    "swap": dict(block_size=4, num_kv_blocks=48, max_num_batched_tokens=64,
                 preemption_mode="swap"),
    # A host pool of 8 blocks holds some victims, not all: the rest fall back to recompute.
    "swap_full": dict(block_size=4, num_kv_blocks=48, max_num_batched_tokens=64,
                      preemption_mode="swap", swap_blocks=8),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp(request.param), FAMILIES[request.param],
                            seed=11)
    prompts, outputs = random_workload(seed=5, n=16, vocab=FAMILIES[request.param].vocab_size)
    return path, prompts, outputs, hf_greedy(path, prompts, outputs)


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_matches_hf_greedy(family, config_name):
    path, prompts, outputs, refs = family
    config = dict(CONFIGS[config_name])
    if "swap_blocks" in config:  # as bytes, the way a user sizes the host pool
        per_token = ModelConfig.from_dir(path).kv_bytes_per_token(4)
        config["swap_space"] = config.pop("swap_blocks") * config["block_size"] * per_token
    eng = LLMEngine.from_pretrained(
        path, EngineConfig(dtype="float32", device="cpu", max_num_seqs=16, **config))
    params = [SamplingParams(max_tokens=n, temperature=0.0) for n in outputs]
    got = eng.generate(prompts, params)
    for i, (out, ref) in enumerate(zip(got, refs, strict=True)):
        assert out.token_ids == ref, f"request {i} ({len(prompts[i])}-token prompt) diverged"
    steps = telemetry_frame(eng)
    assert steps.num_seqs.max() > 1, "requests were not batched together"
    if config_name in ("preempt", "swap", "swap_full"):
        assert steps.num_preempted.sum() > 0, "the small pool was meant to force preemption"
        assert sum(o.metrics.preemptions for o in got) > 0
        swapped = steps.num_preempted_swap.sum()
        recomputed = steps.num_preempted.sum() - swapped
        assert {"preempt": swapped == 0, "swap": recomputed == 0 and swapped > 0,
                "swap_full": recomputed > 0 and swapped > 0}[config_name], (swapped, recomputed)
        assert steps.num_swapped_in.sum() == swapped  # every swapped sequence came back
    assert eng.block_manager.num_free_blocks == eng.num_kv_blocks
    assert eng.block_manager.num_free_host_blocks == eng.block_manager.num_swap_blocks
    if config_name == "chunked":
        assert steps.num_prefill_tokens.max() <= 32
        assert ((steps.num_prefill_tokens > 0) & (steps.num_decode_seqs > 0)).any(), \
            "chunked prefill should share steps with decodes"


@pytest.mark.parametrize("prefill_first", [False, True])
def test_chunked_prefill_without_chunking_matches(family, prefill_first):
    # prefill_first: vLLM V0's schedule (steps of new prompts only, decodes wait).
    path, prompts, outputs, refs = family
    eng = LLMEngine.from_pretrained(path, EngineConfig(
        dtype="float32", device="cpu", enable_chunked_prefill=False, max_num_seqs=16,
        max_num_batched_tokens=2048, prefill_first=prefill_first))
    got = eng.generate(prompts, [SamplingParams(max_tokens=n, temperature=0) for n in outputs])
    assert [o.token_ids for o in got] == refs
    if prefill_first:
        steps = telemetry_frame(eng)
        assert not ((steps.num_prefill_tokens > 0) & (steps.num_decode_seqs > 0)).any()


def shared_prefix_workload(vocab: int, seed: int = 7):
    """Requests whose prompts share a 40-token prefix (block 16: it ends mid-block 3), then
    diverge into suffixes of 1-30 tokens; two are an exact repeat and a prefix of another."""
    import random

    rng = random.Random(seed)
    prefix = [rng.randrange(4, vocab) for _ in range(40)]
    prompts = [prefix + [rng.randrange(4, vocab) for _ in range(rng.randint(1, 30))]
               for _ in range(10)]
    prompts += [list(prompts[0]), prompts[1][:44]]
    return prompts, [rng.randint(4, 20) for _ in prompts]


@pytest.mark.parametrize("config_name", ["block16", "chunked", "preempt"])
def test_prefix_caching_matches_hf_and_no_caching(family, config_name):
    from workbench.models.config import ModelConfig

    path = family[0]
    prompts, outputs = shared_prefix_workload(ModelConfig.from_dir(path).vocab_size)
    refs = hf_greedy(path, prompts, outputs)
    params = [SamplingParams(max_tokens=n, temperature=0.0) for n in outputs]
    results = {}
    for caching in (True, False):
        # Four at a time, so later requests find the blocks earlier ones computed.
        eng = LLMEngine.from_pretrained(path, EngineConfig(
            dtype="float32", device="cpu", max_num_seqs=4, enable_prefix_caching=caching,
            **CONFIGS[config_name]))
        got = eng.generate(prompts, params)
        assert [o.token_ids for o in got] == refs, f"caching={caching} diverged from HF"
        steps = telemetry_frame(eng)
        results[caching] = (steps, got, eng.block_manager)
    (on, got_on, bm), (off, _, _) = results[True], results[False]
    cached = [o.metrics.cached_prompt_tokens for o in got_on]
    assert on.num_cached_tokens.sum() > 0 and off.num_cached_tokens.sum() == 0
    assert all(c % CONFIGS[config_name]["block_size"] == 0 for c in cached)
    assert all(c < len(p) for c, p in zip(cached, prompts, strict=True))  # >= 1 computed
    assert on.num_prefill_tokens.sum() < off.num_prefill_tokens.sum()
    assert 0 < bm.hit_rate < 1
    assert bm.num_free_blocks == bm.num_blocks  # nothing leaked; cached blocks are free


@pytest.mark.parametrize("preemption_mode", ["recompute", "swap"])
def test_sliding_window_frees_blocks_and_matches_hf(tmp_path, preemption_mode):
    """Mistral with a 48-token window: outputs equal HF's while every decoding sequence holds
    at most the window's blocks (plus the partial ones at its two ends), and the pool is small
    enough that without freeing these requests would preempt each other."""
    from workbench.engine.block_manager import NULL_BLOCK

    path = write_checkpoint(tmp_path, FAMILIES["mistral"], seed=11)
    prompts, outputs = random_workload(seed=9, n=6, vocab=FAMILIES["mistral"].vocab_size,
                                       prompt_range=(40, 120), output_range=(60, 100))
    refs = hf_greedy(path, prompts, outputs)
    window, bs = 48, 4
    eng = LLMEngine.from_pretrained(path, EngineConfig(
        dtype="float32", device="cpu", block_size=bs, num_kv_blocks=100, max_num_seqs=6,
        max_num_batched_tokens=64, preemption_mode=preemption_mode))
    params = [SamplingParams(max_tokens=n, temperature=0.0) for n in outputs]
    ids = [eng.add_request(None, p, sp) for p, sp in zip(prompts, params, strict=True)]
    done, most_live, released = {}, 0, 0
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.token_ids
        for seq in eng.scheduler.running:
            live = sum(b != NULL_BLOCK for b in seq.block_table)
            released += seq.block_table.count(NULL_BLOCK)
            if seq.num_output_tokens > 1:  # decoding: only the window's blocks are held
                most_live = max(most_live, live)
                assert live <= window // bs + 2, (seq.request_id, live)
    assert [done[i] for i in ids] == refs
    assert released > 0 and most_live >= window // bs
    whole = sum(-(-(len(p) + n) // bs) for p, n in zip(prompts, outputs, strict=True))
    assert whole > eng.num_kv_blocks  # without freeing they would not all fit at once
    assert eng.block_manager.num_free_blocks == eng.num_kv_blocks
