"""What the engine hands back: per-request outputs and the per-request timing record."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.engine.sequence import Sequence
from workbench.traffic.metrics import request_record


@dataclass(slots=True)
class RequestMetrics:
    """The per-request record of the design contract (times on the engine's monotonic clock).

    The arithmetic (TTFT, TPOT, ITL with vLLM's definitions) is `request_record` in
    workbench/traffic/metrics.py, its one home; this dataclass only carries the result.
    """

    request_id: str
    arrival: float
    first_scheduled: float | None
    first_token: float | None
    finish: float | None
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    ttft: float | None
    tpot: float | None
    e2e: float | None
    itl_mean: float | None
    cached_prompt_tokens: int
    preemptions: int

    @classmethod
    def of(cls, seq: Sequence) -> RequestMetrics:
        return cls(**request_record(
            seq.request_id, seq.arrival, seq.first_scheduled, seq.token_times, seq.finish,
            seq.num_prompt_tokens, seq.finish_reason, seq.cached_prompt_tokens,
            seq.preemptions, output_tokens=seq.num_output_tokens))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]  # all output so far
    new_token_ids: list[int]  # produced in this step
    text: str  # all output text so far (stop strings cut off)
    new_text: str  # text completed in this step
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None
    metrics: RequestMetrics
    token_times: list[float]  # when each output token appeared (the engine's live list)
