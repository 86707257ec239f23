"""What the engine hands back: per-request outputs and the per-request timing record."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.engine.sequence import Sequence


@dataclass(slots=True)
class RequestMetrics:
    """The per-request record of the design contract (times on the engine's monotonic clock).

    TTFT = first token - arrival; TPOT = (E2E - TTFT) / (output - 1) for output > 1;
    ITL mean = mean gap between successive tokens (vLLM serving-benchmark definitions).
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
        times = seq.token_times
        first = times[0] if times else None
        n = len(times)
        ttft = first - seq.arrival if first is not None else None
        e2e = seq.finish - seq.arrival if seq.finish is not None else None
        tpot = (e2e - ttft) / (n - 1) if (e2e is not None and ttft is not None and n > 1) else None
        itl = (times[-1] - times[0]) / (n - 1) if n > 1 else None
        return cls(seq.request_id, seq.arrival, seq.first_scheduled, first, seq.finish,
                   seq.num_prompt_tokens, seq.num_output_tokens, seq.finish_reason, ttft, tpot,
                   e2e, itl, seq.cached_prompt_tokens, seq.preemptions)

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
