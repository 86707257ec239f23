"""Activation-aware weight quantization (AWQ; Lin et al., 2023) of int4 layers, searched on CPU.

A few input channels carry much larger activations than the rest; their weights matter more.
AWQ scales those weight columns up by s before quantizing (so they lose less to rounding) and
divides the activations by s (here: a per-input-channel multiply in Int4Linear; AutoAWQ folds
it into the preceding norm where it can, which GQA's o_proj does not allow).

Calibration: windows of text from the training split of the stdlib corpus the embedded models
were trained on (never a held-out file), run through the engine unquantized (prefill only);
forward pre-hooks keep each projection's inputs.

Search, per projection (AutoAWQ's auto_scale and auto_clip, each judged on the projection's own
output rather than its whole block):
1. s = mean|x|^alpha per input channel, normalised by sqrt(max(s) min(s)), alpha on a 20-point
   grid in [0, 1); the alpha with the least ||x W^T - (x/s) Q(W s)^T||^2 wins. alpha = 0 is
   plain int4, so on the calibration rows AWQ is never worse than plain int4.
2. Clipping: per output channel and group, the largest |w| kept is shrunk by 0, 2.5, ... 47.5%;
   the one with the least error of that group's share of the output wins (no clipping is a
   candidate too).
"""

from __future__ import annotations

import random

import torch
from torch import nn

from workbench.models.quantize import check_group_divides, projections

SCALE_GRID = 20
CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5
SEARCH_ROWS = 512  # calibration rows each projection's search is judged on


def calibration_prompts(tokenizer, num_sequences: int = 8, seq_len: int = 256,
                        seed: int = 0) -> list[list[int]]:
    """`num_sequences` windows of `seq_len` tokens from seeded training-split stdlib files."""
    from workbench.models.train import stdlib_files

    if tokenizer is None:
        raise ValueError("quantization: int4-awq calibrates on text; this checkpoint has no "
                         "tokenizer")
    train, _ = stdlib_files()
    rng = random.Random(seed)
    order = list(train)
    rng.shuffle(order)
    ids: list[int] = []
    for f in order:
        if len(ids) >= num_sequences * seq_len:
            break
        try:
            ids.extend(tokenizer(f.read_text(encoding="utf-8"),
                                 add_special_tokens=False)["input_ids"])
        except (UnicodeDecodeError, OSError):
            continue
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(num_sequences)
            if len(ids) >= (i + 1) * seq_len]


@torch.inference_mode()
def collect_inputs(engine, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Every projection's input rows [tokens, in_features] (fp32) while `engine` prefills."""
    from workbench.engine.sampling_params import SamplingParams

    rows: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for parent, attr, name in projections(engine.model):
        def keep(_module, args, name=name):
            rows.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1])
                                             .float().cpu())
        hooks.append(getattr(parent, attr).register_forward_pre_hook(keep))
    try:
        engine.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True))
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(r) for name, r in rows.items()}


def _fake_quantize(w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None):
    """Quantize and dequantize in fp32 (the int4 rule of workbench.models.quantize)."""
    from workbench.models.quantize import dequantize_int4, quantize_int4_weight

    codes, scale, zero = quantize_int4_weight(w, group_size, clip)
    return dequantize_int4(codes, scale, zero, torch.float32)


@torch.no_grad()
def search_scale(w: torch.Tensor, x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, float]:
    """(s [in], alpha): the activation-aware per-input-channel factors (see the module)."""
    w, x = w.float(), x.float()
    act = x.abs().mean(0).clamp_min(1e-8)
    reference = x @ w.t()
    best = (None, float("inf"), 0.0)
    for i in range(SCALE_GRID):
        alpha = i / SCALE_GRID
        s = act.pow(alpha).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        out = (x / s) @ _fake_quantize(w * s, group_size).t()
        loss = float((out - reference).pow(2).mean())
        if loss < best[1]:
            best = (s, loss, alpha)
    return best[0], best[2]


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, groups]: the largest |w| to keep per group (see the module)."""
    w, x = w.float(), x.float()
    out_f, in_f = w.shape
    groups = in_f // group_size
    xg = x.reshape(-1, groups, group_size)
    best_clip = torch.empty(out_f, groups)
    for start in range(0, out_f, 64):  # bounded memory: [rows, 64, groups] at a time
        wg = w[start:start + 64].reshape(-1, groups, group_size)
        reference = torch.einsum("rgk,ogk->rog", xg, wg)
        org_max = wg.abs().amax(-1)
        best_err = torch.full_like(org_max, float("inf"))
        chosen = org_max.clone()
        for i in range(CLIP_GRID):
            limit = org_max * (1 - CLIP_MAX_SHRINK * i / CLIP_GRID)
            q = _fake_quantize(wg.reshape(-1, in_f), group_size, limit).reshape_as(wg)
            err = (torch.einsum("rgk,ogk->rog", xg, q) - reference).pow(2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            chosen = torch.where(better, limit, chosen)
        best_clip[start:start + 64] = chosen
    return best_clip


@torch.no_grad()
def search(inputs: dict[str, torch.Tensor], model: nn.Module, group_size: int,
           seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (input_scale = 1 / s, clip) for every projection of `model` (unquantized)."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for parent, attr, name in projections(model):
        linear = getattr(parent, attr)
        check_group_divides(group_size, linear.in_features, name)
        x = inputs[name]
        if len(x) > SEARCH_ROWS:
            x = x[torch.randperm(len(x), generator=generator)[:SEARCH_ROWS]]
        w = linear.weight.detach().float()
        s, _alpha = search_scale(w, x, group_size)
        result[name] = (1 / s, search_clip(w * s, x / s, group_size))
    return result


def calibrate_model(model: nn.Module, model_config, tokenizer, config, path=None,
                    num_sequences: int = 8, seq_len: int = 256
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """AWQ's factors for the unquantized `model` at `config.quantization_group_size`: the
    calibration text runs through an engine of its own (prefill only, `config`'s dtype and
    device), then every projection is searched."""
    from workbench.engine.config import EngineConfig
    from workbench.engine.engine import LLMEngine

    blocks_per_sequence = -(-(seq_len + 1) // config.block_size)
    engine = LLMEngine(model, model_config, tokenizer, EngineConfig(
        dtype=config.dtype, device=config.device, block_size=config.block_size,
        num_kv_blocks=num_sequences * blocks_per_sequence + 1, max_num_seqs=num_sequences,
        max_num_batched_tokens=max(2048, seq_len)), path)
    prompts = calibration_prompts(tokenizer, num_sequences, seq_len, config.seed)
    return search(collect_inputs(engine, prompts), model, config.quantization_group_size,
                  config.seed)

