"""Plain-text tables for the `plan` commands (and anything else that prints a dict)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:.3e}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return "-" if value is None else str(value)


def kv_table(pairs: Mapping, title: str | None = None) -> str:
    width = max((len(str(k)) for k in pairs), default=0)
    lines = [title] if title else []
    lines += [f"  {str(k):<{width}}  {fmt(v)}" for k, v in pairs.items()]
    return "\n".join(lines)


def rows_table(rows: Iterable[Mapping], title: str | None = None) -> str:
    rows = list(rows)
    if not rows:
        return title or ""
    cols = list(rows[0])
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [title] if title else []
    out += [line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    return "\n".join(out)


def decision_text(d: Mapping, facts: Mapping | None = None) -> str:
    lines = [f"recommendation: {d['recommendation']}", "why:"]
    lines += [f"  - {r}" for r in d["reasons"]]
    if d["alternatives"]:
        lines.append(f"alternatives: {', '.join(d['alternatives'])}")
    lines.append("path:")
    lines += [f"  {i}. {s['question']} -> {s['answer']} ({s['reason']})"
              for i, s in enumerate(d["path"], 1)]
    if facts:
        lines.append(kv_table(facts, "facts used:"))
    return "\n".join(lines)


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
