"""Planning calculators: catalogs, analytic memory, roofline, cost and decision trees.

Pure functions shared by notebooks, widgets, the simulator and `workbench plan`. Importing this
package does not import torch (only measure_hardware / measure_cpu and the embedded
presets do, lazily).
"""

from workbench.plan.budget import (
    MemoryPlan,
    ModelDoesNotFitError,
    max_concurrent_seqs,
    memory_plan,
    min_gpus,
)
from workbench.plan.cost import (
    Route,
    cost_from_simulation,
    cost_per_million_tokens,
    gpu_seconds_per_token,
    monthly_cost,
    provisioned_cost,
    routing_cost,
)
from workbench.plan.frameworks import FRAMEWORKS, feature_matrix
from workbench.plan.hardware import (
    Hardware,
    add_hardware_file,
    get_hardware,
    hardware_catalog,
    measure_cpu,
    measure_hardware,
)
from workbench.plan.memory import (
    active_param_count,
    bits_per_weight,
    kv_bytes_per_token,
    kv_estimate,
    param_count,
    weight_bytes,
    weight_bytes_per_gpu,
)
from workbench.plan.models_catalog import MODELS, ModelArch, arch_from_hf_config, get_model
from workbench.plan.roofline import (
    LITERATURE_EFFICIENCY,
    PEAK,
    Efficiency,
    critical_batch,
    decode_step,
    decode_throughput_bound,
    efficiency_from_measurement,
    prefill_step,
)
from workbench.plan.trees import TREES, evaluate, iter_paths, recommend

__all__ = [
    "LITERATURE_EFFICIENCY", "FRAMEWORKS", "MODELS", "PEAK", "TREES", "Efficiency", "Hardware",
    "MemoryPlan", "ModelArch", "ModelDoesNotFitError", "Route", "active_param_count",
    "add_hardware_file", "measure_hardware",
    "arch_from_hf_config", "bits_per_weight", "cost_from_simulation", "cost_per_million_tokens",
    "critical_batch", "decode_step", "decode_throughput_bound", "efficiency_from_measurement",
    "evaluate", "feature_matrix", "get_hardware", "get_model", "gpu_seconds_per_token",
    "hardware_catalog", "iter_paths", "kv_bytes_per_token", "kv_estimate", "max_concurrent_seqs",
    "measure_cpu", "memory_plan", "min_gpus", "monthly_cost", "param_count", "prefill_step",
    "provisioned_cost", "recommend", "routing_cost", "weight_bytes", "weight_bytes_per_gpu",
]
