"""Small helpers that spell SQL fragments (identifiers, literals, intervals, casts) in DuckDB's dialect.

The SQL Gristmill builds is plain ANSI-ish SQL in DuckDB's dialect; ``transpile`` turns it into another
engine's dialect with SQLGlot, so the semantics are written once."""

from __future__ import annotations

from datetime import datetime, timedelta

from gristmill.compute.schema import sql_family
from gristmill.spec.types import FeatureType


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


def repeated_times_sql(relation: str, keys: list[str], timestamp: str, *, non_null_keys: bool = False) -> str:
    """SQL counting the (key, ts) pairs of ``relation`` held by more than one row: the pairs the tie rule has
    to decide. One hash aggregate over the key and time columns (~4x cheaper than ordering every row by the
    tie rule); ``non_null_keys`` leaves out rows with a null key part (they never match in a join)."""
    keyed = f"{cols(keys)}, {q(timestamp)}" if keys else q(timestamp)
    where = " WHERE " + " AND ".join(f"{q(k)} IS NOT NULL" for k in keys) if non_null_keys and keys else ""
    return f"SELECT count(*) FROM (SELECT 1 FROM {relation}{where} GROUP BY {keyed} HAVING count(*) > 1)"


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


def cast_expression(column_sql: str, declared: FeatureType, sql_type: str) -> str:
    """The expression that converts an accepted column to the declared type (no-op when equal)."""
    if sql_type.upper() == declared.sql:
        return column_sql
    if declared == FeatureType.DATETIME and sql_type.upper().startswith("TIMESTAMP WITH"):
        return f"timezone('UTC', {column_sql})"
    return f"CAST({column_sql} AS {declared.sql})"


def utc_switched_select(columns: list[str], times: set[str]) -> str:
    """A select list of ``columns`` with the ``times`` columns switched between naive UTC (``TIMESTAMP``) and
    zone-aware UTC (``TIMESTAMPTZ``): ``timezone('UTC', x)`` maps each to the other. Results hand times
    over zone-aware (Arrow ``timestamp[us, UTC]``, Delta's timestamp) and the engine reads them back naive."""
    return ", ".join(f"timezone('UTC', {q(c)}) AS {q(c)}" if c in times else q(c) for c in columns)


def utc_timestamp_sql(expression: str, sql_type: str, *, format: str | None = None) -> str | None:
    """SQL turning ``expression`` (engine type ``sql_type``) into a naive UTC ``TIMESTAMP`` — the one place
    times are normalised (sources, transformation outputs, observations). Text is parsed with ``format``
    (strptime) when given, else as ISO 8601 with any offset honoured (no offset = UTC); zone-aware times are
    converted to UTC. None for types that hold no time."""
    upper = sql_type.upper()
    family = sql_family(sql_type)
    if family == "string":
        if format:
            parsed = f"strptime({expression}, '{format.replace(chr(39), chr(39) * 2)}')"
            return f"timezone('UTC', {parsed})" if "%z" in format or "%Z" in format else parsed
        return f"timezone('UTC', CAST({expression} AS TIMESTAMPTZ))"
    if upper == "TIMESTAMP":
        return expression
    if upper.startswith("TIMESTAMP WITH") or upper == "TIMESTAMPTZ":
        return f"timezone('UTC', {expression})"
    if family == "datetime":
        return f"CAST({expression} AS TIMESTAMP)"
    return None
