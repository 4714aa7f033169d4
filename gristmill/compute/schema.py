"""Checking computed columns against the declared index columns and features: engine type names by family
(``sql_family``) and which families each declared type accepts. Engines spell the conversions themselves."""

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
