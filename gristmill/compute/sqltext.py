"""Small helpers that spell SQL fragments (identifiers, literals, intervals) for the engines.

The SQL Gristmill builds is plain ANSI-ish SQL in DuckDB's dialect; ``transpile`` turns it into another
engine's dialect with SQLGlot, so the semantics are written once."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

# A quoted internal name in a list ("Candidate bindings: "amount", "__gm_order"") and any other mention.
_LISTED_INTERNAL = re.compile(r'(,\s*"[^"\n]*__gm_\w*"|"[^"\n]*__gm_\w*"\s*,\s*)')
_INTERNAL = re.compile(r'"?\b__gm_\w*"?')


def q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """Quote a string literal."""
    return "'" + value.replace("'", "''") + "'"


def ts_lit(value: datetime) -> str:
    return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def interval(value: timedelta) -> str:
    micros = value // timedelta(microseconds=1)
    if micros % 1_000_000 == 0:
        return f"INTERVAL '{micros // 1_000_000} seconds'"
    return f"INTERVAL '{micros} microseconds'"


def cols(names: list[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{q(n)}" for n in names)


def tie_rule_sql(timestamp: str, *, has_create_timestamp: bool, prefix: str = "", with_time: bool = True,
                 with_order: bool = True, renamed: dict[str, str] | None = None) -> list[str]:
    """The tie rule (``planning.TIE_RULE``) as DuckDB expressions, most significant first; greater wins.

    ``renamed`` maps a rule column to the column holding it here (e.g. the source's own create_timestamp
    kept aside before stamping)."""
    from gristmill.compute.planning import ORDER, tie_columns

    parts = []
    for part in tie_columns(timestamp, has_create_timestamp=has_create_timestamp, with_time=with_time):
        if part.column == ORDER and not with_order:
            continue
        column = f"{prefix}{q((renamed or {}).get(part.column or timestamp, part.column or timestamp))}"
        parts.append(column if part.null_as is None else f"coalesce({column}, {_literal(part.null_as)})")
    return parts


def _literal(value: object) -> str:
    if isinstance(value, datetime):
        return ts_lit(value)
    if isinstance(value, int):
        return f"{value}::BIGINT"
    raise TypeError(f"no SQL literal for {value!r}")


def transpile(sql: str, dialect: str) -> str:
    """Translate DuckDB-dialect SQL to ``dialect`` (identity for duckdb)."""
    if dialect == "duckdb":
        return sql
    import sqlglot

    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


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
