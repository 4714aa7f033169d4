"""Feature statistics in the registry database, next to the jobs that computed them:

    feature_statistics   (feature set, version, store, window start, window end) -> the job, its
                         materialization version, rows, newest event time, computed_at, the features' statistics

A job records the statistics of what each store got from it (``compute/statistics.py``). A window written
again replaces the statistics of every window it overlaps in that store, as its data replaced theirs.
Tables are created with the materialization tables (same ``MetaData``), on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from gristmill.compute.statistics import FeatureStatistics, WindowStatistics
from gristmill.jobs.intervals import naive_utc
from gristmill.registry.materialization import (
    EVENT_TIME,
    NAME,
    STORE,
    TIMESTAMP,
    VERSION,
    MaterializationRecords,
    _aware_utc,
    _now,
    _store_kind,
    metadata,
)

__all__ = ["StatisticsRecords"]

feature_statistics = sa.Table(
    "feature_statistics",
    metadata,
    sa.Column("feature_set", NAME, primary_key=True),
    sa.Column("version", VERSION, primary_key=True),
    sa.Column("store", STORE, primary_key=True),
    sa.Column("window_start", EVENT_TIME, primary_key=True),
    sa.Column("window_end", EVENT_TIME, primary_key=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("materialization_version", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("newest_event_time", EVENT_TIME, nullable=True),
    sa.Column("computed_at", TIMESTAMP, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),     # [FeatureStatistics.to_dict(), ...]
)


class StatisticsRecords:
    """The feature statistics of materialized windows, kept in a registry's database."""

    def __init__(self, records: MaterializationRecords) -> None:
        self.records = records

    def save(self, name: str, version: str | int, *, job_id: str, statistics: Mapping[str, WindowStatistics],
             materialization_versions: Mapping[str, int]) -> None:
        """Record a job's statistics per store, replacing those of the windows its windows overlap."""
        with self.records._transaction(write=True) as conn:
            for store, window in statistics.items():
                kind = _store_kind(store)
                start, end = naive_utc(window.start), naive_utc(window.end)
                key = (feature_statistics.c.feature_set == name, feature_statistics.c.version == str(version),
                       feature_statistics.c.store == kind)
                conn.execute(sa.delete(feature_statistics).where(
                    *key, feature_statistics.c.window_start < end, feature_statistics.c.window_end > start))
                conn.execute(sa.insert(feature_statistics).values(
                    feature_set=name, version=str(version), store=kind, window_start=start, window_end=end,
                    job_id=job_id, materialization_version=int(materialization_versions.get(kind, 1)),
                    rows=window.rows, newest_event_time=window.newest_event_time, computed_at=_now(),
                    features=[f.to_dict() for f in window.features]))

    def windows(self, name: str, version: str | int, store: str, *, materialization_version: int,
                start: datetime | None = None, end: datetime | None = None) -> list[WindowStatistics]:
        """The statistics of one store's windows of its current ``materialization_version`` (older ones
        describe data dropped since), oldest first; ``start``/``end`` keep the windows overlapping them."""
        kind = _store_kind(store)
        table = feature_statistics
        query = sa.select(table).where(table.c.feature_set == name, table.c.version == str(version),
                                       table.c.store == kind,
                                       table.c.materialization_version == materialization_version)
        if start is not None:
            query = query.where(table.c.window_end > start)
        if end is not None:
            query = query.where(table.c.window_start < end)
        with self.records._transaction() as conn:
            rows = conn.execute(query.order_by(table.c.window_start)).mappings().all()
        return [WindowStatistics(
            start=naive_utc(r["window_start"]), end=naive_utc(r["window_end"]), rows=int(r["rows"]),
            newest_event_time=naive_utc(r["newest_event_time"]) if r["newest_event_time"] else None,
            features=tuple(FeatureStatistics.from_dict(f) for f in r["features"]),
            computed_at=_aware_utc(r["computed_at"]), job_id=r["job_id"], store=kind) for r in rows]

    def newest_event_time(self, name: str, version: str | int, store: str, *,
                          materialization_version: int) -> datetime | None:
        """The newest event time among the store's recorded windows (None: none recorded)."""
        table = feature_statistics
        with self.records._transaction() as conn:
            value = conn.execute(sa.select(sa.func.max(table.c.newest_event_time)).where(
                table.c.feature_set == name, table.c.version == str(version), table.c.store == _store_kind(store),
                table.c.materialization_version == materialization_version)).scalar()
        return naive_utc(value) if value is not None else None
