"""Feature matrix of serving frameworks, each row with the documentation it was read from.

Values: "yes", "no", "partial" (with a caveat in notes), "via backend" (Triton delegates the
LLM work to a backend such as TensorRT-LLM or vLLM), "planned" (this project's later issues).
Frameworks move fast: the `as_of` date says when the row was last checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FEATURES = ("paged_attention", "continuous_batching", "prefix_caching", "speculative_decoding",
            "quantization_formats", "multi_gpu", "cpu_support", "streaming_api")
SUPPORT_VALUES = ("yes", "no", "partial", "via backend", "planned")


@dataclass(frozen=True, slots=True)
class FrameworkFeatures:
    name: str
    paged_attention: str
    continuous_batching: str
    prefix_caching: str
    speculative_decoding: str
    quantization_formats: tuple[str, ...]
    multi_gpu: str
    cpu_support: str
    streaming_api: str
    source: str
    as_of: str = "2024"
    notes: dict[str, str] = field(default_factory=dict)

    def row(self) -> dict[str, str]:
        out = {f: getattr(self, f) for f in FEATURES}
        out["quantization_formats"] = ", ".join(self.quantization_formats) or "none"
        return {"framework": self.name, **out}


FRAMEWORKS: dict[str, FrameworkFeatures] = {f.name: f for f in (
    FrameworkFeatures(
        "vLLM", "yes", "yes", "yes", "yes",
        ("FP8", "INT8 W8A8", "AWQ", "GPTQ", "bitsandbytes", "GGUF (experimental)"),
        "yes", "yes", "yes",
        "vLLM documentation (docs.vllm.ai): features, quantization, distributed serving, "
        "CPU installation; Kwon et al., 'Efficient Memory Management for LLM Serving with "
        "PagedAttention' (SOSP 2023)",
        notes={"multi_gpu": "tensor and pipeline parallel", "streaming_api":
               "OpenAI-compatible HTTP with SSE"}),
    FrameworkFeatures(
        "TGI", "yes", "yes", "yes", "yes",
        ("AWQ", "GPTQ", "bitsandbytes", "EETQ", "FP8", "Marlin"),
        "yes", "partial", "yes",
        "Hugging Face text-generation-inference documentation: conceptual guides (paged "
        "attention, speculation, quantization), v3 release notes (prefix caching)",
        notes={"cpu_support": "Intel CPU builds exist; GPUs are the main target",
               "multi_gpu": "tensor parallel", "streaming_api": "SSE, OpenAI Messages API"}),
    FrameworkFeatures(
        "TensorRT-LLM", "yes", "yes", "yes", "yes",
        ("FP8", "INT8 SmoothQuant", "INT8/INT4 weight-only", "AWQ", "GPTQ", "FP4"),
        "yes", "no", "yes",
        "NVIDIA TensorRT-LLM documentation: in-flight batching, paged KV cache, KV cache "
        "reuse, speculative decoding, quantization, parallelism",
        notes={"continuous_batching": "called in-flight batching",
               "streaming_api": "via trtllm-serve or Triton", "quantization_formats":
               "FP4 on Blackwell only"}),
    FrameworkFeatures(
        "Triton", "via backend", "via backend", "via backend", "via backend",
        ("those of the backend (TensorRT-LLM, vLLM)",), "yes", "yes", "yes",
        "NVIDIA Triton Inference Server documentation: TensorRT-LLM and vLLM backends, "
        "decoupled models (streaming), generate endpoint",
        notes={"cpu_support": "Triton serves CPU backends (ONNX Runtime, OpenVINO); its LLM "
               "backends are GPU-first"}),
    FrameworkFeatures(
        "Ollama", "no", "partial", "partial", "no",
        ("GGUF (Q4_0, Q4_K_M, Q5_K_M, Q8_0, ...)",), "partial", "yes", "yes",
        "Ollama documentation (github.com/ollama/ollama docs: FAQ on OLLAMA_NUM_PARALLEL, API)",
        notes={"continuous_batching": "parallel request slots via OLLAMA_NUM_PARALLEL",
               "prefix_caching": "per-slot prompt reuse from llama.cpp",
               "multi_gpu": "splits layers across GPUs; no tensor parallel"}),
    FrameworkFeatures(
        "llama.cpp", "no", "yes", "partial", "yes",
        ("GGUF k-quants (Q2_K..Q8_0)", "i-quants"), "partial", "yes", "yes",
        "llama.cpp documentation: tools/server README (continuous batching, cache_prompt, "
        "speculative decoding with --model-draft), quantize README",
        notes={"prefix_caching": "per-slot prompt cache (cache_prompt)",
               "multi_gpu": "layer or row split; no tensor-parallel all-reduce"}),
    FrameworkFeatures(
        "workbench", "yes", "yes", "planned", "planned", (), "planned", "yes", "yes",
        "this repository's README and DESIGN.md (what works today vs later issues)",
        notes={"quantization_formats": "INT8 / INT4 weight-only planned"}),
)}


def feature_matrix() -> list[dict[str, str]]:
    """One row per framework: the table `plan framework` prints."""
    return [f.row() for f in FRAMEWORKS.values()]
