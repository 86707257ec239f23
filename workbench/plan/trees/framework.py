"""Which serving framework: from use, hardware vendor, latency needs, concurrency, HF
integration and how much operational complexity the team accepts."""

from __future__ import annotations

from workbench.plan.trees.core import Answer, Leaf, Question, Tree

VLLM_ALTS = ("SGLang", "TGI")

_triton = Leaf("Triton", (
    "Triton Inference Server with the TensorRT-LLM backend serves several models (LLM plus "
    "pre/post-processing, embedders) behind one endpoint with ensembles and metrics",
    "keeps TensorRT-LLM's in-flight batching and kernels",
), ("TensorRT-LLM (trtllm-serve)",))
_trtllm = Leaf("TensorRT-LLM", (
    "compiled engines with fused kernels, FP8 / INT4 and in-flight batching give the lowest "
    "latency on NVIDIA GPUs",
    "the team accepts the cost: an engine build per model, GPU type and parallel layout",
), ("vLLM",))
_vllm_fast = Leaf("vLLM", (
    "PagedAttention, continuous batching, CUDA graphs and FP8 get close to TensorRT-LLM "
    "latency without a compile step",
    "one pip package and an OpenAI-compatible server keep operations simple",
), ("TensorRT-LLM",))
_vllm_hi = Leaf("vLLM", (
    "built for high concurrency: PagedAttention packs KV memory, continuous batching keeps "
    "GPUs busy, prefix caching shares system prompts",
    "loads Hugging Face checkpoints directly; no Hub-specific tooling required",
), VLLM_ALTS)
_tgi = Leaf("TGI", (
    "Hugging Face's server: tight Hub integration (Inference Endpoints, model cards, "
    "tokenizers) with continuous batching and paged attention",
    "a good fit where the team already deploys through Hugging Face tooling",
), ("vLLM",))
_ollama_srv = Leaf("Ollama", (
    "a few requests in flight at once do not need a high-throughput batcher",
    "one-command install and model library; runs on the GPU through llama.cpp",
), ("vLLM", "llama.cpp"))

TREE = Tree("framework", Question("use", "What is the deployment for?", {
    "experiment": Answer("measuring and changing serving policies needs readable code",
                         Leaf("workbench", (
                             "this project's engine: plain-Python scheduler and block manager, "
                             "instrumented per step, runs on CPU",
                             "made for experiments and capacity models, not production traffic",
                         ), ("vLLM",))),
    "local": Answer("a single user on a laptop or edge box", Question(
        "packaging", "An app to run models, or a library to embed?", {
            "app": Answer("an app with a model library", Leaf("Ollama", (
                "one command pulls and runs GGUF models with a local REST API",
                "uses the Apple / NVIDIA / AMD GPU when present, else the CPU",
            ), ("llama.cpp",))),
            "library": Answer("embed inference in your own program", Leaf("llama.cpp", (
                "C/C++ with no dependencies, GGUF k-quants, CPU-first with GPU offload",
                "its llama-server also exposes an OpenAI-compatible API",
            ), ("Ollama",))),
        })),
    "production": Answer("shared service with an SLO", Question(
        "hardware_vendor", "Which accelerators will serve it?", {
            "amd": Answer("ROCm support matters", Leaf("vLLM", (
                "vLLM ships ROCm builds for AMD Instinct GPUs",
                "TensorRT-LLM is NVIDIA-only",
            ), ("TGI",))),
            "cpu": Answer("no accelerators", Leaf("llama.cpp", (
                "quantized GGUF models and CPU kernels make CPU serving practical",
                "llama-server provides continuous batching and an OpenAI-compatible API",
            ), ("vLLM (CPU backend)",))),
            "nvidia": Answer("every framework runs on NVIDIA; latency decides", Question(
                "latency", "Is the lowest possible latency worth extra engineering?", {
                    "lowest": Answer("latency is the product", Question(
                        "ops_complexity", "Can the team run compiled engines per GPU?", {
                            "low": Answer("keep operations simple", _vllm_fast),
                            "high": Answer("engine builds are acceptable", Question(
                                "multi_model", "Several models behind one endpoint?", {
                                    "yes": Answer("ensembles and shared serving", _triton),
                                    "no": Answer("one LLM", _trtllm),
                                })),
                        })),
                    "standard": Answer("good latency at scale", Question(
                        "concurrency", "How many requests are in flight at once (arrival "
                                       "rate x time per request, Little's law)?", {
                            "low": Answer("a few in flight (<= 4, Ollama's default parallel "
                                          "slots): queueing stays short", _ollama_srv),
                            "high": Answer("many in flight: batching decides cost", Question(
                                "hf_integration", "Must it plug into Hugging Face tooling?", {
                                    "required": Answer("Hub-native deployment", _tgi),
                                    "not_needed": Answer("any HF checkpoint will do", _vllm_hi),
                                })),
                        })),
                })),
        })),
}), source="framework documentation: see workbench.plan.frameworks.FRAMEWORKS; requests in "
          "flight by Little's law (J. D. C. Little, Operations Research 9(3), 1961)")
