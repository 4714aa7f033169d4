"""Small helpers that spell SQL fragments (identifiers, literals, intervals) for the engines.

The SQL Gristmill builds is plain ANSI-ish SQL in DuckDB's dialect; ``transpile`` turns it into another
engine's dialect with SQLGlot, so the semantics are written once."""

from __future__ import annotations

from datetime import datetime, timedelta


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


def transpile(sql: str, dialect: str) -> str:
    """Translate DuckDB-dialect SQL to ``dialect`` (identity for duckdb)."""
    if dialect == "duckdb":
        return sql
    import sqlglot

    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]
