"""Feature value types, their names in YAML and their Arrow / SQL counterparts (one table)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FeatureType(StrEnum):
    """The type of an index column or feature (SPEC §1)."""

    STRING = "string"
    INTEGER = "integer"
    LONG = "long"
    FLOAT = "float"
    DOUBLE = "double"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    BINARY = "binary"
    FLOAT_VECTOR = "float_vector"

    @property
    def sql(self) -> str:
        """The SQL type name used by the engines."""
        return _SQL_TYPES[self]

    @property
    def is_numeric(self) -> bool:
        return self in _NUMERIC

    def arrow_type(self) -> Any:
        """The Arrow type of values of this type (timestamps as UTC microseconds)."""
        import pyarrow as pa

        return {
            FeatureType.STRING: pa.string(), FeatureType.INTEGER: pa.int32(), FeatureType.LONG: pa.int64(),
            FeatureType.FLOAT: pa.float32(), FeatureType.DOUBLE: pa.float64(), FeatureType.BOOLEAN: pa.bool_(),
            FeatureType.DATETIME: pa.timestamp("us", tz="UTC"), FeatureType.BINARY: pa.binary(),
            FeatureType.FLOAT_VECTOR: pa.list_(pa.float32()),
        }[self]


_SQL_TYPES: dict[FeatureType, str] = {
    FeatureType.STRING: "VARCHAR",
    FeatureType.INTEGER: "INTEGER",
    FeatureType.LONG: "BIGINT",
    FeatureType.FLOAT: "FLOAT",
    FeatureType.DOUBLE: "DOUBLE",
    FeatureType.BOOLEAN: "BOOLEAN",
    FeatureType.DATETIME: "TIMESTAMP",
    FeatureType.BINARY: "BLOB",
    FeatureType.FLOAT_VECTOR: "FLOAT[]",
}

_NUMERIC = {FeatureType.INTEGER, FeatureType.LONG, FeatureType.FLOAT, FeatureType.DOUBLE}

# Names users of other tools write, mapped to a hint (never silently accepted: `int` is ambiguous).
_TYPE_HINTS: dict[str, str] = {
    "int": "integer (32-bit) or long (64-bit)",
    "int32": "integer",
    "int64": "long",
    "bigint": "long",
    "str": "string",
    "varchar": "string",
    "bool": "boolean",
    "timestamp": "datetime",
    "float64": "double",
    "float32": "float",
    "bytes": "binary",
}

_ALIASES: dict[str, str] = {"floatvector": "float_vector", "float-vector": "float_vector"}


def parse_feature_type(value: Any) -> FeatureType:
    """Parse a type name case-insensitively; unknown names raise ValueError with the fix."""
    if isinstance(value, FeatureType):
        return value
    if not isinstance(value, str):
        raise ValueError(f"type must be a string such as 'double', got {value!r}")
    key = value.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return FeatureType(key)
    except ValueError:
        pass
    valid = ", ".join(t.value for t in FeatureType)
    if key in _TYPE_HINTS:
        raise ValueError(f"type '{value}' is not a Gristmill type; use {_TYPE_HINTS[key]}")
    raise ValueError(f"unknown type '{value}'; use one of: {valid}")
