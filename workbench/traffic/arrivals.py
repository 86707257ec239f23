"""Arrival processes: when each request is sent.

Open-loop processes produce a list of send times (seconds from the run's start). Closed loop
has no schedule: the driver sends a client's next request when its last one completes.
Gamma gaps follow vLLM's serving benchmark: shape = burstiness (1 = Poisson), scale =
1/(rate * shape), and with a request count the gaps are rescaled so N requests span N/rate s.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_REQUESTS = 1_000_000  # a bound on duration-driven generation, so nothing runs away


class _Arrival(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Constant(_Arrival):
    kind: Literal["constant"]
    rate: float = Field(gt=0, description="requests per second")


class Poisson(_Arrival):
    kind: Literal["poisson"]
    rate: float = Field(gt=0)


class Gamma(_Arrival):
    kind: Literal["gamma"]
    rate: float = Field(gt=0)
    burstiness: float = Field(1.0, gt=0, description="gamma shape; < 1 burstier than Poisson")


class Segment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration_s: float = Field(gt=0)
    rate: float = Field(ge=0)


class Piecewise(_Arrival):
    """Time-varying Poisson rate, e.g. a diurnal curve; `repeat` cycles the segments."""

    kind: Literal["piecewise"]
    segments: list[Segment] = Field(min_length=1)
    repeat: bool = True

    @model_validator(mode="after")
    def _some_rate(self):
        if all(s.rate == 0 for s in self.segments):
            raise ValueError("at least one segment needs rate > 0")
        return self


class ClosedLoop(_Arrival):
    kind: Literal["closed_loop"]
    concurrency: int = Field(ge=1)
    think_time_s: float = Field(0.0, ge=0, description="pause between a reply and the next send")


class Trace(_Arrival):
    """Replay (timestamp, prompt tokens, output tokens) rows from a CSV or JSONL file.

    Knobs let a small CPU model replay production traffic: a time window, a rate multiplier
    (2 = twice as fast), and a length scale with clipping."""

    kind: Literal["trace"]
    file: str
    timestamp_column: str = "TIMESTAMP"
    prompt_column: str = "ContextTokens"
    output_column: str = "GeneratedTokens"
    start_s: float = Field(0.0, ge=0)
    window_s: float | None = Field(None, gt=0)
    rate_multiplier: float = Field(1.0, gt=0)
    length_scale: float = Field(1.0, gt=0, description="multiplies prompt lengths")
    output_length_scale: float | None = Field(None, gt=0, description="default: length_scale")
    max_prompt_tokens: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)


ArrivalSpec = Annotated[Constant | Poisson | Gamma | Piecewise | ClosedLoop | Trace,
                        Field(discriminator="kind")]


def arrival_times(spec, rng: np.random.Generator, num_requests: int | None = None,
                  duration_s: float | None = None) -> np.ndarray:
    """Send times in seconds from the start, sorted, for open-loop processes."""
    if isinstance(spec, Piecewise):
        return _piecewise(spec, rng, num_requests, duration_s)
    if isinstance(spec, Constant):
        shape = None
    elif isinstance(spec, Poisson):
        shape = 1.0
    elif isinstance(spec, Gamma):
        shape = spec.burstiness
    else:
        raise ValueError(f"arrival.kind: {spec.kind!r} has no precomputed schedule")

    def gaps(n: int) -> np.ndarray:
        if shape is None:
            return np.full(n, 1.0 / spec.rate)
        return rng.gamma(shape, 1.0 / (spec.rate * shape), size=n)

    if num_requests is not None:
        g = gaps(num_requests)
        g *= (num_requests / spec.rate) / g.sum()  # N requests span N / rate seconds
        return np.concatenate([[0.0], np.cumsum(g[:-1])])
    return _until(gaps, duration_s)


def _until(gaps, duration_s: float) -> np.ndarray:
    chunk = 1024
    times: list[np.ndarray] = []
    t = 0.0
    total = 0
    while total < MAX_REQUESTS:
        g = gaps(chunk)
        ts = t + np.concatenate([[0.0], np.cumsum(g[:-1])])
        keep = ts[ts < duration_s]
        times.append(keep)
        total += len(keep)
        if len(keep) < chunk:
            break
        t = ts[-1] + g[-1]
    return np.concatenate(times)[:MAX_REQUESTS]


def _piecewise(spec: Piecewise, rng, num_requests, duration_s) -> np.ndarray:
    """Inhomogeneous Poisson by time rescaling: unit-rate arrivals in Λ(t) = ∫rate, inverted."""
    edges = np.cumsum([0.0] + [s.duration_s for s in spec.segments])
    rates = np.array([s.rate for s in spec.segments])
    mass = np.concatenate([[0.0], np.cumsum(rates * np.diff(edges))])  # Λ at segment edges
    period, period_mass = edges[-1], mass[-1]

    def invert(lam: float) -> float:
        cycles, rem = divmod(lam, period_mass) if spec.repeat else (0, lam)
        if not spec.repeat and lam >= period_mass:
            return float("inf")
        i = int(np.searchsorted(mass, rem, side="right") - 1)
        i = min(i, len(rates) - 1)
        while rates[i] == 0:  # zero-rate segments hold no mass; skip to the next
            i += 1
        return cycles * period + edges[i] + (rem - mass[i]) / rates[i]

    limit = num_requests if num_requests is not None else MAX_REQUESTS
    out: list[float] = []
    lam = 0.0
    while len(out) < limit:
        t = invert(lam)
        if t == float("inf") or (duration_s is not None and t >= duration_s):
            break
        out.append(t)
        lam += rng.exponential(1.0)
    return np.asarray(out)


def trace_rows(spec: Trace, base) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(send times, prompt lengths, output lengths) from a trace file, windowed and scaled.

    Every problem with the file is a ValueError naming `arrival.<field>` and the file."""
    secs, prompt, output = _read_trace(spec, base)
    keep = secs >= spec.start_s
    if spec.window_s is not None:
        keep &= secs < spec.start_s + spec.window_s
    if not keep.any():
        end = "" if spec.window_s is None else f", {spec.start_s + spec.window_s:g}"
        raise ValueError(f"arrival.start_s: no trace rows in [{spec.start_s:g}{end}) s; the "
                         f"trace spans {secs[-1]:g} s")
    secs, prompt, output = secs[keep] - spec.start_s, prompt[keep], output[keep]
    secs = secs / spec.rate_multiplier
    prompt = np.maximum(1, np.rint(prompt * spec.length_scale)).astype(np.int64)
    out_scale = spec.output_length_scale or spec.length_scale
    output = np.maximum(1, np.rint(output * out_scale)).astype(np.int64)
    if spec.max_prompt_tokens:
        prompt = np.minimum(prompt, spec.max_prompt_tokens)
    if spec.max_output_tokens:
        output = np.minimum(output, spec.max_output_tokens)
    return secs, prompt, output


def _read_trace(spec: Trace, base) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole trace, sorted by time: seconds from its first row, prompt and output lengths."""
    from pathlib import Path

    import pandas as pd

    path = Path(spec.file)
    path = path if path.is_absolute() else Path(base) / path
    if not path.exists():
        raise ValueError(f"arrival.file: {path} does not exist")
    if not path.is_file():
        raise ValueError(f"arrival.file: {path} is a directory, not a trace file (CSV or JSONL)"
                         if path.is_dir() else f"arrival.file: {path} is not a regular file")
    kind = "JSONL" if path.suffix == ".jsonl" else "CSV"
    try:
        frame = pd.read_json(path, lines=True) if kind == "JSONL" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"arrival.file: {path} is empty") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:  # incl. UnicodeDecodeError
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"arrival.file: {path} cannot be read as {kind} ({why})") from None
    for field, col in (("timestamp_column", spec.timestamp_column),
                       ("prompt_column", spec.prompt_column),
                       ("output_column", spec.output_column)):
        if col not in frame:
            raise ValueError(f"arrival.{field}: {col!r} is not a column of {path} "
                             f"(columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise ValueError(f"arrival.file: {path} has no rows (only a header)")
    ts = frame[spec.timestamp_column]
    if pd.api.types.is_numeric_dtype(ts):
        secs = ts.to_numpy(dtype=float)
    else:
        parsed = pd.to_datetime(ts, errors="coerce")
        if parsed.isna().any():  # neither numbers nor dates: report the first bad row
            _bad_value(path, "timestamp_column", spec.timestamp_column, ts, parsed.isna(), kind,
                       "a number of seconds or a date-time")
        secs = (parsed - parsed.min()).dt.total_seconds().to_numpy()
    _bad_value(path, "timestamp_column", spec.timestamp_column, ts, ~np.isfinite(secs), kind,
               "a number of seconds or a date-time")
    lengths = []
    for field, col in (("prompt_column", spec.prompt_column),
                       ("output_column", spec.output_column)):
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        _bad_value(path, field, col, frame[col], ~np.isfinite(values), kind,
                   "a number of tokens")
        lengths.append(values)
    order = np.argsort(secs, kind="stable")
    secs = secs[order] - secs[order][0]
    return secs, lengths[0][order], lengths[1][order]


def _bad_value(path, field: str, col: str, raw, bad, kind: str, wanted: str) -> None:
    bad = np.asarray(bad)
    if bad.any():
        i = int(np.argmax(bad))
        row = f"line {i + 2}" if kind == "CSV" else f"line {i + 1}"  # CSV: after the header
        raise ValueError(f"arrival.{field}: column {col!r} of {path} must hold {wanted}; "
                         f"{row} has {raw.iloc[i]!r}")
