"""The HTTP driver against a foreign server: a stand-in for llama.cpp's on 127.0.0.1 (text
prompts only, no usage in streams, streams cut off with [DONE], ignore_eos ignored)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.llama_cpp_like_server import LlamaCppLikeServer
from workbench.cli import app
from workbench.traffic import load_run
from workbench.traffic.http_driver import CUT_OFF, SHORT
from workbench.traffic.run_scenario import run_scenario
from workbench.traffic.scenario import parse_scenario


def scenario(url: str, n: int = 6, rate: float = 50.0, **target):
    return {"name": "llama", "seed": 1,
            "target": {"kind": "http", "url": url, "model": "tiny-f32.gguf", **target},
            "arrival": {"kind": "constant", "rate": rate},
            "prompt_tokens": {"dist": "fixed", "value": 16},
            "output_tokens": {"dist": "fixed", "value": 8}, "num_requests": n}


def run(data: dict, tmp_path, notes: list | None = None):
    path = run_scenario(parse_scenario(data), tmp_path, progress=False,
                        log=(notes if notes is not None else []).append)
    return load_run(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from workbench.models.loader import load_tokenizer

    return load_tokenizer(tiny_path)


def test_a_foreign_server_gets_text_prompts_by_default(tmp_path):
    notes: list[str] = []
    with LlamaCppLikeServer() as srv:
        r = run(scenario(srv.url, tokenizer="tiny"), tmp_path, notes)
    assert len(srv.bodies) == 6 and all(isinstance(b["prompt"], str) for b in srv.bodies)
    assert (r.requests.finish_reason == "length").all(), list(r.requests.error)
    assert r.manifest["target"]["prompt_format"] == "text"
    assert any("not a workbench server" in n for n in notes), notes


def test_text_prompts_without_a_tokenizer_are_a_user_error(tmp_path):
    with LlamaCppLikeServer() as srv:
        f = tmp_path / "s.json"
        f.write_text(__import__("json").dumps(scenario(srv.url)))
        res = CliRunner().invoke(app, ["run", str(f), "--out", str(tmp_path / "runs"),
                                       "--no-progress"])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: target.tokenizer"), res.output
    assert srv.bodies == []  # refused before a single request was sent


def test_streams_cut_off_by_the_server_are_errors(tmp_path):
    # llama.cpp's --interrupt_requests: each new request ends the running stream with [DONE]
    with LlamaCppLikeServer(interrupt_requests=True, token_delay_s=0.05) as srv:
        r = run(scenario(srv.url, rate=5.0, tokenizer="tiny"), tmp_path)
    cut = r.requests[r.requests.error.fillna("").str.startswith(CUT_OFF)]
    assert srv.cut >= 1 and len(cut) == srv.cut
    assert (cut.finish_reason == "error").all()
    assert r.manifest["summary"]["failed"] == srv.cut
    assert any("without a finish_reason" in w for w in r.manifest["warnings"])


def test_a_server_that_ignores_ignore_eos_is_detected(tmp_path):
    with LlamaCppLikeServer(eos_after={1: 3, 4: 0}) as srv:
        r = run(scenario(srv.url, tokenizer="tiny"), tmp_path)
    short = r.requests.set_index("request_id").loc[["1", "4"]]
    assert (short.finish_reason == "error").all()
    assert short.error.str.startswith(SHORT).all(), list(short.error)
    assert r.manifest["summary"]["completed"] == 4 and r.manifest["summary"]["failed"] == 2
    assert any("ignores ignore_eos" in w for w in r.manifest["warnings"])


def test_without_usage_outputs_are_retokenized_and_empty_chunks_are_no_tokens(tmp_path,
                                                                             tokenizer):
    with LlamaCppLikeServer(split_every=3) as srv:  # 8 tokens: 2 stream as empty chunks
        r = run(scenario(srv.url, tokenizer="tiny"), tmp_path)
    assert (r.requests.finish_reason == "length").all(), list(r.requests.error)
    for _, req in r.requests.iterrows():
        text = srv.texts[int(req.request_id)]
        assert req.output_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert req.output_tokens_source == "retokenized"
        assert len(req.token_times) == 6  # one per chunk that carried text


def test_chunk_counts_without_usage_or_tokenizer_are_marked_approximate(tmp_path):
    with LlamaCppLikeServer(accept_token_ids=True) as srv:
        r = run(scenario(srv.url, prompt_format="tokens"), tmp_path)
    assert all(isinstance(b["prompt"], list) for b in srv.bodies)
    assert (r.requests.output_tokens_source == "chunks").all()
    assert (r.requests.output_tokens == 8).all()
    assert "approximate" in r.manifest["target"]["output_token_count"]
    assert any("approximate" in w for w in r.manifest["warnings"])


def test_token_prompts_a_server_refuses_are_failures_with_a_hint(tmp_path):
    with LlamaCppLikeServer() as srv:
        r = run(scenario(srv.url, prompt_format="tokens"), tmp_path)
    assert (r.requests.finish_reason == "error").all()
    assert r.requests.error.str.startswith("HTTP 500").all()
    assert r.manifest["summary"]["completed"] == 0
    assert any("prompt_format: text" in w for w in r.manifest["warnings"])


def test_extra_body_fields_reach_the_server(tmp_path):
    # how a benchmark keeps EOS out on llama.cpp, which ignores ignore_eos but honours logit_bias
    with LlamaCppLikeServer() as srv:
        run(scenario(srv.url, tokenizer="tiny", extra_body={"logit_bias": {"2": -1e9}}), tmp_path)
    assert len(srv.bodies) == 6
    assert all(b["logit_bias"] == {"2": -1e9} and b["ignore_eos"] for b in srv.bodies)


def test_outputs_counted_one_token_per_chunk_when_the_scenario_says_so(tmp_path):
    # re-tokenized text can miscount (BPE merges the pieces differently); a server that streams
    # one chunk per token is counted exactly by its chunks
    with LlamaCppLikeServer() as srv:
        r = run(scenario(srv.url, tokenizer="tiny", output_tokens_from="chunks"), tmp_path)
    assert (r.requests.output_tokens == 8).all()
    assert (r.requests.output_tokens_source == "chunk per token").all()
    assert r.manifest["target"]["output_token_count"] == "usage, else one token per streamed chunk"
    assert not any("approximate" in w for w in r.manifest["warnings"])
