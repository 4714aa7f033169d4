"""The DuckDB engine's feature statistics (``gristmill.compute.statistics``): two aggregate queries over a
relation the engine already holds (a materialization job's written rows, or a bounded on-demand
computation)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from gristmill.compute.duckdb.sqltext import q
from gristmill.compute.statistics import WindowStatistics, aggregate_sql, assemble, groups_sql, numeric_ranges

if TYPE_CHECKING:
    import duckdb

    from gristmill.spec.featureset_spec import FeatureSetSpec

__all__ = ["window_statistics"]


def window_statistics(con: duckdb.DuckDBPyConnection, relation: str, spec: FeatureSetSpec, *,
                      start: datetime | None, end: datetime | None, timestamp: str | None = None
                      ) -> WindowStatistics:
    """The statistics of ``relation``'s rows: ``spec``'s features, the newest event time from ``timestamp``
    (default: the spec's timestamp column)."""
    from gristmill.compute.duckdb.jobs import _naive

    features = [(f.name, f.type) for f in spec.features]
    newest = timestamp or spec.timestamp_column
    aggregates = con.execute(aggregate_sql(relation, features, newest, quote=q)).fetchall()[0]
    sql = groups_sql(relation, features, numeric_ranges(features, aggregates), quote=q)
    groups = con.execute(sql).fetchall() if sql is not None else []
    return assemble(features, aggregates, groups, start=start, end=end, normalize_time=_naive)
