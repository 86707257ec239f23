"""Catalog look-ups that forgive spelling and suggest close matches when they fail."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def normalize(name: str) -> str:
    """'Llama-2 70B', 'llama2_70b' and 'LLAMA-2-70B' all become 'llama270b'."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def lookup(field: str, name: str, entries: dict, aliases: dict[str, str] | None = None):
    """The entry named `name` (by key or alias), or a ValueError naming the field, the closest
    matches and every allowed name."""
    table = {normalize(k): k for k in entries}
    for alias, key in (aliases or {}).items():
        table.setdefault(normalize(alias), key)
    key = table.get(normalize(name))
    if key is not None:
        return entries[key]
    raise ValueError(unknown_message(field, name, entries))


def unknown_message(field: str, name: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(name).lower(), allowed, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{field}: unknown {name!r}{hint} (allowed: {', '.join(allowed)})"


def check_non_negative(**values: float) -> None:
    """Rates, prices and counts a user types: a negative one is a mistake worth one clear line."""
    for field, value in values.items():
        if value is None:
            continue
        if not value >= 0:  # also catches NaN
            raise ValueError(f"{field}: must be >= 0, got {value}")


def check_positive(**values: float) -> None:
    for field, value in values.items():
        if value is None:
            continue
        if not value > 0:
            raise ValueError(f"{field}: must be > 0, got {value}")
