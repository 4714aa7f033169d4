"""Reading a feature set's source into Spark: the rows of ``[start, end)`` with the timestamp normalised to a UTC
``TimestampType`` and ``__gm_order`` (source order, the tie-breaker of last resort) ordered exactly as the DuckDB
engine orders them: (file index in the sorted file list, row position in the file) for files, the order of the
returned rows for custom sources, the parent's own order for derived feature sets.

Files are listed and checked (missing columns, wrong types) by the same code as the DuckDB engine, so both engines
refuse a source with the same message."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gristmill.compute.planning import INTERNAL_PREFIX, ORDER
from gristmill.compute.sources import (
    SourceReader,
    _instance,
    is_uri,
    list_files,
    load_user_class,
    resolve_local,
    to_arrow_table,
    with_order,
)
from gristmill.compute.spark.types import timestamp_literal, type_name, utc_timestamp
from gristmill.errors import SourceError
from gristmill.spec.featureset_spec import FeatureSetSpec, SourceType

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("gristmill.compute")

FILE_SHIFT = 40                    # __gm_order = (file index << 40) + row position, as the DuckDB engine
_FILE_KEY = "__gm_file_key"
_FILE_INDEX = "__gm_file_index"
FILE_INDEX_LITERAL_FILES = 256   # sources with up to this many files find a row's file index without a join


def read_source(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None, end: datetime | None, *,
                sample_rows: int | None = None) -> DataFrame:
    """The source rows whose timestamp is in ``[start, end)`` (``None`` = open), with ``__gm_order``."""
    from pyspark.sql import functions as F

    source = spec.source
    ts = spec.timestamp_column
    if source.type == SourceType.PARQUET:
        raw, what = _parquet(spark, spec)
    elif source.type == SourceType.CSV:
        raw, what = _csv(spark, spec)
    elif source.type == SourceType.DELTA:
        raw, what = _delta(spark, spec)
    elif source.type == SourceType.CUSTOM:
        raw, what = _custom(spark, spec, start, end)
    else:
        raw, what = _parent(spark, spec, start, end, sample_rows=sample_rows)
    types = {field.name: field.dataType for field in raw.schema.fields}
    if ts not in types:
        listed = "" if source.type in (SourceType.PARQUET, SourceType.CSV) else \
            f" (columns: {', '.join(n for n in types if not n.startswith(INTERNAL_PREFIX))})"
        raise SourceError(f"{what}: timestamp column '{ts}' not found{listed}; fix source.timestamp_column.name")
    fmt = source.timestamp_column.format if source.timestamp_column else None
    normalized = utc_timestamp(F.col(ts), types[ts], format=fmt)
    if normalized is None:
        raise SourceError(f"{what}: timestamp column has type {type_name(types[ts])}; it must be a timestamp, a date "
                          "or a string (ISO 8601, or give timestamp_column.format)")
    if sample_rows is not None and source.type != SourceType.FEATURESET:
        # the first rows Spark reads, as DuckDB's LIMIT takes them: sorting by source order first would scan and
        # sort the whole source (a 10M-row source then overran the 30 s check)
        raw = raw.limit(int(sample_rows))
    raw = _prefiltered(raw, ts, types[ts], start, end)
    rows = raw.withColumn(ts, normalized)
    if start is not None:
        rows = rows.where(F.col(ts) >= timestamp_literal(start))
    if end is not None:
        rows = rows.where(F.col(ts) < timestamp_literal(end))
    return rows


def _prefiltered(raw: DataFrame, ts: str, data_type: Any, start: datetime | None, end: datetime | None) -> DataFrame:
    """``raw`` with the window's bounds also applied to the stored time column itself, where it is a timestamp
    (UTC, or naive UTC): a filter on the column as stored reaches the Parquet scan (row groups and files outside
    the window are skipped), one on the normalized column does not. The normalized filter still decides."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import TimestampNTZType, TimestampType

    if not isinstance(data_type, TimestampType | TimestampNTZType):
        return raw
    kind = "timestamp_ntz" if isinstance(data_type, TimestampNTZType) else "timestamp"
    column = F.col(f"`{ts}`")
    if start is not None:
        raw = raw.where(column >= timestamp_literal(start).cast(kind))
    if end is not None:
        raw = raw.where(column < timestamp_literal(end).cast(kind))
    return raw


def _parent(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None, end: datetime | None, *,
            sample_rows: int | None) -> tuple[DataFrame, str]:
    """A derived feature set's source: the parent computed over the same range, in the parent's source order."""
    from gristmill.compute.spark.frames import feature_rows

    name, version = spec.parent_ref or ("", "")
    parent = feature_rows(spark, spec.parent, start, end, label=f"feature set {name}:{version}",
                          sample_rows=sample_rows)
    return parent.df, f"parent feature set {name}:{version}"


def _checked_files(spec: FeatureSetSpec, source_type: SourceType, reader: str) -> list[str]:
    """The source's files, sorted, each checked for the columns the spec needs (DuckDB reads the footers/headers)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        files = list_files(spec.source.path or "", spec.folder, source_type, con)
        SourceReader(con, spec)._check_files(files, reader)
    finally:
        con.close()
    return files


def _spark_path(path: str) -> str:
    """A path as Spark's Hadoop file systems name it (``s3://`` is ``s3a://`` there)."""
    if path.startswith("s3://"):
        return "s3a://" + path.removeprefix("s3://")
    return path


def _with_file_index(spark: SparkSession, frame: DataFrame, files: list[str]) -> DataFrame:
    """Add the index of each row's file in ``files`` (matched on the decoded path without scheme and host).

    Up to ``FILE_INDEX_LITERAL_FILES`` files the index is looked up in a literal map (an expression, no join:
    a broadcast join costs a Spark job per scan, 0.1-0.9 s on 2 cores); more files take a broadcast join."""
    from pyspark.sql import functions as F

    decoded = F.url_decode(F.replace(F.col("_metadata.file_path"), F.lit("+"), F.lit("%2B")))
    keyed = frame.withColumn(_FILE_KEY, F.regexp_replace(decoded, r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?", ""))
    if len(files) <= FILE_INDEX_LITERAL_FILES:
        mapping = F.create_map(*[part for i, f in enumerate(files) for part in (F.lit(_path_key(f)), F.lit(i))])
        joined = keyed.withColumn(_FILE_INDEX, F.try_element_at(mapping, F.col(_FILE_KEY)))
    else:
        table = spark.createDataFrame([(_path_key(f), i) for i, f in enumerate(files)], [_FILE_KEY, _FILE_INDEX])
        joined = keyed.join(F.broadcast(table), _FILE_KEY, "left")
    index = F.when(F.col(_FILE_INDEX).isNotNull(), F.col(_FILE_INDEX)).otherwise(
        F.raise_error(F.concat(F.lit("source file not in the listed files: "), F.col(_FILE_KEY))))
    return joined.withColumn(_FILE_INDEX, index.cast("long")).drop(_FILE_KEY)


def _path_key(path: str) -> str:
    import re

    return re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:(//[^/]*)?", "", path)


def _parquet(spark: SparkSession, spec: FeatureSetSpec) -> tuple[DataFrame, str]:
    from pyspark.sql import functions as F

    path = spec.source.path or ""
    files = _checked_files(spec, SourceType.PARQUET, "read_parquet")
    try:
        frame = spark.read.option("mergeSchema", "true").parquet(*(_spark_path(f) for f in files))
    except Exception as exc:
        raise SourceError(f"source.path '{path}': cannot read parquet: {_first_line(exc)}") from exc
    columns = list(frame.columns)
    frame = frame.select("*", F.col("_metadata.file_path"), F.col("_metadata.row_index").alias("__gm_row"))
    frame = _with_file_index(spark, frame, files)
    order = F.shiftleft(F.col(_FILE_INDEX), FILE_SHIFT) + F.col("__gm_row")
    return frame.select(*[F.col(f"`{c}`") for c in columns], order.alias(ORDER)), f"source '{path}'"


def _csv(spark: SparkSession, spec: FeatureSetSpec) -> tuple[DataFrame, str]:
    """CSV rows in file order: Spark gives no row number for CSV, so the order within a file is the split's
    byte offset plus the row's position in its split (rows are at least one byte, so splits cannot overlap)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    path = spec.source.path or ""
    files = _checked_files(spec, SourceType.CSV, "read_csv")
    try:
        frame = (spark.read.option("header", "true").option("inferSchema", "true")
                 .option("mode", "FAILFAST").csv([_spark_path(f) for f in files]))
    except Exception as exc:
        raise SourceError(f"source.path '{path}': cannot read csv: {_first_line(exc)}") from exc
    columns = list(frame.columns)
    frame = frame.select("*", F.col("_metadata.file_path"), F.col("_metadata.file_block_start").alias("__gm_block"),
                         F.monotonically_increasing_id().alias("__gm_id"))
    frame = _with_file_index(spark, frame, files)
    split = Window.partitionBy(_FILE_INDEX, "__gm_block")
    position = F.col("__gm_block") + F.col("__gm_id") - F.min("__gm_id").over(split)
    order = F.shiftleft(F.col(_FILE_INDEX), FILE_SHIFT) + position
    return frame.select(*[F.col(f"`{c}`") for c in columns], order.alias(ORDER)), f"source '{path}'"


def _delta(spark: SparkSession, spec: FeatureSetSpec) -> tuple[DataFrame, str]:
    """A Delta table: with Delta's Spark jars, ``format("delta")``; without them, the table's current files (from
    the Delta log, via deltalake) read as Parquet, partition values added from the log."""
    from deltalake import DeltaTable
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    path = spec.source.path or ""
    uri = path if is_uri(path) else str(resolve_local(path, spec.folder))
    try:
        table = DeltaTable(uri)
    except Exception as exc:
        raise SourceError(f"source.path '{path}': not a readable Delta table ({exc})") from exc
    what = f"source '{path}'"
    arrow_schema = _arrow_schema(table)
    ts = spec.timestamp_column
    if ts not in arrow_schema.names:
        raise SourceError(f"{what}: timestamp column '{ts}' not found (columns: {', '.join(arrow_schema.names)}); "
                          "fix source.timestamp_column.name")
    files = table.file_uris()
    partitions = table.metadata().partition_columns
    if _has_delta_jars(spark):
        frame = spark.read.format("delta").load(_spark_path(uri))
        columns = list(frame.columns)
        frame = frame.select("*", F.col("_metadata.file_path"), F.col("_metadata.row_index").alias("__gm_row"))
        frame = _with_file_index(spark, frame, files)
    else:
        file_schema = from_arrow_schema(arrow_schema)
        data_fields = [f for f in file_schema.fields if f.name not in partitions]
        from pyspark.sql.types import StructType

        if not files:
            empty = spark.createDataFrame([], StructType(file_schema.fields))
            return empty.withColumn(ORDER, F.lit(None).cast("long")), what
        frame = spark.read.schema(StructType(data_fields)).parquet(*(_spark_path(f) for f in files))
        columns = [f.name for f in file_schema.fields]
        frame = frame.select("*", F.col("_metadata.file_path"), F.col("_metadata.row_index").alias("__gm_row"))
        frame = _with_file_index(spark, frame, files)
        if partitions:
            values = _partition_values(table, files, partitions)
            rows = [(i, *(row.get(name) for name in partitions)) for i, row in enumerate(values)]
            names = [_FILE_INDEX, *(f"__gm_part_{n}" for n in range(len(partitions)))]
            mapping = spark.createDataFrame(rows, names) if rows else None
            if mapping is not None:
                frame = frame.join(F.broadcast(mapping), _FILE_INDEX, "left")
                for n, name in enumerate(partitions):
                    target = file_schema[name].dataType
                    frame = frame.withColumn(name, F.col(f"__gm_part_{n}").cast(target))
    order = F.shiftleft(F.col(_FILE_INDEX), FILE_SHIFT) + F.col("__gm_row")
    return frame.select(*[F.col(f"`{c}`") for c in columns], order.alias(ORDER)), what


def _arrow_schema(table: Any) -> Any:
    import pyarrow as pa

    schema = table.schema()
    return pa.schema(schema.to_arrow()) if hasattr(schema, "to_arrow") else schema.to_pyarrow()


def _partition_values(table: Any, files: list[str], partitions: list[str]) -> list[dict[str, Any]]:
    """The partition values of each file in ``files`` (strings as in the Delta log; None for null)."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    by_path: dict[str, dict[str, Any]] = {}
    for i, relative in enumerate(paths):
        by_path[relative] = {name: actions.column(f"partition.{name}")[i].as_py() for name in partitions}
    values = []
    for file in files:
        match = next((v for p, v in by_path.items() if file.endswith(p) or file.endswith(_unquote(p))), None)
        values.append(match or {})
    return values


def _unquote(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


def _has_delta_jars(spark: SparkSession) -> bool:
    try:
        extensions = spark.conf.get("spark.sql.extensions", "") or ""
    except Exception:
        return False
    return "DeltaSparkSessionExtension" in extensions


def _custom(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None,
            end: datetime | None) -> tuple[DataFrame, str]:
    """Azure's convention: ``Class(**kwargs).process(start, end, **kwargs)`` returns the window's rows — a Spark
    DataFrame (source order: its row order) or pandas / Polars / Arrow (converted on the driver)."""
    from pyspark.sql import functions as F

    source = spec.source
    code = source.source_process_code
    assert code is not None  # guaranteed by Source validation
    cls = load_user_class(spec.folder, code.path, code.process_class, what="source.source_process_code")
    try:
        rows = _instance(cls, source.kwargs).process(start, end, **source.kwargs)
    except Exception as exc:
        raise SourceError(f"custom source {code.process_class}.process failed: {type(exc).__name__}: {exc}") from exc
    what = f"custom source {code.process_class}"
    if _is_spark_dataframe(rows):
        frame = rows.drop(ORDER) if ORDER in rows.columns else rows
        return frame.withColumn(ORDER, F.monotonically_increasing_id()), what
    table = with_order(to_arrow_table(rows, what=f"{code.process_class}.process"))
    return spark.createDataFrame(table), what


def _is_spark_dataframe(value: Any) -> bool:
    return type(value).__module__.startswith("pyspark.sql") and type(value).__name__ == "DataFrame"


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n", 1)[0]
