"""Scenario files: the traffic, target, SLOs and seed of one measurement, validated by pydantic.

Errors name the file, the dotted field path and what is allowed, one line per problem:
    scenarios/x.yaml: arrival.burstiness: must be > 0, got -1
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.traffic.arrivals import ArrivalSpec, ClosedLoop, Trace
from workbench.traffic.lengths import LengthDist


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineTarget(_Strict):
    kind: Literal["engine"]
    model: str = "tiny"
    engine: dict = Field(default_factory=dict, description="EngineConfig fields")

    @field_validator("engine")
    @classmethod
    def _engine_config(cls, v: dict) -> dict:
        from workbench.engine.config import EngineConfig

        EngineConfig.from_dict(v)  # raises ValueError naming the field
        return v


class HttpTarget(_Strict):
    kind: Literal["http"]
    url: str = Field(description="base URL of an OpenAI-compatible server, e.g. "
                                 "http://127.0.0.1:8000")
    model: str
    api_key: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    prompt_format: Literal["auto", "tokens", "text"] = Field(
        "auto", description="auto: token ids to a workbench server, text to any other "
                            "(llama.cpp answers token ids with HTTP 500)")
    tokenizer: str | None = Field(None, description="the served model's tokenizer (preset or "
                                                    "dir): text prompts, re-counted outputs")
    vocab_size: int = Field(4096, ge=8, description="token ids are drawn below this")
    timeout_s: float = Field(120.0, gt=0)
    output_tokens_from: Literal["auto", "chunks"] = Field(
        "auto", description="auto: the server's usage, else the text re-tokenized (when a "
                            "tokenizer is given), else text chunks (approximate); chunks: usage, "
                            "else one token per streamed text chunk, exact for a server that "
                            "streams one chunk per token (re-tokenized text is not: BPE merges "
                            "concatenated pieces differently)")
    extra_body: dict = Field(
        default_factory=dict,
        description="fields merged into every request body, e.g. llama.cpp's logit_bias "
                    "{\"<eos id>\": -1e9}, which keeps EOS out where ignore_eos is ignored")

    @model_validator(mode="after")
    def _text_needs_tokenizer(self):
        if self.prompt_format == "text" and not self.tokenizer:
            raise ValueError("prompt_format 'text' needs a tokenizer (a preset or a directory)")
        return self


Target = Annotated[EngineTarget | HttpTarget, Field(discriminator="kind")]


class SharedPrefix(_Strict):
    fraction: float = Field(0.0, ge=0, le=1, description="share of requests with a system prompt")
    count: int = Field(1, ge=1, description="number of distinct system prompts")
    tokens: int = Field(0, ge=0, description="length of each system prompt")


class PriorityClass(_Strict):
    share: float = Field(gt=0, le=1, description="share of requests in this class")
    priority: int = Field(description="lower runs first; requests in no class get 0")

    @field_validator("priority", mode="before")
    @classmethod
    def _integer(cls, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer (lower runs first)")
        return v


class SLO(_Strict):
    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)
    e2e_s: float | None = Field(None, gt=0)
    percentile: float = Field(90.0, gt=0, le=100)


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    target: Target = Field(default_factory=lambda: EngineTarget(kind="engine"))
    arrival: ArrivalSpec
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    correlation: float = Field(0.0, ge=-1, le=1, description="prompt/output length correlation")
    shared_prefix: SharedPrefix = Field(default_factory=SharedPrefix)
    num_requests: int | None = Field(None, ge=1, le=1_000_000)
    duration_s: float | None = Field(None, gt=0)
    slo: SLO = Field(default_factory=SLO)
    hardware: str | None = None
    temperature: float = Field(0.0, ge=0)
    ignore_eos: bool = True
    priorities: list[PriorityClass] = Field(
        default_factory=list, description="classes of requests by share, each with a priority")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.num_requests is None) == (self.duration_s is None) and not isinstance(
                self.arrival, Trace):
            raise ValueError("give exactly one of num_requests or duration_s")
        if not isinstance(self.arrival, Trace) and (
                self.prompt_tokens is None or self.output_tokens is None):
            raise ValueError("prompt_tokens and output_tokens are required "
                             "(only a trace arrival brings its own lengths)")
        if isinstance(self.arrival, ClosedLoop) and self.num_requests is None:
            raise ValueError("a closed_loop arrival needs num_requests")
        if sum(c.share for c in self.priorities) > 1 + 1e-9:
            raise ValueError("priorities: the classes' shares must add up to at most 1, got "
                             f"{sum(c.share for c in self.priorities):g}")
        return self

    @property
    def slos(self) -> dict[str, float]:
        return {k: v for k, v in (("ttft", self.slo.ttft_s), ("tpot", self.slo.tpot_s),
                                  ("e2e", self.slo.e2e_s)) if v is not None}


class ScenarioError(ValueError):
    """One or more problems in a scenario file; str() has one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


_PHRASES = [("Input should be greater than or equal to", "must be >="),
            ("Input should be greater than", "must be >"),
            ("Input should be less than or equal to", "must be <="),
            ("Input should be less than", "must be <"),
            ("Input should be", "must be"),
            ("Extra inputs are not permitted", "unknown field"),
            ("Field required", "required"),
            ("Value error, ", "")]


def _describe(err: dict, data) -> str:
    path, node = [], data
    tag_dropped = False
    for part in err["loc"]:
        # Tagged unions insert the tag (e.g. 'gamma') after the union's field: drop it once.
        if (isinstance(node, dict) and not tag_dropped
                and part in (node.get("kind"), node.get("dist"))):
            tag_dropped = True
            continue
        tag_dropped = False
        path.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    msg = err["msg"]
    for a, b in _PHRASES:
        msg = msg.replace(a, b)
    ctx = err.get("ctx") or {}
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field = str(ctx.get("discriminator", "kind")).strip("'")
        path.append(field)
        tags = ctx.get("expected_tags", "")
        got = f", got {ctx['tag']!r}" if "tag" in ctx else ""
        msg = f"must be one of {tags}{got}" if tags else "required"
    elif err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(
            err["input"], dict):
        msg += f", got {err['input']!r}"
    where = ".".join(path) or "(top level)"
    return f"{where}: {msg}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--set arrival.rate=4` style overrides; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ScenarioError([f"--set {item!r}: expected dotted.key=value"])
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ScenarioError([f"--set {item!r}: {part} is not a mapping"])
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def parse_scenario(data: dict, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError([f"{source}: must be a mapping of fields, got {type(data).__name__}"])
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError([f"{source}: {_describe(err, data)}" for err in e.errors()]) from None


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    if not path.exists():
        raise ScenarioError([f"{path}: no such scenario file"])
    if not path.is_file():
        raise ScenarioError([f"{path}: is a directory, not a scenario file (YAML)"
                             if path.is_dir() else f"{path}: not a regular file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ScenarioError([f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save the "
                             "scenario as UTF-8 YAML"]) from None
    except OSError as e:
        raise ScenarioError([f"{path}: cannot be read ({e.strerror or e})"]) from None
    except yaml.YAMLError as e:
        raise ScenarioError([f"{path}: not valid YAML: {e}".splitlines()[0]]) from None
    if data is not None and not isinstance(data, dict):
        raise ScenarioError([f"{path}: must be a mapping of fields, got {type(data).__name__}"])
    data = apply_overrides(data or {}, overrides or [])
    scenario = parse_scenario(data, str(path))
    scenario._base_dir = path.parent.resolve()
    return scenario


def base_dir(scenario: Scenario) -> Path:
    """Relative files in a scenario (traces, empirical lengths) resolve against its file."""
    return getattr(scenario, "_base_dir", Path.cwd())


def served_at(scenario: Scenario, url: str, model: str | None = None,
              api_key_env: str | None = None) -> Scenario:
    """The same traffic sent to the OpenAI-compatible server at `url` instead of an engine in
    this process (the design review's `--target-url`). The engine target stays what the
    predictions are made for; the served model defaults to its model (what `workbench serve
    --model M` lists), whose tokenizer also writes text prompts for a server of another kind."""
    if not isinstance(scenario.target, EngineTarget):
        raise ValueError("target: a URL replaces an engine target; this scenario already "
                         f"targets {scenario.target.url}")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"target-url: must start with http:// or https://, got {url!r}")
    engine_model = scenario.target.model
    served = scenario.model_copy(update={"target": HttpTarget(
        kind="http", url=url.rstrip("/"), model=model or Path(engine_model).name,
        api_key_env=api_key_env, tokenizer=engine_model)})
    served._base_dir = base_dir(scenario)
    return served
