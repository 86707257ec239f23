"""The LLMEngine API: sampling, streaming, stop conditions, telemetry, bad input."""

from __future__ import annotations

import pytest

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


# -- bad input: a clear ValueError naming the field; the engine keeps serving -----------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-5), "top_k"),
])
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


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
