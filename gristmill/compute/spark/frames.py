"""Computing a feature set over a feature window on Spark (SPEC §3), with the DuckDB engine's semantics
(``gristmill.compute.duckdb.featureframe``): read the source from ``start - max(source_lookback, longest DSL window)``,
transform, check the output against the declared schema, keep rows with ``start <= ts < end``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from gristmill.compute.planning import EPOCH, INTERNAL_PREFIX, ONE_MICROSECOND, ORDER, shifted, source_read_start
from gristmill.compute.spark import windows
from gristmill.compute.spark.sources import read_source
from gristmill.compute.spark.transform import code_rows, sql_rows
from gristmill.compute.spark.types import (
    accepts,
    cast_expression,
    spark_type,
    sql_family,
    timestamp_literal,
    type_name,
    utc_timestamp,
)
from gristmill.errors import TransformationError
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP, FeatureSetSpec, WindowExpression

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("gristmill.compute")

PROBE_TIME = "__gm_probe_ts"


@dataclass(frozen=True)
class SparkFeatureRows:
    """Computed feature rows and what they hold: the index columns (declared types), the timestamp column (UTC
    ``TimestampType``), ``create_timestamp`` when the spec produces one, the declared features and ``__gm_order``."""

    df: DataFrame
    keys: list[str]
    timestamp: str
    features: list[str]
    has_create_timestamp: bool
    # True when rows sharing (key, ts) always carry equal feature values (DSL windows: peers share a window)
    ties_are_equal: bool = False
    # Columns the transformation produced beyond the index, timestamp, create_timestamp and features
    extra_columns: tuple[str, ...] = ()


def feature_rows(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None, end: datetime | None, *,
                 label: str, sample_rows: int | None = None) -> SparkFeatureRows:
    """Compute ``spec`` over ``[start, end)`` (``None`` = open); ``sample_rows`` reads only that many source rows."""
    expressions = spec.window_expressions
    lookback = spec.source_lookback.timedelta if spec.source_lookback else None
    read_start = source_read_start(start, source_lookback=lookback,
                                   max_window=spec.max_window if expressions is not None else None)
    log.debug("computing %s over [%s, %s) on Spark, reading source from %s", label, start, end, read_start)
    source = read_source(spark, spec, read_start, end, sample_rows=sample_rows)
    transformation = spec.feature_transformation
    if expressions is not None:
        transformed = window_rows(spec, source, expressions)
    elif transformation and transformation.transformation_sql:
        transformed = sql_rows(spark, source, transformation.transformation_sql, label=label)
    elif transformation and transformation.transformation_code:
        transformed = code_rows(spark, spec, source, label=label)
    else:
        transformed = source
    return checked_rows(spec, transformed, start, end, label=label, ties_are_equal=expressions is not None)


def window_rows(spec: FeatureSetSpec, source: DataFrame, expressions: list[WindowExpression]) -> DataFrame:
    """Per-event window aggregation: every source row with the aggregates of its key's window ending at its time."""
    from pyspark.sql import functions as F

    keys = spec.index_column_names
    ts = spec.timestamp_column
    _check_source_columns(source, expressions)
    has_create = CREATE_TIMESTAMP in source.columns
    carry = [*keys, ts, *([CREATE_TIMESTAMP] if has_create else []), ORDER]
    needed = list(dict.fromkeys([*carry, *(e.source_column for e in expressions if e.source_column)]))
    rows = windows.prepared_data(source.select(*[F.col(f"`{c}`") for c in needed]), timestamp=ts)
    hot = windows.hot_keys(rows, keys)
    output = [*[F.col(f"`{c}`") for c in carry], *[F.col(f"`{e.feature_name}`") for e in expressions]]
    if hot is None:
        return windows.sliding_values(rows, keys=keys, expressions=expressions).select(*output)
    # Hot keys take the near-linear path, the others Spark's sliding frames (faster on ordinary keys)
    log.info("keys with more than %d rows: their DSL windows take the near-linear path", windows.HOT_KEY_ROWS)
    matches = [F.col(f"`{k}`").eqNullSafe(F.col(f"__gm_hk_{i}")) for i, k in enumerate(keys)]
    hot_named = F.broadcast(hot.select(*[F.col(f"`{k}`").alias(f"__gm_hk_{i}") for i, k in enumerate(keys)]))
    condition = matches[0]
    for match in matches[1:]:
        condition = condition & match
    ordinary = rows.join(hot_named, condition, "left_anti")
    rows = rows.join(hot_named, condition, "left_semi")
    sliding = windows.sliding_values(ordinary, keys=keys, expressions=expressions).select(*output)
    return sliding.unionByName(_near_linear(rows, keys, carry, expressions))


def _near_linear(rows: DataFrame, keys: list[str], carry: list[str],
                 expressions: list[WindowExpression]) -> DataFrame:
    from pyspark.sql import functions as F

    data = rows
    queries = data.select(*keys, F.col(windows.TIME).alias(windows.QUERY)).distinct()
    values = windows.window_values(data, queries, keys=keys, expressions=expressions)
    renamed = values.select(*[F.col(f"`{k}`").alias(f"__gm_vk_{i}") for i, k in enumerate(keys)], windows.QUERY,
                            *[F.col(f"`{e.feature_name}`") for e in expressions])
    condition = F.col(windows.TIME) == F.col(windows.QUERY)
    for i, key in enumerate(keys):
        condition = condition & F.col(f"`{key}`").eqNullSafe(F.col(f"__gm_vk_{i}"))
    joined = rows.join(renamed, condition, "left")
    return joined.select(*[F.col(f"`{c}`") for c in carry], *[F.col(f"`{e.feature_name}`") for e in expressions])


def probe_rows(spark: SparkSession, spec: FeatureSetSpec, probes: DataFrame, *, label: str) -> SparkFeatureRows:
    """As-of-observation aggregation: the DSL windows ending exactly at each probe time.

    ``probes`` has the index columns and ``__gm_probe_ts``; the result has one row per distinct probe, with the
    timestamp column set to the probe time."""
    from pyspark.sql import functions as F

    expressions = spec.window_expressions or []
    keys = spec.index_column_names
    ts = spec.timestamp_column
    low, high = probes.agg(F.min(PROBE_TIME), F.max(PROBE_TIME)).first() or (None, None)
    if low is None or high is None:
        low = high = EPOCH
    low, high = _naive(low), _naive(high)
    source = read_source(spark, spec, shifted(low, -spec.max_window), shifted(high, ONE_MICROSECOND))
    _check_source_columns(source, expressions)
    has_create = CREATE_TIMESTAMP in source.columns
    key_types = {c.name: c.type for c in spec.index_columns}
    source_types = {f.name: f.dataType for f in source.schema.fields}
    needed = list(dict.fromkeys([*keys, ts, *([CREATE_TIMESTAMP] if has_create else []), ORDER,
                                 *(e.source_column for e in expressions if e.source_column)]))
    typed = source.select(*[
        (cast_expression(F.col(f"`{c}`"), key_types[c], source_types[c]).alias(c)
         if c in key_types and c in source_types and accepts(key_types[c], source_types[c]) else F.col(f"`{c}`"))
        for c in needed])
    data = windows.prepared_data(typed, timestamp=ts).where(F.col(windows.TIME) != windows.NO_TIME)
    queries = probes.select(*[F.col(f"`{k}`").cast(spark_type(key_types[k])).alias(k) for k in keys],
                            F.unix_micros(F.col(PROBE_TIME)).alias(windows.QUERY))
    queries = queries.where(F.col(windows.QUERY).isNotNull()).distinct()
    values = windows.window_values(data, queries, keys=keys, expressions=expressions)
    out = values.select(*[F.col(f"`{k}`") for k in keys], F.timestamp_micros(F.col(windows.QUERY)).alias(ts),
                        *([F.lit(None).cast("timestamp").alias(CREATE_TIMESTAMP)] if has_create else []),
                        *[F.col(f"`{e.feature_name}`") for e in expressions], F.lit(-1).cast("long").alias(ORDER))
    return checked_rows(spec, out, None, None, label=label, ties_are_equal=True)


def _naive(value: datetime) -> datetime:
    from datetime import UTC

    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _check_source_columns(source: DataFrame, expressions: list[WindowExpression]) -> None:
    names = list(source.columns)
    for expression in expressions:
        if expression.source_column is not None and expression.source_column not in names:
            shown = ", ".join(n for n in names if not n.startswith(INTERNAL_PREFIX))
            raise TransformationError(
                f"transformation_expressions: {expression.feature_name}: source_column "
                f"'{expression.source_column}' not in the source (columns: {shown})")


def checked_rows(spec: FeatureSetSpec, frame: DataFrame, start: datetime | None, end: datetime | None, *,
                 label: str, ties_are_equal: bool = False) -> SparkFeatureRows:
    """Select the declared columns with their declared types and keep rows with ``start <= ts < end``; a missing
    or mistyped column fails with the DuckDB engine's message."""
    from pyspark.sql import functions as F

    types = {f.name: f.dataType for f in frame.schema.fields}
    ts = spec.timestamp_column
    problems = []
    select = []
    for column in spec.index_columns:
        if column.name not in types:
            problems.append(f"index column '{column.name}' is missing")
        elif not accepts(column.type, types[column.name]):
            problems.append(f"index column '{column.name}' is {type_name(types[column.name])}, declared "
                            f"{column.type.value}")
        else:
            select.append(cast_expression(F.col(f"`{column.name}`"), column.type, types[column.name])
                          .alias(column.name))
    if ts not in types:
        problems.append(f"timestamp column '{ts}' is missing")
    elif sql_family(types[ts]) not in ("datetime", "string"):
        problems.append(f"timestamp column '{ts}' is {type_name(types[ts])}, expected a timestamp")
    else:
        select.append(_timestamp(F.col(f"`{ts}`"), types[ts]).alias(ts))
    has_create = CREATE_TIMESTAMP in types
    if has_create:
        select.append(_timestamp(F.col(CREATE_TIMESTAMP), types[CREATE_TIMESTAMP]).alias(CREATE_TIMESTAMP))
    for feature in spec.features:
        if feature.name not in types:
            problems.append(f"feature '{feature.name}' is missing")
        elif not accepts(feature.type, types[feature.name]):
            problems.append(f"feature '{feature.name}' is {type_name(types[feature.name])}, declared "
                            f"{feature.type.value} (change the declared type or cast in the transformation)")
        else:
            select.append(cast_expression(F.col(f"`{feature.name}`"), feature.type, types[feature.name])
                          .alias(feature.name))
    if problems:
        available = ", ".join(n for n in types if not n.startswith(INTERNAL_PREFIX))
        raise TransformationError(f"{label}: output does not match the declared schema: "
                                  f"{'; '.join(problems)} (output columns: {available})")
    select.append(F.col(ORDER).cast("long").alias(ORDER) if ORDER in types else F.lit(None).cast("long").alias(ORDER))
    rows = frame.select(*select)
    if start is not None:
        rows = rows.where(F.col(f"`{ts}`") >= timestamp_literal(start))
    if end is not None:
        rows = rows.where(F.col(f"`{ts}`") < timestamp_literal(end))
    known = {*spec.index_column_names, ts, CREATE_TIMESTAMP, *spec.feature_names, ORDER}
    return SparkFeatureRows(df=rows, keys=spec.index_column_names, timestamp=ts, features=spec.feature_names,
                            has_create_timestamp=has_create, ties_are_equal=ties_are_equal,
                            extra_columns=tuple(n for n in types if n not in known
                                                and not n.startswith(INTERNAL_PREFIX)))


def _timestamp(column: object, data_type: object) -> object:
    from pyspark.sql import functions as F

    converted = utc_timestamp(column, data_type)  # type: ignore[arg-type]
    return converted if converted is not None else F.to_timestamp(column)  # type: ignore[arg-type]
