"""The Spark engine's feature statistics (``gristmill.compute.statistics``): the same two aggregate queries
as every engine, run by Spark SQL over a DataFrame a job already holds (its written rows)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gristmill.compute.statistics import WindowStatistics, aggregate_sql, assemble, groups_sql, numeric_ranges

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from gristmill.spec.featureset_spec import FeatureSetSpec

__all__ = ["frame_statistics"]

EPOCH = datetime(1970, 1, 1)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _from_micros(value: Any) -> Any:
    """Timestamps travel as microseconds since the epoch (the driver would shift them to its time zone)."""
    return EPOCH + timedelta(microseconds=int(value)) if isinstance(value, int) else value


def frame_statistics(frame: DataFrame, spec: FeatureSetSpec, *, start: datetime | None, end: datetime | None,
                     timestamp: str | None = None) -> WindowStatistics:
    """The statistics of ``frame``'s rows: ``spec``'s features, the newest event time from ``timestamp``
    (default: the spec's timestamp column). Two Spark jobs over ``frame`` (cache it when it is costly)."""
    from gristmill.compute.sources import unique_name

    spark = frame.sparkSession
    view = unique_name("statistics")
    frame.createOrReplaceTempView(view)
    try:
        features = [(f.name, f.type) for f in spec.features]
        newest = timestamp or spec.timestamp_column
        aggregates = list(spark.sql(aggregate_sql(view, features, newest, quote=_quote,
                                                  time_value=lambda e: f"unix_micros({e})")).collect()[0])
        sql = groups_sql(view, features, numeric_ranges(features, aggregates), quote=_quote)
        groups = [(int(r[0]), r[1], int(r[2])) for r in spark.sql(sql).collect()] if sql is not None else []
    finally:
        spark.catalog.dropTempView(view)
    return assemble(features, aggregates, groups, start=start, end=end, normalize_time=_from_micros)
