"""The LLMEngine API: sampling, streaming, stop conditions, telemetry, bad input."""

from __future__ import annotations

import pytest
import torch

from tests.hf_reference import random_workload
from workbench.engine import RequestRejected, SamplingParams, telemetry_frame
from workbench.engine.static import StaticBatcher
from workbench.engine.telemetry import requests_frame


def test_seeded_sampling_is_reproducible_across_batches(tiny_engine_factory):
    eng = tiny_engine_factory()
    p = SamplingParams(max_tokens=24, temperature=0.9, top_k=50, top_p=0.95, seed=1234)
    alone = eng.generate(["The quick brown fox"], p)[0].token_ids
    prompts, _ = random_workload(3, 6, 4096)
    crowd = eng.generate(["The quick brown fox", *prompts],
                         [p] + [SamplingParams(max_tokens=30, temperature=1.0)] * 6)
    assert crowd[0].token_ids == alone
    other = eng.generate(["The quick brown fox"],
                         SamplingParams(max_tokens=24, temperature=0.9, seed=99))[0].token_ids
    assert other != alone


def test_seeded_sampling_survives_preemption(tiny_engine_factory):
    prompts, _ = random_workload(8, 8, 4096, prompt_range=(20, 40))
    params = [SamplingParams(max_tokens=40, temperature=1.0, seed=i) for i in range(8)]
    roomy = tiny_engine_factory(block_size=4).generate(prompts, params)
    tight_eng = tiny_engine_factory(block_size=4, num_kv_blocks=40)
    tight = tight_eng.generate(prompts, params)
    assert telemetry_frame(tight_eng).num_preempted.sum() > 0
    assert [o.token_ids for o in tight] == [o.token_ids for o in roomy]


def test_top_k_1_is_greedy(tiny_engine_factory):
    eng = tiny_engine_factory()
    greedy = eng.generate(["abc"], SamplingParams(max_tokens=10, temperature=0))[0].token_ids
    topk1 = eng.generate(["abc"], SamplingParams(max_tokens=10, temperature=2.0, top_k=1))[0]
    assert topk1.token_ids == greedy


@pytest.mark.parametrize("temperature", [1e-39, 1e-30, 1e-6])
def test_tiny_temperature_is_greedy(tiny_engine_factory, temperature):
    # 1e-39 is a float32 denormal: logits / T overflowed to inf, softmax gave NaN, token 0 won.
    eng = tiny_engine_factory()
    greedy = eng.generate(["abc", "def main():"], SamplingParams(max_tokens=10, temperature=0))
    cold = eng.generate(["abc", "def main():"],
                        SamplingParams(max_tokens=10, temperature=temperature))
    assert [o.token_ids for o in cold] == [o.token_ids for o in greedy]


def test_streaming_deltas_add_up(tiny_engine_factory):
    eng = tiny_engine_factory()
    chunks = list(eng.stream("héllo wörld 🎉", SamplingParams(max_tokens=20, temperature=0)))
    assert len(chunks) == 20 and chunks[-1].finished and not chunks[0].finished
    assert sum((c.new_token_ids for c in chunks), []) == chunks[-1].token_ids
    assert "".join(c.new_text for c in chunks) == chunks[-1].text
    full = eng.tokenizer.decode(chunks[-1].token_ids, skip_special_tokens=True)
    assert chunks[-1].text == full


def test_stop_strings_and_stop_tokens(tiny_engine_factory):
    eng = tiny_engine_factory()
    base = eng.generate(["def main():"], SamplingParams(max_tokens=30, temperature=0))[0]
    stop = base.text[10:14]
    cut = eng.generate(["def main():"], SamplingParams(max_tokens=30, temperature=0,
                                                        stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == base.text[: base.text.index(stop)]
    tok = base.token_ids[5]
    by_id = eng.generate(["def main():"], SamplingParams(max_tokens=30, temperature=0,
                                                          stop_token_ids=[tok]))[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == base.token_ids[
        : base.token_ids.index(tok) + 1]


def test_streamed_text_never_shows_a_stop_string_that_is_later_cut(tiny_engine_factory):
    eng = tiny_engine_factory()
    cases = 0
    for prompt in ["def main():", "The quick brown fox", "import os\n"]:
        base = eng.generate([prompt], SamplingParams(max_tokens=30, temperature=0))[0].text
        # Stops starting at several offsets: most span two or more tokens, so their first
        # characters arrive a step before the match completes.
        for start in (3, 10, 18):
            for stop in {base[start : start + 6], base[start : start + 3]}:
                if not stop.strip() or base.index(stop) != start:
                    continue
                params = SamplingParams(max_tokens=30, temperature=0, stop=[stop, "@@never@@"])
                final = eng.generate([prompt], params)[0]
                assert final.finish_reason == "stop" and final.text == base[:start]
                streamed = ""
                for chunk in eng.stream(prompt, params):
                    streamed += chunk.new_text
                    assert final.text.startswith(streamed), (prompt, stop, streamed)
                    assert chunk.text == streamed  # `text` is what has been streamed so far
                assert streamed == final.text, (prompt, stop)
                cases += 1
    assert cases >= 8


def test_held_back_text_is_flushed_at_the_end(tiny_engine_factory):
    eng = tiny_engine_factory()
    base = eng.generate(["def main():"], SamplingParams(max_tokens=12, temperature=0))[0].text
    # Stops that start with every character of the text but never complete: the last
    # character is always held back, until the request ends by length or by abort.
    params = SamplingParams(max_tokens=12, temperature=0, stop=[c + "\x00" for c in set(base)])
    chunks = list(eng.stream("def main():", params))
    assert chunks[-1].finish_reason == "length"
    assert "".join(c.new_text for c in chunks) == base == chunks[-1].text
    rid = eng.add_request(None, "def main():", params)
    streamed = "".join(o.new_text for _ in range(4) for o in eng.step() if o.request_id == rid)
    out = eng.abort(rid)
    assert out.new_text  # the held character
    assert streamed + out.new_text == out.text == eng.tokenizer.decode(
        out.token_ids, skip_special_tokens=True)


def test_abort_frees_blocks(tiny_engine_factory):
    eng = tiny_engine_factory()
    eng.add_request("a", "one two three", SamplingParams(max_tokens=50, temperature=0))
    eng.add_request("b", "four five", SamplingParams(max_tokens=5, temperature=0))
    eng.step()
    out = eng.abort("a")
    assert out.finished and out.finish_reason == "abort"
    while eng.has_unfinished():
        eng.step()
    assert eng.block_manager.num_free_blocks == eng.block_manager.num_blocks


def test_telemetry_and_request_records(tiny_engine_factory):
    eng = tiny_engine_factory(max_num_batched_tokens=64)
    prompts, outputs = random_workload(4, 10, 4096)
    outs = eng.generate(prompts, [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
                                  for n in outputs])
    steps = telemetry_frame(eng)
    assert steps.num_prefill_tokens.sum() == sum(map(len, prompts))
    assert steps.num_decode_seqs.sum() == sum(outputs) - len(outputs)
    assert (steps.kv_blocks_used <= steps.kv_blocks_total).all()
    assert (steps.t_end >= steps.t_start).all() and steps.step.is_monotonic_increasing
    reqs = requests_frame([o.metrics for o in outs])
    assert (reqs.output_tokens == outputs).all()
    assert (reqs.ttft > 0).all() and (reqs.e2e >= reqs.ttft).all()
    assert (reqs.first_scheduled >= reqs.arrival).all()
    for o in outs:
        m = o.metrics
        assert m.tpot == pytest.approx((m.e2e - m.ttft) / (m.output_tokens - 1))


def test_static_baseline_same_tokens_and_head_of_line_blocking(tiny_engine_factory):
    eng = tiny_engine_factory()
    prompts, outputs = random_workload(6, 8, 4096)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in outputs]
    cont = eng.generate(prompts, params)
    static = StaticBatcher(eng, batch_size=4).generate(prompts, params)
    assert [o.token_ids for o in static] == [o.token_ids for o in cont]
    finishes = [o.metrics.finish for o in static]
    assert len(set(finishes[:4])) == 1 and len(set(finishes[4:])) == 1  # batches return whole
    assert min(finishes[4:]) > max(finishes[:4])


def test_static_padding_stops_at_max_model_len(tiny_path):
    # The 50-token prompt finishes after 4 tokens but keeps computing padding while its
    # batch-mate runs 40 steps: 50 + 40 positions exceed max_model_len (64, the RoPE table).
    from workbench.engine import EngineConfig, LLMEngine

    eng = LLMEngine.from_pretrained(tiny_path, EngineConfig(dtype="float32", device="cpu",
                                                            max_model_len=64))
    prompts = [list(range(100, 150)), list(range(200, 205))]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (4, 40)]
    static = StaticBatcher(eng, batch_size=2).generate(prompts, params)
    assert [o.token_ids for o in static] == [o.token_ids for o in eng.generate(prompts, params)]
    assert [len(o.token_ids) for o in static] == [4, 40]


def test_continuous_batching_needs_fewer_steps_than_static(tiny_engine_factory):
    # Each static batch of 4 runs as long as its longest member (64 tokens) while three slots
    # idle after 4; continuous batching refills those slots. Counted in model steps (a
    # virtual measure), not wall time.
    eng = tiny_engine_factory(max_num_seqs=4)
    prompts, _ = random_workload(9, 8, 4096, prompt_range=(8, 24))
    outputs = [64, 4, 4, 4, 4, 4, 4, 64]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in outputs]
    cont = eng.generate(prompts, params)
    batcher = StaticBatcher(eng, batch_size=4)
    static = batcher.generate(prompts, params)
    assert [o.token_ids for o in static] == [o.token_ids for o in cont]
    assert batcher.num_steps == 64 + 64  # two batches, each as long as its longest member
    useful = sum(outputs)
    cont_steps = len(eng.telemetry)
    # The last long request starts once two rounds of short ones (4 steps each) are done.
    assert cont_steps <= 8 + 64
    assert useful / cont_steps > 1.5 * useful / batcher.num_steps


# -- bad input: a clear ValueError naming the field; the engine keeps serving -----------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(seed=1 << 63), "seed"),
    (dict(seed=True), "seed"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-5), "top_k"),
])
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_a_top_p_below_float32_keeps_the_top_token():
    from workbench.engine.sampler import sample

    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    params = [SamplingParams(temperature=1.0, top_p=1e-320, seed=s) for s in (1, 2)]
    assert sample(logits, params, [0, 0], torch.Generator().manual_seed(0)) == [1, 0]


def test_bad_requests_do_not_disturb_others(tiny_engine_factory):
    eng = tiny_engine_factory(max_model_len=128)
    eng.add_request("good", "a fine prompt", SamplingParams(max_tokens=8, temperature=0))
    with pytest.raises(ValueError, match="prompt"):
        eng.add_request("empty", "", SamplingParams())
    with pytest.raises(ValueError, match="prompt"):
        eng.add_request("empty-ids", [], SamplingParams())
    with pytest.raises(RequestRejected, match="max_model_len"):
        eng.add_request("long", list(range(3, 200)), SamplingParams())
    with pytest.raises(ValueError, match="prompt: token ids"):
        eng.add_request("oov", [1, 2, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="request_id"):
        eng.add_request("good", "again", SamplingParams())
    done = []
    while eng.has_unfinished():
        done += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in done] == ["good"] and len(done[0].token_ids) == 8


def test_generate_is_all_or_nothing(tiny_engine_factory):
    eng = tiny_engine_factory(max_model_len=64)
    with pytest.raises(ValueError, match="prompt"):
        eng.generate(["fine", ""], SamplingParams(max_tokens=4))
    assert not eng.has_unfinished()


def test_unknown_model_and_unsupported_architecture(tmp_path):
    import json

    from workbench.engine import LLMEngine
    from workbench.models.config import UnsupportedModelError
    from workbench.models.tiny import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="model"):
        LLMEngine.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        LLMEngine.from_pretrained(tmp_path)
    assert issubclass(ModelNotFoundError, ValueError)
    assert issubclass(UnsupportedModelError, ValueError)


def test_bad_engine_config():
    from workbench.engine import EngineConfig

    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="int3")
    with pytest.raises(ValueError, match="unknown field.*max_num_seq"):
        EngineConfig.from_dict({"max_num_seq": 4})
    with pytest.raises(ValueError, match="preemption_mode: must be one of recompute, swap"):
        EngineConfig(preemption_mode="offload")
    with pytest.raises(ValueError, match="swap_space: must be an integer >= 1"):
        EngineConfig(preemption_mode="swap", swap_space=-1)


def test_reset_prefix_cache_makes_the_next_pass_compute_its_prompts(tiny_engine_factory):
    engine = tiny_engine_factory(num_kv_blocks=200)
    prompts = [list(range(5 + i, 70 + i)) for i in range(4)]
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)

    def prefill_and_cached():
        first = len(engine.telemetry)
        out = [o.token_ids for o in engine.generate(prompts, params)]
        steps = engine.telemetry[first:]
        return (out, sum(s.num_prefill_tokens for s in steps),
                sum(s.num_cached_tokens for s in steps))

    out1, computed1, cached1 = prefill_and_cached()
    out2, computed2, cached2 = prefill_and_cached()
    assert cached1 == 0 and cached2 > 0 and computed2 < computed1  # the cache served pass 2
    assert engine.reset_prefix_cache() > 0
    assert engine.block_manager.num_cached_blocks == 0
    out3, computed3, cached3 = prefill_and_cached()
    assert (out3, computed3, cached3) == (out1, computed1, 0)
    assert out2 == out1


def test_step_profile_phases_add_up_to_the_step(tiny_engine_factory):
    from workbench.bench import decode_profile
    from workbench.engine.telemetry import PHASES, phase_profile

    engine = tiny_engine_factory(num_kv_blocks=200)
    prompts, _ = random_workload(3, 6, engine.model_config.vocab_size)
    engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    for r in engine.telemetry:
        phases = [getattr(r, f"phase_{p}_s") for p in PHASES]
        assert all(v >= 0 for v in phases)
        assert r.phase_attention_s <= r.phase_forward_s
        covered = sum(phases) - r.phase_attention_s  # attention is inside the forward
        assert covered <= (r.t_end - r.t_start) + 1e-4
    profile = phase_profile(engine.telemetry)
    assert profile["forward"] > 0 and profile["linear & other"] >= 0
    assert set(PHASES) <= set(profile) and profile["step"] >= profile["forward"]
    assert decode_profile(engine, 4, prompt_tokens=8, n=6)["forward"] > 0
    frame = telemetry_frame(engine)
    assert frame["phase_forward_s"].dtype == "float64"
