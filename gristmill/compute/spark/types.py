"""Feature types on Spark: the Spark type of each declared type, which computed Spark columns a declared type
accepts (the DuckDB engine's rule, ``gristmill.compute.schema``, applied to Spark types), and time
normalisation of a column to a UTC ``TimestampType``.

Spark types are named by their DuckDB counterparts (``DOUBLE``, ``VARCHAR``...) so that one acceptance table
serves both engines and schema errors read the same whichever engine computed them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING

from gristmill.compute import schema
from gristmill.compute.planning import EPOCH, ONE_MICROSECOND
from gristmill.errors import SourceError
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import DataType


def spark_type(declared: FeatureType) -> DataType:
    """The Spark type a column declared as ``declared`` is stored as (timestamps: UTC ``TimestampType``)."""
    from pyspark.sql import types as T

    return {
        FeatureType.STRING: T.StringType(), FeatureType.INTEGER: T.IntegerType(), FeatureType.LONG: T.LongType(),
        FeatureType.FLOAT: T.FloatType(), FeatureType.DOUBLE: T.DoubleType(), FeatureType.BOOLEAN: T.BooleanType(),
        FeatureType.DATETIME: T.TimestampType(), FeatureType.BINARY: T.BinaryType(),
        FeatureType.FLOAT_VECTOR: T.ArrayType(T.FloatType()),
    }[declared]


#: Spark type name (``DataType.typeName()``) -> the DuckDB type name with the same meaning
_DUCKDB_NAMES: dict[str, str] = {
    "byte": "TINYINT", "short": "SMALLINT", "integer": "INTEGER", "long": "BIGINT", "float": "FLOAT",
    "double": "DOUBLE", "string": "VARCHAR", "varchar": "VARCHAR", "char": "VARCHAR", "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP", "timestamp_ntz": "TIMESTAMP", "date": "DATE", "binary": "BLOB",
}


def type_name(data_type: DataType) -> str:
    """The engine-neutral (DuckDB) name of a Spark type, used by the acceptance rule and in error messages."""
    from pyspark.sql import types as T

    if isinstance(data_type, T.DecimalType):
        return f"DECIMAL({data_type.precision},{data_type.scale})"
    if isinstance(data_type, T.ArrayType):
        inner = type_name(data_type.elementType)
        return f"{inner}[]"
    name = data_type.typeName()
    return _DUCKDB_NAMES.get(name, data_type.simpleString().upper())


def sql_family(data_type: DataType) -> str:
    """Coarse family of a Spark type (integer, decimal, float, string, boolean, datetime, binary, vector...)."""
    return schema.sql_family(type_name(data_type))


def accepts(declared: FeatureType, data_type: DataType) -> bool:
    """Whether a computed Spark column can be stored as ``declared`` without losing meaning (DuckDB's rule)."""
    return schema.accepts(declared, type_name(data_type))


def cast_expression(column: Column, declared: FeatureType, data_type: DataType) -> Column:
    """``column`` converted to the declared type (no-op when it already has it); times become UTC timestamps."""
    from pyspark.sql import types as T

    target = spark_type(declared)
    if data_type == target:
        return column
    if declared == FeatureType.DATETIME:
        converted = utc_timestamp(column, data_type)      # a Column has no truth value: test for None
        return converted if converted is not None else column.cast(T.TimestampType())
    return column.cast(target)


# -- time normalisation ------------------------------------------------------------------------------------

#: strptime directive -> Spark datetime pattern (https://spark.apache.org/docs/latest/sql-ref-datetime-pattern.html)
STRPTIME_TO_SPARK: dict[str, str] = {
    "Y": "yyyy", "y": "yy", "m": "MM", "d": "dd", "H": "HH", "I": "hh", "M": "mm", "S": "ss", "f": "SSSSSS",
    "p": "a", "b": "MMM", "h": "MMM", "B": "MMMM", "a": "EEE", "A": "EEEE", "j": "DDD", "z": "XX", "Z": "z",
    "e": "d", "-d": "d", "-m": "M", "-H": "H", "-M": "m", "-S": "s",
}


def spark_time_pattern(format: str) -> str:
    """Translate a strptime format (``%Y-%m-%d %H:%M``) into a Spark datetime pattern (``yyyy-MM-dd HH:mm``).

    Literal text is quoted; a directive Spark has no equivalent for raises SourceError naming it."""
    out: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            text = "".join(literal).replace("'", "''")
            out.append(f"'{text}'" if re.search(r"[A-Za-z\[\]#{}']", text) else text)
            literal.clear()

    i = 0
    while i < len(format):
        char = format[i]
        if char != "%":
            literal.append(char)
            i += 1
            continue
        directive = format[i + 1:i + 3] if format[i + 1:i + 2] == "-" else format[i + 1:i + 2]
        if directive == "%":
            literal.append("%")
        elif directive in STRPTIME_TO_SPARK:
            flush()
            out.append(STRPTIME_TO_SPARK[directive])
        else:
            raise SourceError(f"timestamp_column.format '{format}': %{directive} has no Spark equivalent; use "
                              f"the directives {', '.join('%' + d for d in STRPTIME_TO_SPARK)}")
        i += 1 + len(directive)
    flush()
    return "".join(out)


def utc_timestamp(column: Column, data_type: DataType, *, format: str | None = None) -> Column | None:
    """``column`` as a UTC ``TimestampType``: text parsed with ``format`` (strptime) when given, else as ISO 8601
    with any offset honoured (no offset = UTC); ``TIMESTAMP_NTZ`` and dates read as UTC. None for types that
    hold no time. Relies on the session time zone being UTC (the engine sets it)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    family = sql_family(data_type)
    if family == "string":
        if format:
            return F.to_timestamp(column, spark_time_pattern(format))
        return _iso_text(column).cast(T.TimestampType())
    if isinstance(data_type, T.TimestampType):
        return column
    if family == "datetime":
        return column.cast(T.TimestampType())
    return None


def _iso_text(column: Column) -> Column:
    """ISO 8601 text in the forms Spark's cast reads: seconds added to ``HH:MM``, an offset written ``+0200`` or
    `` +02:00`` turned into ``+02:00`` (DuckDB reads all of these)."""
    from pyspark.sql import functions as F

    with_seconds = F.regexp_replace(column, r"([T ]\d{1,2}:\d{2})(?=$|[+\-Z ])", "$1:00")
    return F.regexp_replace(with_seconds, r"(\d)\s*([+-]\d{2}):?(\d{2})$", "$1$2:$3")


def timestamp_literal(moment: datetime) -> Column:
    """A naive UTC datetime as a Spark timestamp literal, independent of the driver's and session's zones."""
    from pyspark.sql import functions as F

    return F.timestamp_micros(F.lit((moment - EPOCH) // ONE_MICROSECOND))
