"""The continuous-batching engine.

sequence, block_manager and scheduler import no torch (the simulator reuses them), so this
package loads the torch-backed LLMEngine lazily, on first use.
"""

from workbench.engine.config import EngineConfig
from workbench.engine.outputs import RequestMetrics, RequestOutput
from workbench.engine.sampling_params import SamplingParams
from workbench.engine.scheduler import RequestRejected
from workbench.engine.telemetry import StepRecord, requests_frame, telemetry_frame

__all__ = [
    "EngineConfig", "LLMEngine", "RequestMetrics", "RequestOutput", "RequestRejected",
    "SamplingParams", "StepRecord", "requests_frame", "telemetry_frame",
]


def __getattr__(name: str):
    if name == "LLMEngine":
        from workbench.engine.engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'workbench.engine' has no attribute {name!r}")
