"""The trained presets that ship in the package, and the training that made them."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import replace

import pytest
import torch

from tests.hf_reference import hf_greedy
from workbench.models.tiny import (
    TRAINED_DIR,
    TRAINED_PRESETS,
    build_tiny_checkpoint,
    hf_config,
    resolve_model,
    spec_with,
)
from workbench.models.train import (
    Recipe,
    _hf_model,
    perplexity,
    stdlib_files,
    tokenize_files,
    train,
)

PROMPTS = ["import os\n", "def main(", "class Parser:\n    def __init__(self", "for i in range("]


def test_trained_presets_resolve_to_the_shipped_checkpoints():
    for name in TRAINED_PRESETS:
        path = resolve_model(name)
        assert path == TRAINED_DIR / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "training.json",
                  "loss_curve.csv"):
            assert (path / f).is_file(), (name, f)
        assert json.loads((path / "config.json").read_text())["torch_dtype"] == "bfloat16"
        with pytest.raises(ValueError, match="trained, not built"):
            build_tiny_checkpoint(path.parent / "never", name)


def test_shipped_sizes_and_dtype():
    from safetensors import safe_open

    total = 0
    for name in TRAINED_PRESETS:
        weights = TRAINED_DIR / name / "model.safetensors"
        total += weights.stat().st_size
        with safe_open(str(weights), framework="pt") as fh:
            assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}  # noqa: SIM118
    assert total <= 24 * 2**20
    target = json.loads((TRAINED_DIR / "tiny-trained" / "training.json").read_text())
    draft = json.loads((TRAINED_DIR / "tiny-draft" / "training.json").read_text())
    assert 5e6 <= target["parameters"] <= 20e6
    assert 0.5e6 <= draft["parameters"] <= 2e6


@pytest.mark.parametrize("name", TRAINED_PRESETS)
def test_engine_greedy_matches_transformers(name):
    from workbench.engine import EngineConfig, LLMEngine, SamplingParams

    eng = LLMEngine.from_pretrained(name, EngineConfig(dtype="float32", device="cpu",
                                                       block_size=16))
    prompts = [eng.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    n = [24] * len(prompts)
    got = eng.generate(prompts, [SamplingParams(max_tokens=k, temperature=0.0) for k in n])
    assert [o.token_ids for o in got] == hf_greedy(resolve_model(name), prompts, n)


@pytest.fixture(scope="module")
def held_out_ids():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TRAINED_DIR / "tiny-trained"))
    return tokenize_files(tok, stdlib_files()[1])


@pytest.mark.parametrize("name", TRAINED_PRESETS)
def test_held_out_perplexity_is_far_below_random(name, held_out_ids):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    path = TRAINED_DIR / name
    trained = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    random_init = _hf_model(json.loads((path / "config.json").read_text()), seed=0)
    ppl = perplexity(trained, held_out_ids, seq_len=256, windows=8)
    ppl_random = perplexity(random_init, held_out_ids, seq_len=256, windows=8)
    assert ppl < 0.1 * ppl_random, (ppl, ppl_random)
    assert ppl < 0.1 * 4096  # and far below a uniform guess over the vocabulary


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_a_short_training_run_is_reproducible(tmp_path):
    spec = spec_with("tiny-draft", hidden_size=64, num_layers=1, num_heads=1,
                     intermediate_size=128)
    recipe = Recipe(steps=4, batch_size=2, seq_len=32, warmup_steps=1, eval_windows=2,
                    max_files=40)
    a = train("tiny-draft", tmp_path / "a", recipe, progress=False, spec=spec, log=lambda s: None)
    b = train("tiny-draft", tmp_path / "b", recipe, progress=False, spec=spec, log=lambda s: None)
    c = train("tiny-draft", tmp_path / "c", replace(recipe, seed=1),
              progress=False, spec=spec, log=lambda s: None)
    assert a.losses == b.losses != c.losses
    assert _digest(a.path) == _digest(b.path)
    manifest = json.loads((a.path / "training.json").read_text())
    assert manifest["recipe"]["seed"] == 0 and manifest["recipe"]["steps"] == 4
    for key in ("data_rule", "python_version", "torch_version", "train_wall_s",
                "held_out_perplexity", "held_out_perplexity_random_init"):
        assert key in manifest
    with open(a.path / "loss_curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["loss"]) for r in rows] == pytest.approx(a.losses, abs=1e-6)
    assert json.loads((a.path / "config.json").read_text()) == dict(hf_config(spec),
                                                                     torch_dtype="bfloat16")


def test_cli_lists_trained_presets_and_refuses_unknown_ones():
    from typer.testing import CliRunner

    from workbench.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0
    assert any(ln.startswith("tiny-trained") and ln.endswith("trained")
               for ln in res.output.splitlines())
    for args, field in [(["models", "train", "--preset", "tiny"], "preset"),
                        (["models", "train", "--steps", "0"], "steps")]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.output.startswith(f"error: {field}"), res.output


def test_target_predicts_held_out_text_better_than_its_draft(held_out_ids):
    """Speculative decoding needs a draft that is a cheaper, weaker guess of the target."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    ppl = {name: perplexity(AutoModelForCausalLM.from_pretrained(
        str(TRAINED_DIR / name), dtype=torch.float32), held_out_ids, seq_len=256, windows=8)
        for name in TRAINED_PRESETS}
    assert ppl["tiny-trained"] < ppl["tiny-draft"], ppl
