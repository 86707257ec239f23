"""Which cache helps: from the workload's shape (repeats, shared prefixes, long contexts)."""

from __future__ import annotations

from workbench.plan.trees.core import Answer, Leaf, Question, Tree

TREE = Tree("caching", Question(
    "repeated_requests", "Do identical requests recur (FAQ, deterministic prompts)?", {
        "yes": Answer("an answer can be reused outright", Leaf("Response cache", (
            "an exact-match cache in front of the server skips inference for repeats",
            "only safe for deterministic (temperature 0) or cache-tolerant requests",
        ), ("Prefix cache",))),
        "no": Answer("every request needs generation", Question(
            "shared_prefix", "Do many requests share a long prefix (system prompt, few-shot, "
                             "documents)?", {
                "yes": Answer("prefill work repeats", Leaf("Prefix cache", (
                    "KV blocks of a shared prefix are computed once and reused: less prefill "
                    "and lower TTFT",
                    "shared blocks are also stored once, leaving memory for more sequences",
                    "measured here (benchmarks/bench_prefix_caching.py, the CPU engine, 64 "
                    "requests sharing a 1,024-token prompt): 95% of prompt tokens from the "
                    "cache, 19.8x less prefill, mean TTFT 4.0x lower",
                ))),
                "no": Answer("little prefill to share", Question(
                    "kv_memory_bound", "Does KV memory, not compute, cap the batch size?", {
                        "no": Answer("memory is not the bottleneck", Leaf(
                            "No extra caching", (
                                "the paged KV cache already holds the target batch",
                                "extra caches add complexity without a gain here",
                            ))),
                        "yes": Answer("KV bytes limit concurrency", Question(
                            "sliding_window_model", "Was the model trained with sliding-window "
                                                    "attention (e.g. Mistral-7B)?", {
                                "yes": Answer("KV is bounded by the window", Leaf(
                                    "Sliding-window KV", (
                                        "keep only the last window of K and V per layer: KV "
                                        "per request stops growing past the window",
                                        "exact for models trained with that window",
                                    ), ("Quantized KV cache",))),
                                "no": Answer("full attention needs every token", Leaf(
                                    "Quantized KV cache (FP8 / INT8)", (
                                        "1 byte per KV element halves KV bytes vs FP16: about "
                                        "twice the sequences fit",
                                        "small accuracy cost; decode also reads fewer bytes",
                                    ), ("More GPUs",))),
                            })),
                    })),
            })),
    }), source="vLLM automatic prefix caching docs; Mistral 7B paper (Jiang et al. 2023); "
                "the prefix-cache figures measured by benchmarks/bench_prefix_caching.py")
