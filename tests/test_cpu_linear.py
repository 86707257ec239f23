"""fp32 projections through oneDNN (workbench.models.cpu_linear): the same results as
F.linear, the same bytes, the same greedy outputs, and the switch that turns it off."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.engine import EngineConfig, LLMEngine, SamplingParams
from workbench.models.cpu_linear import OneDnnLinear, onednn_available, pack_linears
from workbench.models.loader import load_model

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def test_onednn_linear_matches_f_linear():
    torch.manual_seed(0)
    for bias in (False, True):
        linear = nn.Linear(96, 160, bias=bias)
        packed = OneDnnLinear(linear)
        for shape in ((1, 96), (7, 96), (2, 5, 96)):
            x = torch.randn(*shape)
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed.dense_weight(), linear.weight)
        assert packed.stored_bytes() == 96 * 160 * 4


@pytest.mark.parametrize("preset", ["tiny-trained", "tiny-qwen2"])
def test_packing_keeps_bytes_and_leaves_a_tied_lm_head(preset):
    net, cfg, _ = load_model(preset, "float32", "cpu")
    before = net.weight_bytes()
    swapped = pack_linears(net)
    assert swapped == 4 * cfg.num_layers + (0 if cfg.tie_word_embeddings else 1)
    assert net.weight_bytes() == before
    assert isinstance(net.lm_head, nn.Linear) == cfg.tie_word_embeddings
    assert pack_linears(net) == 0  # idempotent
    bf16, _, _ = load_model(preset, "bfloat16", "cpu")
    assert pack_linears(bf16) == 0  # aten already calls oneDNN for 16-bit


@pytest.mark.parametrize("preset", ["tiny-trained", "tiny-qwen2", "tiny-mistral"])
def test_engine_outputs_are_the_same_with_and_without_onednn(preset):
    prompts = [list(range(20 + i, 20 + i + n)) for i, n in enumerate((5, 40, 90, 17))]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    outs = []
    for onednn in (True, False):
        engine = LLMEngine.from_pretrained(preset, EngineConfig(
            dtype="float32", device="cpu", num_kv_blocks=64, max_num_batched_tokens=48,
            onednn_linear=onednn))
        kinds = {type(m).__name__ for m in engine.model.modules()}
        assert ("OneDnnLinear" in kinds) == onednn
        outs.append([o.token_ids for o in engine.generate(prompts, params)])
    assert outs[0] == outs[1]


def test_onednn_linear_must_be_a_bool():
    with pytest.raises(ValueError, match="onednn_linear: must be true or false, got 'yes'"):
        EngineConfig(onednn_linear="yes")
