"""Token-length distributions, sampled through their quantile functions.

Sampling as quantile(u) for u ~ U(0,1) lets prompt and output lengths share one mechanism for
correlation: a Gaussian copula correlates the two u's, each length keeps its own marginal.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_STD_NORMAL = NormalDist()


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = Field(1, ge=1, description="clip: smallest length")
    max: int = Field(1_000_000, ge=1, description="clip: largest length")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def quantile(self, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, u: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self.quantile(u)), self.min, self.max).astype(np.int64)


class Fixed(_Dist):
    dist: Literal["fixed"]
    value: int = Field(ge=1)

    def quantile(self, u):
        return np.full(u.shape, self.value, dtype=float)


class Uniform(_Dist):
    dist: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _range(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def quantile(self, u):
        # Integers low..high inclusive, each equally likely.
        return np.minimum(self.low + np.floor(u * (self.high - self.low + 1)), self.high)


class Normal(_Dist):
    dist: Literal["normal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)

    def quantile(self, u):
        return self.mean + self.std * _inv_normal(u)


class LogNormal(_Dist):
    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)

    def quantile(self, u):
        return np.exp(math.log(self.median) + self.sigma * _inv_normal(u))


class Empirical(_Dist):
    """Lengths drawn from observed values: inline `values`, or a file (one number per line, or
    a CSV column)."""

    dist: Literal["empirical"]
    values: list[int] | None = None
    file: str | None = None
    column: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.values is None) == (self.file is None):
            raise ValueError("give exactly one of values or file")
        if self.values is not None and not self.values:
            raise ValueError("values must not be empty")
        return self

    def resolve(self, base: Path) -> np.ndarray:
        if self.values is not None:
            return np.asarray(self.values, dtype=float)
        path = (base / self.file) if not Path(self.file).is_absolute() else Path(self.file)
        if not path.exists():
            raise ValueError(f"file: {path} does not exist")
        if not path.is_file():
            raise ValueError(f"file: {path} is not a file of lengths")
        import pandas as pd

        try:
            if self.column:
                frame = pd.read_csv(path)
                if self.column not in frame:
                    raise ValueError(f"column: {self.column!r} not in {path} "
                                     f"(columns: {', '.join(map(str, frame.columns))})")
                raw = frame[self.column]
            else:
                raw = pd.read_csv(path, header=None).iloc[:, 0]
        except pd.errors.EmptyDataError:
            raise ValueError(f"file: {path} is empty") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise ValueError(f"file: {path} cannot be read ({type(e).__name__})") from None
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        if not len(values):
            raise ValueError(f"file: {path} has no values")
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"file: {path} must hold numbers of tokens; value {i + 1} is "
                             f"{raw.iloc[i]!r}")
        return values

    def quantile(self, u, values: np.ndarray | None = None):
        data = np.sort(values if values is not None else np.asarray(self.values, dtype=float))
        idx = np.minimum((u * len(data)).astype(np.int64), len(data) - 1)
        return data[idx]


LengthDist = Annotated[Fixed | Uniform | Normal | LogNormal | Empirical,
                       Field(discriminator="dist")]


def _inv_normal(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 1e-12, 1 - 1e-12)
    return np.vectorize(_STD_NORMAL.inv_cdf)(u)


def sample_lengths(prompt: _Dist, output: _Dist, n: int, rng: np.random.Generator,
                   correlation: float = 0.0, base: Path = Path(".")):
    """n (prompt, output) length pairs; `correlation` is the Gaussian-copula coefficient."""
    z1 = rng.standard_normal(n)
    z2 = correlation * z1 + math.sqrt(1 - correlation**2) * rng.standard_normal(n)
    u1 = np.vectorize(_STD_NORMAL.cdf)(z1)
    u2 = np.vectorize(_STD_NORMAL.cdf)(z2)
    drawn = []
    for name, d, u in (("prompt_tokens", prompt, u1), ("output_tokens", output, u2)):
        try:
            drawn.append(_draw(d, u, base))
        except ValueError as e:  # name the scenario field the file belongs to
            raise ValueError(f"{name}.{e}") from None
    return drawn[0], drawn[1]


def _draw(d: _Dist, u: np.ndarray, base: Path) -> np.ndarray:
    if isinstance(d, Empirical):
        q = d.quantile(u, d.resolve(base))
        return np.clip(np.rint(q), d.min, d.max).astype(np.int64)
    return d.sample(u)
