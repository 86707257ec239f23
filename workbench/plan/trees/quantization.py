"""Which precision: from hardware, how much memory the model needs, and quality tolerance."""

from __future__ import annotations

from workbench.plan.trees.core import Answer, Leaf, Question, Tree

_int4 = Leaf("INT4 (AWQ)", (
    "4.25 bits per weight (g=128) is ~3.8x smaller than BF16, leaving room for KV",
    "AWQ protects salient channels and has fast kernels in vLLM, TGI and TensorRT-LLM",
), ("INT4 (GPTQ)",))

_quality = "How much quality loss is acceptable?"
_fp8_question = "Do the GPUs have FP8 tensor cores (Hopper H100 / H200, Ada L4 / L40S)?"
_fp8 = Leaf("FP8 (W8A8)", (
    "FP8 weights and activations halve memory traffic and double the compute peak on "
    "Hopper / Ada",
    "usually within noise of BF16 on quality benchmarks",
), ("INT8 (SmoothQuant)",))

TREE = Tree("quantization", Question("hardware", "Where does it run?", {
    "cpu_or_edge": Answer("CPU / laptop inference runs GGUF in llama.cpp or Ollama", Question(
        "quality", _quality, {
            "strict": Answer("keep near-original quality", Leaf("GGUF Q8_0", (
                "8-bit GGUF is near-lossless and half the size of FP16",
                "CPU decode is memory-bound, so halving bytes roughly doubles speed",
            ), ("GGUF Q6_K",))),
            "tolerant": Answer("small losses are fine", Leaf("GGUF Q4_K_M", (
                "the common default: about 4.8 bits per weight with modest quality loss",
                "smallest usable size, fastest on memory-bound CPUs",
            ), ("GGUF Q5_K_M",))),
        })),
    "gpu": Answer("GPU serving", Question(
        "fits_at", "Highest precision at which weights plus the target KV fit?", {
            "bf16": Answer("memory is not the constraint", Question("quality", _quality, {
                "strict": Answer("no quality risk", Leaf("BF16 / FP16", (
                    "the model fits unquantized, so there is no accuracy risk",
                    "the reference precision every published benchmark uses",
                ))),
                "tolerant": Answer("trade a little quality for throughput", Question(
                    "fp8_hardware", _fp8_question, {
                        "yes": Answer("FP8 runs at twice the BF16 peak", _fp8),
                        "no": Answer("Ampere and older: INT8 tensor cores", Leaf(
                            "INT8 (SmoothQuant W8A8)", (
                                "SmoothQuant moves activation outliers into the weights so "
                                "both can be INT8 and use INT8 tensor cores",
                                "halves weight memory and speeds compute-bound prefill",
                            ), ("INT8 weight-only",))),
                    })),
            })),
            "int8": Answer("BF16 does not fit; 8 bits (INT8 or FP8) do", Question(
                "fp8_hardware", _fp8_question, {
                    "yes": Answer("8-bit weights in FP8 also run at twice the BF16 peak", Leaf(
                        "FP8 (W8A8)", (
                            "8-bit weights fit where BF16 does not, and FP8 tensor cores "
                            "(Hopper, Ada: L4, L40S) compute on them at twice the BF16 peak",
                            "usually within noise of BF16 on quality benchmarks, so no reason "
                            "to go to 4 bits",
                        ), ("INT8 weight-only (W8A16)", "INT4 (AWQ)"))),
                    "no": Answer("Ampere and older: INT8 or 4 bits", Question(
                        "quality", _quality, {
                            "strict": Answer("smallest safe step", Leaf(
                                "INT8 weight-only (W8A16)", (
                                    "per-channel INT8 weights are near-lossless",
                                    "halves weight memory; activations stay 16-bit",
                                ), ("INT8 (SmoothQuant W8A8)",))),
                            "tolerant": Answer("go further for KV room", _int4),
                        })),
                })),
            "int4": Answer("only 4-bit weights fit", Question("quality", _quality, {
                "strict": Answer("quality outranks GPU count", Leaf(
                    "BF16 on more GPUs (tensor parallel)", (
                        "4-bit weights can cost accuracy on reasoning and code tasks",
                        "sharding across GPUs keeps full precision; see `plan parallelism`",
                    ), ("INT8 weight-only on more GPUs",))),
                "tolerant": Answer("4 bits are acceptable", _int4),
            })),
            "none": Answer("not even INT4 fits", Leaf("Add GPUs: shard the model", (
                "the weights plus the KV of the target concurrency exceed the GPUs' memory even "
                "at 4.25 bits per weight",
                "tensor parallelism splits weights and KV across GPUs; `plan memory` says "
                "how many",
            ), ("a smaller model", "a GPU with more memory"))),
        })),
}), source="AWQ (Lin et al. 2023), GPTQ (Frantar et al. 2022), SmoothQuant (Xiao et al. "
           "2022), FP8 formats (Micikevicius et al. 2022; FP8 tensor cores in the NVIDIA Hopper "
           "and Ada Lovelace architecture whitepapers), llama.cpp GGUF quantization docs")
