"""Transformations on Spark: users' ``transformation_sql`` (DuckDB's dialect, transpiled with SQLGlot) and
``transformation_code`` (an Azure-style ``pyspark.ml.Transformer``, or a Gristmill class over pandas/Arrow).

The SQL passes the same check as on DuckDB (exactly one SELECT over ``source``, no files, URLs or settings),
then a second one for what SQLGlot cannot carry to Spark: such SQL fails naming the construct instead of running
with another meaning (SQLGlot passes ``ASOF JOIN`` and ``* REPLACE`` through unchanged, and would turn DuckDB's
``TIMESTAMP`` into Spark's ``TIMESTAMP_NTZ``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gristmill.compute.planning import ORDER
from gristmill.compute.sources import load_user_class, to_arrow_table
from gristmill.compute.transformation_rules import check_transformation_sql
from gristmill.errors import TransformationError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from sqlglot import exp

    from gristmill.spec.featureset_spec import FeatureSetSpec

log = logging.getLogger("gristmill.compute")

SOURCE_PLACEHOLDER = "__gm_source_table"

#: Spark functions refused in transformations: they call JVM methods or read files
SPARK_NOT_ALLOWED = frozenset({"reflect", "java_method", "try_reflect", "read_files", "input_file_name",
                               "input_file_block_start", "input_file_block_length"})

TRANSFORMER_HINT = ("it runs on the Spark engine: set engine: {type: spark} in featurestore.yaml "
                    "(docs/engines.md)")


def to_spark_sql(sql: str, *, label: str, function_exists: Callable[[str], bool] | None = None) -> str:
    """``transformation_sql`` (DuckDB dialect) as Spark SQL over the table ``__gm_source_table``; a construct with
    no faithful Spark form raises TransformationError naming it."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        raise TransformationError(f"{label}: transformation_sql does not parse: {exc}") from None
    try:
        check_transformation_sql(sql)
    except ValueError as exc:
        raise TransformationError(f"{label}: transformation_sql: {exc}") from None
    problem = _untranslatable(tree)
    if problem is None and function_exists is not None:
        unknown = [node.name for node in tree.find_all(exp.Anonymous) if not function_exists(node.name)]
        problem = f"the function {unknown[0]}()" if unknown else None
    if problem is not None:
        raise TransformationError(f"{label}: transformation_sql uses {problem}, which has no Spark equivalent; "
                                  "rewrite it without (the Spark engine transpiles DuckDB SQL with SQLGlot)")
    own_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Identifier) and table.name.lower() == "source" and "source" not in own_names:
            table.set("this", exp.to_identifier(SOURCE_PLACEHOLDER))
    for data_type in tree.find_all(exp.DataType):
        if data_type.this == exp.DataType.Type.TIMESTAMPNTZ:
            data_type.set("this", exp.DataType.Type.TIMESTAMP)     # DuckDB TIMESTAMP = UTC time here
    try:
        text = tree.sql(dialect="spark", unsupported_level=sqlglot.ErrorLevel.RAISE)
    except sqlglot.errors.UnsupportedError as exc:
        raise TransformationError(f"{label}: transformation_sql cannot be written for Spark: {exc}") from None
    for node in sqlglot.parse_one(text, read="spark").walk():
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()   # unquoted
            if name in SPARK_NOT_ALLOWED:
                raise TransformationError(f"{label}: transformation_sql: {name} is not allowed: a transformation "
                                          "is exactly one SELECT over the table 'source'")
    if "${" in text:
        # Spark substitutes ${env:NAME}, ${system:...} and ${spark.conf} in SQL text: never in a transformation
        raise TransformationError(f"{label}: transformation_sql contains '${{': Spark would replace ${{...}} with "
                                  "environment variables or settings; write the text another way (e.g. '$' || '{')")
    return text


def _untranslatable(tree: exp.Expression) -> str | None:
    """The first DuckDB construct in ``tree`` that SQLGlot would pass to Spark unchanged or with another meaning."""
    from sqlglot import exp

    for node in tree.walk():
        if isinstance(node, exp.Join) and str(node.args.get("method") or "").upper() == "ASOF":
            return "ASOF JOIN"
        if isinstance(node, exp.Star) and node.args.get("replace"):
            return "* REPLACE (...)"
        if isinstance(node, exp.SetOperation) and node.args.get("by_name"):
            return "UNION BY NAME"
        if isinstance(node, exp.Window) and node.this is not None and node.this.find(exp.Distinct):
            return f"{node.this.sql(dialect='duckdb')} OVER (...) (DISTINCT in a window function)"
        if isinstance(node, exp.Column) and node.name.lower() == "rowid":
            return "rowid"
        if (isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string
                and node.this.name.strip().lower().lstrip("+-") == "infinity"):
            return f"'{node.this.name}' (infinite timestamps)"
    return None


def sql_rows(spark: SparkSession, source: DataFrame, sql: str, *, label: str) -> DataFrame:
    """Run ``transformation_sql`` over ``source`` on Spark. Rows keep their source order when the SQL keeps
    ``__gm_order`` (``SELECT *``), else they are ordered as the SQL returns them (as on DuckDB)."""
    from pyspark.sql import functions as F

    text = to_spark_sql(sql, label=label, function_exists=spark.catalog.functionExists)
    escaped = text.replace("{", "{{").replace("}", "}}").replace(SOURCE_PLACEHOLDER, "{source}")
    try:
        result = spark.sql(escaped, source=source)
        names = list(result.columns)
    except Exception as exc:
        raise TransformationError(f"{label}: transformation_sql failed on Spark: {_spark_message(exc)}") from None
    if ORDER in names:
        return result
    return result.withColumn(ORDER, F.monotonically_increasing_id())


def code_rows(spark: SparkSession, spec: FeatureSetSpec, source: DataFrame, *, label: str) -> DataFrame:
    """Run ``transformation_code``: a ``pyspark.ml.Transformer`` (Azure) on the source DataFrame as is; a Gristmill
    class with ``transform(pandas) -> pandas/Arrow/Polars`` distributed, once per key (``applyInPandas`` grouped
    by the index columns, SPEC §2), never by collecting the source on the driver."""
    transformation = spec.feature_transformation
    assert transformation is not None and transformation.transformation_code is not None
    code = transformation.transformation_code
    cls = load_user_class(spec.folder, code.path, code.transformer_class, what=f"{label}: transformation_code")
    if is_spark_transformer(cls):
        return _spark_transformer(cls, source.orderBy(ORDER).drop(ORDER), code.transformer_class, label=label)
    return _grouped_code(source, cls, spec.index_column_names, code.transformer_class, label=label)


SCHEMA_SAMPLE_ROWS = 1_000   # source rows the class first runs on, on the driver, to learn its output columns


def _grouped_code(source: DataFrame, cls: type, keys: list[str], name: str, *, label: str) -> DataFrame:
    """The class run per key on the executors. Its output columns and their types are learnt by running it once
    on the driver over the first rows of the source (which also reports its errors with their message); each
    key's rows reach it in source order, and its output rows get their position as source order (the tie rule
    compares rows of one key only)."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    def run(frame: Any) -> Any:
        frame = frame.sort_values(ORDER, kind="stable").drop(columns=[ORDER]).reset_index(drop=True)
        output = to_arrow_table(cls().transform(frame), what=f"{name}.transform")
        if output.num_rows != 0 or output.num_columns != 0:
            output = output.select(names)
        result = output.to_pandas()
        result[ORDER] = np.arange(len(result), dtype=np.int64)
        return result

    sample = source.orderBy(ORDER).limit(SCHEMA_SAMPLE_ROWS).toPandas()
    try:
        learnt = to_arrow_table(cls().transform(sample.drop(columns=[ORDER])), what=f"{name}.transform")
    except TransformationError:
        raise
    except Exception as exc:
        raise TransformationError(f"{label}: {name}.transform failed: {type(exc).__name__}: {exc}") from exc
    names = [n for n in learnt.column_names if n != ORDER]
    fields = []
    for field in learnt.schema:
        if field.name == ORDER:
            continue
        kind = field.type
        if pa.types.is_null(kind):                 # all null in the sample: text until a value says otherwise
            kind = pa.string()
        elif pa.types.is_timestamp(kind):
            kind = pa.timestamp("us", tz=kind.tz)
        fields.append(pa.field(field.name, kind))
    schema = from_arrow_schema(pa.schema([*fields, pa.field(ORDER, pa.int64())]))
    return source.groupBy(*keys).applyInPandas(run, schema=schema)


def _spark_transformer(cls: type, source: DataFrame, name: str, *, label: str) -> DataFrame:
    from pyspark.sql import functions as F

    try:
        output = cls().transform(source)
        columns = list(output.columns)
    except Exception as exc:
        raise TransformationError(f"{label}: {name}.transform failed: {type(exc).__name__}: "
                                  f"{_spark_message(exc)}") from exc
    if not (type(output).__module__.startswith("pyspark.sql") and hasattr(output, "schema")):
        raise TransformationError(f"{label}: {name}.transform returned {type(output).__name__}; a pyspark.ml "
                                  "Transformer must return a Spark DataFrame")
    if ORDER in columns:
        return output
    return output.withColumn(ORDER, F.monotonically_increasing_id())


def is_spark_transformer(cls: Any) -> bool:
    """Whether ``cls`` is a ``pyspark.ml.Transformer`` subclass (checked by name: pyspark need not be importable)."""
    return any(getattr(base, "__name__", "") == "Transformer" and
               getattr(base, "__module__", "").startswith("pyspark.ml") for base in getattr(cls, "__mro__", ()))


def _spark_message(error: BaseException) -> str:
    """A Spark error as one line without internal names."""
    import re

    text = str(error).strip().split("\n", 1)[0]
    text = text.replace(SOURCE_PLACEHOLDER, "source")
    text = re.sub(r"`?__gm_\w*`?", "an internal column", text)
    return text
