"""Engine errors as messages a user can act on, whatever the engine."""

from __future__ import annotations

import re

# A quoted internal name in a list ("Candidate bindings: "amount", "__gm_order"") and any other mention.
_LISTED_INTERNAL = re.compile(r'(,\s*"[^"\n]*__gm_\w*"|"[^"\n]*__gm_\w*"\s*,\s*)')
_INTERNAL = re.compile(r'"?\b__gm_\w*"?')


def engine_message(error: BaseException, *, names: dict[str, str] | None = None) -> str:
    """An engine (DuckDB) error as one line a user can act on: its first paragraph, without the echoed
    internal query (``LINE 1: ...``) and without internal view and column names (``__gm_...``); ``names``
    maps internal names to what the user calls them (e.g. the source view to ``source``)."""
    text = str(error).split("\n\n")[0]
    text = re.split(r"\n\s*LINE \d+:", text)[0]
    for internal, shown in (names or {}).items():
        text = text.replace(internal, shown)
    text = _LISTED_INTERNAL.sub("", text)
    text = _INTERNAL.sub("an internal table", text)
    return " ".join(text.split())
