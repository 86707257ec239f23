"""Hugging Face `generate` as the judge of correctness: greedy, one request at a time."""

from __future__ import annotations

import random

import torch

from workbench.models.tokenizer_builder import FIRST_ORDINARY_TOKEN_ID


def random_workload(seed: int, n: int, vocab: int, prompt_range=(5, 100), output_range=(5, 40)):
    rng = random.Random(seed)
    prompts = [[rng.randrange(FIRST_ORDINARY_TOKEN_ID, vocab)
                for _ in range(rng.randint(*prompt_range))]
               for _ in range(n)]
    outputs = [rng.randint(*output_range) for _ in range(n)]
    return prompts, outputs


def hf_greedy(path, prompts: list[list[int]], max_new: list[int]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    refs = []
    with torch.inference_mode():
        for ids, n in zip(prompts, max_new, strict=True):
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
            refs.append(out[0, len(ids):].tolist())
    return refs
