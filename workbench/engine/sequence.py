"""Request / sequence state shared by the engine, the scheduler and the simulator (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from workbench.engine.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    SWAPPED = auto()  # preempted by swap: its K/V wait in host memory
    FINISHED = auto()


@dataclass(slots=True, eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt tokens, then output tokens
    num_prompt_tokens: int
    params: SamplingParams
    arrival: float
    priority: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    first_scheduled: float | None = None
    token_times: list[float] = field(default_factory=list)  # when each output token appeared
    finish: float | None = None
    preemptions: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens found in the prefix cache when admitted
    block_keys: list = field(default_factory=list)  # prefix-cache keys of its full blocks
    host_table: list[int] = field(default_factory=list)  # host blocks while swapped out

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
