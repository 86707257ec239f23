"""Per-request sampling settings (pure Python: the scheduler and simulator carry them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Temperatures below this sample as greedy: logits / 1e-39 overflow float32 to inf, the softmax
# turns to NaN and argmax returns token 0; far above that, such a temperature is already an
# argmax in all but exact ties (vLLM uses the same cut-off).
GREEDY_TEMPERATURE = 1e-5


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 (or below GREEDY_TEMPERATURE) = greedy
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    seed: int | None = None  # per-request seed: reproducible whatever else is in the batch
    stop: list[str] | str | None = None  # stop strings; excluded from the returned text
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if not 0 <= self.temperature < math.inf:  # also rejects NaN
            raise ValueError(f"temperature: must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k: must be -1, 0 (off) or a positive integer, got {self.top_k}")
        # A seed seeds a 64-bit generator: larger ones would silently collide with smaller.
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(
                self.seed, int) or not -(1 << 63) <= self.seed < 1 << 63):
            raise ValueError(f"seed: must be a 64-bit integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None and any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop: must be non-empty strings, got {self.stop!r}")
        for s in self.stop or ():
            require_utf8("stop", s)
        if self.stop_token_ids is not None and any(
            not isinstance(t, int) or t < 0 for t in self.stop_token_ids
        ):
            raise ValueError(f"stop_token_ids: must be non-negative integers, "
                             f"got {self.stop_token_ids!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


def require_utf8(field: str, text: str) -> None:
    """Reject text that cannot be encoded (a lone surrogate such as "\\ud800" from JSON): the
    tokenizer would raise a TypeError deep inside instead of a ValueError naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{field}: not valid Unicode text ({e.reason} at character {e.start})"
                         ) from None
