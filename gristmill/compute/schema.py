"""Checking computed columns against the declared index columns and features."""

from __future__ import annotations

import re

from gristmill.spec.types import FeatureType

_INTEGER_SQL = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                "UBIGINT", "UHUGEINT", "INT1", "INT2", "INT4", "INT8", "INT", "LONG", "SHORT"}
_FLOAT_SQL = {"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"}


def sql_family(sql_type: str) -> str:
    """Coarse family of an engine type name: integer, decimal, float, string, boolean, datetime, binary,
    vector or other."""
    t = sql_type.upper().strip()
    if re.match(r"^(FLOAT|DOUBLE|REAL)(\[\d*\])$", t):
        return "vector"
    if t in _INTEGER_SQL:
        return "integer"
    if t.startswith("DECIMAL") or t.startswith("NUMERIC"):
        return "decimal_int" if re.search(r",\s*0\)$", t) else "decimal"
    if t in _FLOAT_SQL:
        return "float"
    if t in ("VARCHAR", "TEXT", "STRING") or t.startswith("VARCHAR"):
        return "string"
    if t in ("BOOLEAN", "BOOL"):
        return "boolean"
    if t.startswith("TIMESTAMP") or t in ("DATE", "DATETIME"):
        return "datetime"
    if t in ("BLOB", "BYTEA", "BINARY", "VARBINARY"):
        return "binary"
    return "other"


_ACCEPTS: dict[FeatureType, set[str]] = {
    FeatureType.STRING: {"string"},
    FeatureType.INTEGER: {"integer", "decimal_int"},
    FeatureType.LONG: {"integer", "decimal_int"},
    FeatureType.FLOAT: {"integer", "decimal_int", "decimal", "float"},
    FeatureType.DOUBLE: {"integer", "decimal_int", "decimal", "float"},
    FeatureType.BOOLEAN: {"boolean"},
    FeatureType.DATETIME: {"datetime"},
    FeatureType.BINARY: {"binary"},
    FeatureType.FLOAT_VECTOR: {"vector"},
}


def accepts(declared: FeatureType, sql_type: str) -> bool:
    """Whether a computed column of ``sql_type`` can be stored as ``declared`` without losing meaning."""
    return sql_family(sql_type) in _ACCEPTS[declared]


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
    from gristmill.compute.sqltext import q

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
