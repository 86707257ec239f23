"""How to spread a model: one GPU, tensor, pipeline or data-parallel replicas."""

from __future__ import annotations

from workbench.plan.trees.core import Answer, Leaf, Question, Tree

_tp = Leaf("Tensor parallel", (
    "each layer's matmuls split across GPUs, so every token reads 1/N of the weights per GPU: "
    "lower latency and N times the memory",
    "needs an all-reduce per layer, which NVLink makes cheap",
), ("Pipeline parallel",))

TREE = Tree("parallelism", Question(
    "fits_one_gpu", "Do weights plus the KV for the target batch fit on one GPU?", {
        "yes": Answer("one GPU holds the model", Question(
            "load_fits_one_gpu", "Does one GPU's decode throughput cover the target load?", {
                "no": Answer("more throughput is needed", Leaf("Data-parallel replicas", (
                    "independent copies scale throughput linearly with no communication",
                    "a load balancer spreads requests; each replica keeps its own KV cache",
                ), ("Tensor parallel replicas",))),
                "yes": Answer("one GPU's throughput suffices", Question(
                    "latency_met_one_gpu", "Is the per-token latency target met on one GPU?", {
                        "yes": Answer("nothing to gain from splitting", Leaf("Single GPU", (
                            "the model, its KV and the load fit one GPU within the SLO",
                            "no inter-GPU communication, simplest to run",
                        ))),
                        "no": Answer("decode must get faster", Question(
                            "interconnect", "How are the GPUs linked?", {
                                "nvlink": Answer("all-reduces are cheap", _tp),
                                "pcie": Answer("all-reduces would dominate", Leaf(
                                    "Single GPU with a smaller or quantized model", (
                                        "tensor parallel over PCIe spends much of each step "
                                        "in all-reduce, rarely lowering latency",
                                        "fewer weight bytes per token lower decode time "
                                        "directly; see `plan quantization`",
                                    ), ("Tensor parallel",))),
                            })),
                    })),
            })),
        "no": Answer("the model must be split", Question(
            "fits_one_node", "Do weights plus the KV for the target batch fit on the GPUs "
                             "of one node?", {
                "yes": Answer("split within a node", Question(
                    "interconnect", "How are the GPUs linked?", {
                        "nvlink": Answer("all-reduces are cheap", _tp),
                        "pcie": Answer("communication is expensive", Leaf("Pipeline parallel", (
                            "layers split into stages: only activations cross GPUs, once "
                            "per stage, which PCIe can carry",
                            "adds latency per stage but multiplies memory",
                        ), ("Tensor parallel",))),
                    })),
                "no": Answer("split across nodes", Leaf(
                    "Tensor parallel within nodes + pipeline parallel across nodes", (
                        "tensor parallel needs NVLink-class bandwidth, so keep it inside a node",
                        "pipeline stages across nodes send only activations over the network",
                    ))),
            })),
    }), source="Megatron-LM (Shoeybi et al. 2019; Narayanan et al. 2021), vLLM distributed "
               "serving docs")
