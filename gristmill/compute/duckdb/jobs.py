"""The DuckDB engine's materialization of one feature window ``[start, end)`` (SPEC §3 "Materialization"):
compute, de-duplicate (key, ts) by the tie rule, stamp ``create_timestamp`` when absent, then write the
offline store's files (committed by the store) and the online store's newest row per key; and reading
materialized files back."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gristmill.compute.duckdb.featureframe import ComputedView, compute_view
from gristmill.compute.duckdb.sqltext import (
    cols,
    lit,
    q,
    repeated_times_sql,
    tie_rule_sql,
    ts_lit,
    utc_switched_select,
)
from gristmill.compute.planning import declared_schema
from gristmill.compute.sources import ORDER, is_uri, unique_name
from gristmill.jobs.materialize import MaterializationResult
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP, FeatureSetSpec
from gristmill.stores.online.base import EVENT_TIMESTAMP

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from gristmill.compute.duckdb.engine import DuckDBEngine
    from gristmill.compute.statistics import WindowStatistics
    from gristmill.registry.materialization import OnlineOutcome
    from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable, WindowWrite, WriteStats
    from gristmill.stores.online.base import OnlineStore, OnlineTable

log = logging.getLogger("gristmill.jobs")

BATCH_ROWS = 250_000  # rows per Arrow batch streamed from the engine to the offline store
GIVEN_CREATE = "__gm_given_create"  # the source's create_timestamp, before stamping


def deduplicated_rows(con: duckdb.DuckDBPyConnection, view: ComputedView, *, stamp: datetime) -> str:
    """A temp table of ``view``'s rows, one per (key, ts) chosen by the tie rule, with ``create_timestamp``
    stamped where absent.

    The view is computed once, into the table; only when that table holds a duplicated (key, ts) (a hash
    aggregate finds out, ~4x cheaper than the tie-rule window over every row) is it rebuilt without them."""
    create = (f"coalesce({q(CREATE_TIMESTAMP)}, {ts_lit(stamp)})" if view.has_create_timestamp
              else ts_lit(stamp))
    keyed = f"{cols(view.keys)}, {q(view.timestamp)}"
    # the tie rule needs the source's own create time (a row without one loses), not the stamped one
    given = f"{q(CREATE_TIMESTAMP)} AS {q(GIVEN_CREATE)}, " if view.has_create_timestamp else ""
    helpers = [q(ORDER), *([q(GIVEN_CREATE)] if view.has_create_timestamp else [])]
    rows = unique_name("rows")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {rows} AS SELECT {keyed}, {create} AS {q(CREATE_TIMESTAMP)}, "
                f"{given}{q(ORDER)}{''.join(', ' + q(f) for f in view.features)} FROM {view.name}")
    duplicated = con.execute(repeated_times_sql(rows, view.keys, view.timestamp)).fetchall()[0][0]
    name = unique_name("dedup")
    if not duplicated:
        for helper in helpers:
            con.execute(f"ALTER TABLE {rows} DROP COLUMN {helper}")
        con.execute(f"ALTER TABLE {rows} RENAME TO {name}")
        return name
    log.info("%d (key, time) pairs occur more than once; keeping one row each by the tie rule", duplicated)
    order = [f"{part} DESC" for part in tie_rule_sql(view.timestamp, has_create_timestamp=view.has_create_timestamp,
                                                       with_time=False, renamed={CREATE_TIMESTAMP: GIVEN_CREATE})]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {keyed}, {q(CREATE_TIMESTAMP)}"
        f"{''.join(', ' + q(f) for f in view.features)} FROM {rows} "
        f"QUALIFY row_number() OVER (PARTITION BY {keyed} ORDER BY {', '.join(order)}) = 1")
    con.execute(f"DROP TABLE {rows}")
    return name


def latest_per_key_sql(relation: str, keys: list[str], timestamp: str, features: list[str], *,
                       alive_after: datetime | None, has_order: bool, has_create: bool = True) -> str:
    """The newest row per key, by the tie rule (keys with a null part are never looked up, so they are left
    out). Rows already expired (``ts <= alive_after``) are dropped first: they can never be written, and
    filtering before the window function is ~20x cheaper than after it."""
    conditions = [f"{q(k)} IS NOT NULL" for k in keys]
    if alive_after is not None:
        conditions.append(f"{q(timestamp)} > {ts_lit(alive_after)}")
    order = [f"{part} DESC" for part in tie_rule_sql(timestamp, has_create_timestamp=has_create,
                                                       with_order=has_order)]
    create = q(CREATE_TIMESTAMP) if has_create else f"CAST(NULL AS TIMESTAMP) AS {q(CREATE_TIMESTAMP)}"
    # sorted by key: B-tree friendly for SQLite, harmless elsewhere
    return (f"SELECT {cols(keys)}, {q(timestamp)} AS {EVENT_TIMESTAMP}, {create}"
            f"{''.join(', ' + q(f) for f in features)} FROM {relation} WHERE {' AND '.join(conditions)} "
            f"QUALIFY row_number() OVER (PARTITION BY {cols(keys)} ORDER BY {', '.join(order)}) = 1 "
            f"ORDER BY {cols(keys)}")


def materialize_window(engine: DuckDBEngine, spec: FeatureSetSpec, start: datetime, end: datetime, *,
                       now: datetime, label: str,
                       offline: tuple[DeltaOfflineStore, OfflineTable] | None = None,
                       online: tuple[OnlineStore, OnlineTable] | None = None,
                       online_from_offline: bool = False) -> MaterializationResult:
    """Compute ``[start, end)`` and write it to the given stores.

    With ``online_from_offline`` the online rows are read from the offline store (a Complete window)
    instead of being recomputed from source."""
    cpu_started = time.process_time()
    con = engine.connect()
    try:
        bytes_written = 0
        rows_written = 0
        has_order = False
        has_create = True
        expired_part: str | None = None      # online only: the window's rows before the live ones start
        if online_from_offline and offline is not None and online is not None:
            offline_store, offline_table = offline
            relation = register_offline(con, offline_store, offline_table, [(start, end)],
                                        schema=declared_schema(spec))
            rows_read = _count(con, relation)
        elif offline is None:
            # online only: no de-duplicated copy of the window is needed, just the newest row per key, and
            # rows already expired at `now` can never be written, so the computation starts where they end
            # (DSL windows still read their history before that point)
            ttl = online[1].ttl if online is not None else None
            alive_from = max(start, now - ttl) if ttl is not None else start
            view = compute_view(con, spec, min(alive_from, end), end, label=label)
            relation, has_order, has_create = view.name, True, view.has_create_timestamp
            if alive_from > start:           # only its keys and times are read, to count expired keys
                expired_part = compute_view(con, spec, start, min(alive_from, end), label=label).name
            # rows read: the whole window's, the expired part's included (as the Spark engine counts them)
            rows_read = _count(con, relation) + (_count(con, expired_part) if expired_part else 0)
        else:
            view = compute_view(con, spec, start, end, label=label)
            relation = deduplicated_rows(con, view, stamp=now)
            rows_read = _count(con, relation)
            if offline is not None:
                offline_store, offline_table = offline
                stats = write_offline_window(con, offline_store, offline_table, relation, start, end)
                bytes_written += stats.bytes
                rows_written += stats.rows
        outcome = None
        if online is not None:
            online_store, online_table = online
            ttl = online_table.ttl
            rows = _arrow(con, latest_per_key_sql(relation, spec.index_column_names, spec.timestamp_column,
                                                  spec.feature_names, alive_after=now - ttl if ttl else None,
                                                  has_order=has_order, has_create=has_create))
            keys_written = online_store.write(online_table, rows, now=now)
            rows_written += keys_written
            bytes_written += rows.nbytes
            outcome = online_outcome(con, [relation, *([expired_part] if expired_part else [])],
                                     spec.index_column_names, spec.timestamp_column, ttl=ttl, now=now,
                                     keys_written=keys_written)
            written_online = unique_name("online_rows")
            con.register(written_online, rows)
        statistics = written_statistics(con, spec, start, end, label=label,
                                        offline=relation if offline is not None and not online_from_offline
                                        else None,
                                        online=written_online if online is not None else None)
        return MaterializationResult(rows_read=rows_read, rows_written=rows_written, bytes_written=bytes_written,
                                     cpu_seconds=time.process_time() - cpu_started,
                                     online=outcome if online is not None else None, statistics=statistics)
    finally:
        con.close()


def written_statistics(con: duckdb.DuckDBPyConnection, spec: FeatureSetSpec, start: datetime, end: datetime, *,
                       label: str, offline: str | None, online: str | None) -> dict[str, WindowStatistics]:
    """The statistics of what each store just got: the window's rows (offline), the newest row per key
    (online). Two aggregate queries per store over relations the job already holds; statistics that fail
    are logged and left out, never failing the job whose data is written."""
    from gristmill.compute.duckdb.statistics import window_statistics

    found: dict[str, WindowStatistics] = {}
    for kind, relation, timestamp in (("offline", offline, spec.timestamp_column),
                                      ("online", online, EVENT_TIMESTAMP)):
        if relation is None:
            continue
        started = time.perf_counter()
        try:
            found[kind] = window_statistics(con, relation, spec, start=start, end=end, timestamp=timestamp)
            log.debug("%s: statistics of the %s rows of [%s, %s) in %.3f s", label, kind, start, end,
                      time.perf_counter() - started)
        except Exception as exc:
            log.warning("%s: statistics of the %s rows of [%s, %s) not computed: %s", label, kind, start, end, exc)
    return found


def online_outcome(con: duckdb.DuckDBPyConnection, relations: list[str], keys: list[str], timestamp: str, *,
                   ttl: timedelta | None, now: datetime, keys_written: int) -> OnlineOutcome:
    """How many keys of the window were skipped as already expired (their newest row's event time + ``ttl``
    is at or before ``now``), and the window's newest event time. One hash aggregate over the keys and
    times of ``relations`` (a view's unused feature columns are not computed)."""
    from gristmill.registry.materialization import OnlineOutcome

    not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in keys) or "TRUE"
    parts = " UNION ALL ".join(f"SELECT {cols(keys) + ', ' if keys else ''}{q(timestamp)} AS t FROM {r} "
                               f"WHERE {not_null}" for r in relations)
    grouped = f"GROUP BY {cols(keys)}" if keys else ""
    expired = f"count(*) FILTER (WHERE newest <= {ts_lit(now - ttl)})" if ttl is not None else "0"
    count, newest = con.execute(f"SELECT {expired}, max(newest) FROM (SELECT max(t) AS newest FROM ({parts}) "
                                f"{grouped})").fetchall()[0]
    newest = _naive(newest)
    return OnlineOutcome(keys_written=keys_written, keys_expired=int(count or 0), newest_event_time=newest,
                         expires_at=newest + ttl if newest is not None and ttl is not None else None)


def _naive(value: datetime | None) -> datetime | None:
    """A DuckDB timestamp as naive UTC (``TIMESTAMPTZ`` comes back aware)."""
    if value is None or value.tzinfo is None:
        return value
    from datetime import UTC

    return value.astimezone(UTC).replace(tzinfo=None)


def _count(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0])


def _arrow_reader(con: duckdb.DuckDBPyConnection, sql: str) -> pa.RecordBatchReader:
    """Stream a query's rows in batches (``to_arrow_reader`` on DuckDB >= 1.4, ``fetch_record_batch`` before)."""
    relation = con.sql(sql)
    reader = getattr(relation, "to_arrow_reader", None)
    return reader(BATCH_ROWS) if reader is not None else relation.fetch_record_batch(BATCH_ROWS)


def _arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    from gristmill.compute.result import arrow_table

    return arrow_table(con.sql(sql))


def register_offline(con: duckdb.DuckDBPyConnection, store: DeltaOfflineStore, table: OfflineTable,
                     windows: list[tuple[datetime, datetime]], *, schema: pa.Schema) -> str:
    """A view of the stored rows whose timestamp lies in one of ``windows`` (one snapshot of the files the
    store hands over), timestamps as naive UTC."""
    import pyarrow as pa

    view = unique_name("offline")
    wanted = [*table.keys, table.timestamp, CREATE_TIMESTAMP, *table.features]
    files = list(store.files(table, windows).files)
    if files and not is_uri(store.table_uri(table)):
        source = f"read_parquet([{', '.join(lit(f) for f in files)}])"
    elif files:                          # object storage: read through pyarrow's file systems
        source = unique_name("offline_ds")
        con.register(source, store.dataset(table))
    else:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {cols(wanted)} FROM "
                    f"{_empty(con, pa.Table.from_batches([], schema=schema))} WHERE FALSE")
        return view
    ts = q(table.timestamp)
    condition = " OR ".join(f"({ts} >= {ts_lit(s)} AND {ts} < {ts_lit(e)})" for s, e in windows)
    select = utc_switched_select(wanted, {table.timestamp, CREATE_TIMESTAMP})
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {select} FROM {source} WHERE {condition}")
    return view


def _empty(con: duckdb.DuckDBPyConnection, table: pa.Table) -> str:
    name = unique_name("offline_empty")
    con.register(name, table)
    return name


def write_offline_window(con: duckdb.DuckDBPyConnection, store: DeltaOfflineStore, table: OfflineTable,
                         relation: str, start: datetime, end: datetime) -> WriteStats:
    """Replace ``[start, end)`` of the offline table with the rows of ``relation``.

    On a local folder DuckDB writes the Parquet files itself (about twice as fast and ~1 GiB lighter than the
    Delta writer on 3M rows) and the store commits them: the affected day partitions are rewritten — the new
    window's rows plus the stored rows of those days outside the window. Object storage goes through the
    Delta writer."""
    from gristmill.compute.result import arrow_table

    if is_uri(store.table_uri(table)):
        return store.write_window(table, arrow_table(con.sql(f"SELECT * FROM {relation}")), start, end)
    ts = q(table.timestamp)
    columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
    select = utc_switched_select(columns, {table.timestamp, CREATE_TIMESTAMP})
    schema = arrow_table(con.sql(f"SELECT {select} FROM {relation} LIMIT 0")).schema

    def write(target: WindowWrite) -> None:
        day = target.day_column
        new_rows = f"SELECT {select}, CAST({ts} AS DATE) AS {day} FROM {relation}"
        kept = ""
        if target.stored_files:
            files = ", ".join(lit(f) for f in target.stored_files)
            kept = (f" UNION ALL BY NAME SELECT {', '.join(q(c) for c in columns)}, CAST({ts} AS DATE) AS {day} "
                    f"FROM read_parquet([{files}]) WHERE NOT ({ts} >= {tz_lit(target.start)} "
                    f"AND {ts} < {tz_lit(target.end)})")
        con.execute(f"COPY ({new_rows}{kept}) TO {lit(target.uri)} (FORMAT parquet, PARTITION_BY ({day}), "
                    f"APPEND true, FILENAME_PATTERN '{target.file_prefix}-{{uuid}}')")

    return store.replace_window(table, start, end, schema=schema, write=write)


def tz_lit(value: datetime) -> str:
    """A UTC ``TIMESTAMPTZ`` literal."""
    return f"TIMESTAMPTZ '{value.replace(tzinfo=None).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
