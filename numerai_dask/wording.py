"""How messages put a count into words: "1 model", "2 models", "1 row has", "3 rows have"."""

from __future__ import annotations


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``count`` (with thousands separators) and the words that agree with it: ``singular`` for one,
    ``plural`` otherwise (by default ``singular`` with an s). Words after the noun go in both forms,
    for the verb to agree too: ``counted(n, "row has", "rows have")``."""
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"
