"""The engine on CUDA against transformers on CUDA, same weights (needs a GPU).

    python benchmarks/check_cuda_agreement.py

Greedy outputs of a mixed batch (prompts 5-300 tokens, outputs 5-60) from LLMEngine
(paged KV, continuous batching, chunked prefill, a pool small enough to preempt) and from
Hugging Face `generate` one request at a time, in float32 (token-exact expected) and
bfloat16 (first-token agreement reported: bf16 rounding differs between kernels), for the
tiny and small presets and the Mistral / Qwen2 variants. Prints the share of requests whose
whole output matches. The CPU test suite holds the same check on CPU
(tests/test_engine_correctness.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    import torch
    from hf_reference import random_workload
    from transformers import AutoModelForCausalLM

    from workbench.engine import EngineConfig, LLMEngine, SamplingParams, telemetry_frame
    from workbench.models.tiny import resolve_model

    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    failures = 0
    for preset in ("tiny", "tiny-mistral", "tiny-qwen2", "small"):
        path = resolve_model(preset)
        prompts, outputs = random_workload(1, 24, 4096, (5, 300), (5, 60))
        for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16")):
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).cuda().eval()
            refs = []
            with torch.inference_mode():
                for ids, n in zip(prompts, outputs, strict=True):
                    x = torch.tensor([ids], device="cuda")
                    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                         max_new_tokens=n, pad_token_id=0)
                    refs.append(out[0, len(ids):].tolist())
            del model
            eng = LLMEngine.from_pretrained(str(path), EngineConfig(
                dtype=name, device="cuda", max_num_seqs=8, max_num_batched_tokens=128,
                num_kv_blocks=48, block_size=16))
            got = [o.token_ids for o in eng.generate(
                prompts, [SamplingParams(max_tokens=n, temperature=0) for n in outputs])]
            whole = sum(a == b for a, b in zip(got, refs, strict=True)) / len(refs)
            first = sum(a[:1] == b[:1] for a, b in zip(got, refs, strict=True)) / len(refs)
            preempted = int(telemetry_frame(eng)["num_preempted"].sum())
            print(f"{preset:>12} {name:>8}: whole outputs equal {whole:.0%}, first tokens "
                  f"{first:.0%} ({len(refs)} requests, {preempted} preemptions)")
            if name == "float32" and whole < 1:
                failures += 1
            del eng
            torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
