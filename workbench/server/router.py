"""Model routing: a request that names no model goes to the cheapest model whose rule matches.

A router file (YAML) is an ordered list of rules, cheapest model first; the first rule whose
conditions all hold picks the model, and a rule without `when` always matches (the default):

    rules:
      - {name: short, model: tiny, when: {max_prompt_tokens: 256}}
      - {name: default, model: small}

(a bare list of rules is accepted too). Conditions:
- max_prompt_tokens: the prompt's length in tokens is at most this. Token-id prompts count
  their ids; text (and chat, rendered as the model would see it) is tokenized with the rule's
  model's tokenizer, loaded once at start (cheap for the embedded models). A model without a
  tokenizer takes only token ids, so its text length is unknown and the rule does not match.
- max_output_tokens: the request asks for at most this many tokens (max_tokens, or
  max_completion_tokens in chat). Absent: a completion's default (protocol.DEFAULT_MAX_TOKENS);
  a chat without one runs to the end of the context (as the server serves it), so it never
  matches this condition.

A request naming no model that no rule matches goes to the first served model, recorded as
rule "none". Every choice is returned in the `x-workbench-routed-to` / `x-workbench-route-rule`
response headers and counted in /metrics (workbench:router_decisions_total{model,rule}).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench.server.protocol import DEFAULT_MAX_TOKENS

CONDITIONS = ("max_prompt_tokens", "max_output_tokens")
NO_RULE = "none"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    model: str
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    rule: str


def load_router(path: str | os.PathLike, served: list[str]) -> list[Rule]:
    """The rules of a router file; ValueError naming the field for anything wrong."""
    import yaml

    p = Path(path).expanduser()
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ValueError(f"router: cannot read {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"router: {p} is not valid YAML ({e})") from None
    return parse_rules(doc, served)


def parse_rules(doc, served: list[str]) -> list[Rule]:
    rules_doc = doc.get("rules") if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and set(doc) - {"rules"}:
        raise ValueError(f"router: unknown field(s) {sorted(set(doc) - {'rules'})}; "
                         "expected 'rules'")
    if not isinstance(rules_doc, list) or not rules_doc:
        raise ValueError("router.rules: must be a non-empty list of {model, when} rules")
    rules, names = [], set()
    for i, r in enumerate(rules_doc):
        where = f"router.rules[{i}]"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: must be a mapping with 'model' (and 'when', 'name')")
        extra = set(r) - {"model", "when", "name"}
        if extra:
            raise ValueError(f"{where}: unknown field(s) {sorted(extra)}; "
                             "expected model, when, name")
        model = r.get("model")
        if not isinstance(model, str) or model not in served:
            raise ValueError(f"{where}.model: {model!r} is not served here; served: "
                             f"{', '.join(served)}")
        when = r.get("when") or {}
        if not isinstance(when, dict):
            raise ValueError(f"{where}.when: must be a mapping of conditions "
                             f"({', '.join(CONDITIONS)})")
        for key, value in when.items():
            if key not in CONDITIONS:
                raise ValueError(f"{where}.when.{key}: unknown condition; expected one of "
                                 f"{', '.join(CONDITIONS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}.when.{key}: must be an integer >= 0, got {value!r}")
        name = r.get("name", f"rule{i}" if when else "default")
        if not isinstance(name, str) or not name or name == NO_RULE or name in names:
            raise ValueError(f"{where}.name: must be a unique non-empty string other than "
                             f"{NO_RULE!r}, got {name!r}")
        names.add(name)
        rules.append(Rule(name, model, **when))
    return rules


class Router:
    """Applies the rules; `tokenizers` maps a model to its tokenizer (or None)."""

    def __init__(self, rules: list[Rule], fallback: str, tokenizers: dict):
        self.rules, self.fallback, self.tokenizers = rules, fallback, tokenizers

    def decide(self, body: dict) -> Decision:
        lengths: dict[str, int | None] = {}  # prompt tokens by model, computed at most once
        for rule in self.rules:
            if rule.max_output_tokens is not None and not (
                    (limit := _output_limit(body)) is not None
                    and limit <= rule.max_output_tokens):
                continue
            if rule.max_prompt_tokens is not None:
                if rule.model not in lengths:
                    lengths[rule.model] = self._prompt_tokens(body, rule.model)
                n = lengths[rule.model]
                if n is None or n > rule.max_prompt_tokens:
                    continue
            return Decision(rule.model, rule.name)
        return Decision(self.fallback, NO_RULE)

    def _prompt_tokens(self, body: dict, model: str) -> int | None:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            return len(prompt)
        tok = self.tokenizers.get(model)
        if tok is None:
            return None
        if "messages" in body:
            from workbench.server.chat import chat_prompt

            try:
                prompt = chat_prompt(tok, [m for m in body["messages"] if isinstance(m, dict)])
            except (ValueError, TypeError, KeyError):
                return None  # malformed: the replica's validation answers it (a 400)
        if not isinstance(prompt, str):
            return None
        return len(tok(prompt, add_special_tokens=False)["input_ids"])


def _output_limit(body: dict) -> int | None:
    """The tokens the request may generate; None: up to the end of the context (a chat that
    names no length, see protocol.SamplingRequest)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None if "messages" in body else DEFAULT_MAX_TOKENS


def load_tokenizers(models: dict[str, str]) -> dict:
    """{served name: tokenizer or None} for {served name: preset or directory}."""
    from workbench.models.loader import load_tokenizer
    from workbench.models.tiny import resolve_model

    return {name: load_tokenizer(resolve_model(src)) for name, src in models.items()}
