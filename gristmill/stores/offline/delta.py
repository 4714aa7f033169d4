"""The offline store: one Delta Lake table per feature set version and materialization version,
partitioned by event day, on a local folder or object storage.

Writing a window ``[s, e)`` replaces every stored row with ``s <= ts < e`` in one Delta commit (a
predicate overwrite): rows outside the window are untouched, and readers see the old or the new window,
never half of it (the commit is atomic; a killed writer leaves only unreferenced files)."""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.sources import is_uri, unique_name
from gristmill.compute.sqltext import cols, lit, q
from gristmill.errors import OfflineStoreError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger("gristmill.stores")

_COMMIT_ATTEMPTS = 10   # writes of one window that lost the race to a concurrent commit, before giving up

DAY_COLUMN = "_event_day"
CREATE_TIMESTAMP = "create_timestamp"


@dataclass(frozen=True)
class OfflineTable:
    """One feature set version's materialized rows and their columns."""

    feature_set: str
    version: str
    materialization_version: int
    keys: tuple[str, ...]
    timestamp: str
    features: tuple[str, ...]


@dataclass(frozen=True)
class OfflineFiles:
    """Parquet files of one Delta table snapshot that may hold rows of ``windows`` (see ``files``).

    Their timestamps are UTC (``timestamp[us, UTC]``); the day partition column is not in the files."""

    uri: str
    files: tuple[str, ...]
    windows: tuple[tuple[datetime, datetime], ...]
    version: int | None                 # the snapshot's table version (None: no table yet)


@dataclass(frozen=True)
class WriteStats:
    rows: int
    bytes: int
    table_version: int


class DeltaOfflineStore:
    """Materialized feature rows in Delta Lake tables under ``root`` (a folder or an object-storage URI)."""

    def __init__(self, root: str, *, storage_options: dict[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = storage_options

    def table_uri(self, table: OfflineTable) -> str:
        return f"{self.root}/{table.feature_set}/v{table.version}/m{table.materialization_version}"

    def exists(self, table: OfflineTable) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.table_uri(table), storage_options=self.storage_options)

    def row_count(self, table: OfflineTable) -> int:
        """How many rows ``table`` holds (from the Delta log's file statistics, without reading the data)."""
        from deltalake import DeltaTable

        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return 0
        actions = DeltaTable(uri, storage_options=self.storage_options).get_add_actions(flatten=True)
        records = actions.column("num_records") if "num_records" in actions.schema.names else None
        return int(sum(v or 0 for v in records.to_pylist())) if records is not None else 0

    def write_window(self, table: OfflineTable, rows: pa.Table | pa.RecordBatchReader, start: datetime,
                     end: datetime) -> WriteStats:
        """Atomically replace the rows of ``[start, end)`` with ``rows`` (which must lie in the window).

        ``rows`` has the key columns, the timestamp column, ``create_timestamp`` and the features."""
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake

        reader = rows if isinstance(rows, pa.RecordBatchReader) else pa.RecordBatchReader.from_batches(
            rows.schema, rows.to_batches())
        data, counter = _prepared(reader, table.timestamp)
        uri = self.table_uri(table)
        first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
        predicate = (f"{DAY_COLUMN} >= '{first_day.isoformat()}' AND {DAY_COLUMN} <= '{last_day.isoformat()}' "
                     f"AND {_delta_identifier(table.timestamp)} >= '{_iso(start)}' "
                     f"AND {_delta_identifier(table.timestamp)} < '{_iso(end)}'")
        exists = DeltaTable.is_deltatable(uri, storage_options=self.storage_options)
        before = _file_sizes(DeltaTable(uri, storage_options=self.storage_options)) if exists else {}
        write_deltalake(uri, data, partition_by=[DAY_COLUMN], mode="overwrite" if exists else "append",
                        predicate=predicate if exists else None, storage_options=self.storage_options)
        written = DeltaTable(uri, storage_options=self.storage_options)
        added = sum(size for path, size in _file_sizes(written).items() if path not in before)
        log.info("offline store: wrote %d rows of [%s, %s) to %s (version %d)", counter[0], start, end, uri,
                 written.version())
        return WriteStats(rows=counter[0], bytes=added, table_version=written.version())

    def write_window_from(self, con: duckdb.DuckDBPyConnection, table: OfflineTable, relation: str,
                          start: datetime, end: datetime) -> WriteStats:
        """Like ``write_window``, for rows held by the engine (a DuckDB relation name).

        On a local folder DuckDB writes the Parquet files itself (about twice as fast and ~1 GiB lighter
        than the Delta writer on 3M rows): the affected day partitions are rewritten — the new window's rows
        plus the stored rows of those days outside the window — and swapped in by one Delta commit that
        replaces exactly those partitions. Object storage goes through the Delta writer."""
        import pyarrow.parquet as pq
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction

        uri = self.table_uri(table)
        if is_uri(uri):
            from gristmill.compute.result import arrow_table

            return self.write_window(table, arrow_table(con.sql(f"SELECT * FROM {relation}")), start, end)
        ts = q(table.timestamp)
        columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
        utc = {table.timestamp, CREATE_TIMESTAMP}
        select = ", ".join(f"timezone('UTC', {q(c)}) AS {q(c)}" if c in utc else q(c) for c in columns)
        new_rows = f"SELECT {select}, CAST({ts} AS DATE) AS {DAY_COLUMN} FROM {relation}"
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            empty = arrow_schema_of(con, new_rows)
            try:
                DeltaTable.create(uri, schema=empty, partition_by=[DAY_COLUMN], storage_options=self.storage_options)
            except Exception:
                if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
                    raise                                  # else: a concurrent writer created it first
        first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
        # Optimistic concurrency: the rewritten days hold the stored rows outside the window, as of the
        # snapshot read here, so the commit must land right on top of that snapshot. If another writer
        # committed in between, ours fails (no automatic rebase), its files are deleted and it starts over.
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            delta = DeltaTable(uri, storage_options=self.storage_options)
            stored = [f for f in delta.file_uris() if _file_day_in(f, {(first_day, last_day)})]
            # only the days that hold rows (stored or new) are replaced: a window's empty days cost nothing,
            # however many there are (a 2,000-year window of a few rows is a few partitions, not 730,000)
            days = {_file_day(f) for f in stored if f"{DAY_COLUMN}=" in f}
            kept = ""
            if stored:
                files = ", ".join(lit(f) for f in stored)
                kept = (f" UNION ALL BY NAME SELECT {', '.join(q(c) for c in columns)}, "
                        f"CAST({ts} AS DATE) AS {DAY_COLUMN} FROM read_parquet([{files}]) "
                        f"WHERE NOT ({ts} >= TIMESTAMPTZ '{_naive(start)}+00' "
                        f"AND {ts} < TIMESTAMPTZ '{_naive(end)}+00')")
            token = uuid.uuid4().hex
            try:
                con.execute(f"COPY ({new_rows}{kept}) TO {lit(uri)} (FORMAT parquet, PARTITION_BY ({DAY_COLUMN}), "
                            f"APPEND true, FILENAME_PATTERN 'part-{token}-{{uuid}}')")
            except BaseException:              # a failed or interrupted write leaves no stray files behind
                _delete(Path(uri).glob(f"{DAY_COLUMN}=*/part-{token}-*.parquet"))
                raise
            written_files = sorted(Path(uri).glob(f"{DAY_COLUMN}=*/part-{token}-*.parquet"))
            actions = []
            rows = 0
            written_bytes = 0
            for path in written_files:
                count = pq.read_metadata(path).num_rows
                size = path.stat().st_size
                rows += count
                written_bytes += size
                day = path.parent.name.split("=", 1)[1]
                days.add(datetime.fromisoformat(day).date())
                actions.append(AddAction(path=f"{path.parent.name}/{path.name}", size=size,
                                         partition_values={DAY_COLUMN: day},
                                         modification_time=int(path.stat().st_mtime * 1000), data_change=True,
                                         stats=json.dumps({"numRecords": count})))
            if not days:                       # nothing stored in the window and nothing new: no commit
                break
            try:
                delta.create_write_transaction(
                    actions, mode="overwrite", schema=delta.schema(), partition_by=[DAY_COLUMN],
                    partition_filters=[(DAY_COLUMN, "in", sorted(d.isoformat() for d in days))],
                    commit_properties=CommitProperties(max_commit_retries=0))
                break
            except CommitFailedError as exc:
                _delete(written_files)
                if attempt == _COMMIT_ATTEMPTS:
                    raise OfflineStoreError(f"offline store {uri}: {_COMMIT_ATTEMPTS} attempts to commit [{start}, "
                                            f"{end}) failed (last: {exc}); other jobs writing the same table? retry "
                                            "the job") from None
                log.info("offline store: a concurrent commit to %s; writing [%s, %s) again (attempt %d)", uri,
                         start, end, attempt + 1)
                time.sleep(random.uniform(0.02, 0.2) * attempt)
            except BaseException:
                _delete(written_files)
                raise
        written = DeltaTable(uri, storage_options=self.storage_options)
        log.info("offline store: rewrote %d day partition(s) of [%s, %s) in %s (version %d)", len(days), start, end,
                 uri, written.version())
        return WriteStats(rows=rows, bytes=written_bytes, table_version=written.version())

    def files(self, table: OfflineTable, windows: list[tuple[datetime, datetime]]) -> OfflineFiles:
        """The Parquet files (of one table snapshot) that may hold rows of ``windows``: those of the day
        partitions the windows touch. Readers keep only rows with ``start <= ts < end`` of a window.

        This is what an engine reads (DuckDB or Spark alike): the store hands over files, never a
        connection. A table whose readers need more than plain Parquet (deletion vectors, column mapping)
        is refused: its files alone would give wrong rows."""
        from deltalake import DeltaTable

        uri = self.table_uri(table)
        if not windows or not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return OfflineFiles(uri=uri, files=(), windows=tuple(windows), version=None)
        delta = DeltaTable(uri, storage_options=self.storage_options)
        protocol = delta.protocol()
        features = set(protocol.reader_features or ())
        unsupported = features & {"deletionVectors", "columnMapping", "v2Checkpoint"}
        if unsupported:
            raise OfflineStoreError(f"offline store {uri}: the Delta table uses {', '.join(sorted(unsupported))}, "
                                    "which this reader does not support; rewrite the window with a backfill")
        days = {(s.date(), (e - timedelta(microseconds=1)).date()) for s, e in windows}
        chosen = tuple(f for f in delta.file_uris() if _file_day_in(f, days))
        return OfflineFiles(uri=uri, files=chosen, windows=tuple(windows), version=delta.version())

    def register(self, con: duckdb.DuckDBPyConnection, table: OfflineTable,
                 windows: list[tuple[datetime, datetime]], *, schema: pa.Schema) -> str:
        """A DuckDB view of the stored rows whose timestamp lies in one of ``windows`` (one snapshot)."""
        import pyarrow as pa
        from deltalake import DeltaTable

        view = unique_name("offline")
        wanted = [*table.keys, table.timestamp, CREATE_TIMESTAMP, *table.features]
        uri = self.table_uri(table)
        files = list(self.files(table, windows).files)
        if files and not is_uri(uri):
            source = f"read_parquet([{', '.join(lit(f) for f in files)}])"
        elif files:
            dataset = DeltaTable(uri, storage_options=self.storage_options).to_pyarrow_dataset()
            source = unique_name("offline_ds")
            con.register(source, dataset)
        else:
            empty = pa.Table.from_batches([], schema=schema)
            source = unique_name("offline_empty")
            con.register(source, empty)
        ts = q(table.timestamp)
        condition = " OR ".join(f"({ts} >= TIMESTAMP '{_naive(s)}' AND {ts} < TIMESTAMP '{_naive(e)}')"
                                for s, e in windows) or "FALSE"
        select = ", ".join(f"timezone('UTC', {q(c)}) AS {q(c)}" if c in (table.timestamp, CREATE_TIMESTAMP)
                           else q(c) for c in wanted)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {select} FROM {source} WHERE {condition}"
                    if files else f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {cols(wanted)} FROM {source} "
                    "WHERE FALSE")
        return view

    def read(self, table: OfflineTable) -> pa.Table:
        """Every stored row (for inspection and tests), sorted by key and time."""
        import pyarrow as pa
        from deltalake import DeltaTable

        uri = self.table_uri(table)
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            return pa.table({})
        data = DeltaTable(uri, storage_options=self.storage_options).to_pyarrow_table()
        data = data.drop_columns([DAY_COLUMN]) if DAY_COLUMN in data.column_names else data
        return data.sort_by([(k, "ascending") for k in [*table.keys, table.timestamp]])


def arrow_schema_of(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Schema:
    from gristmill.compute.result import arrow_table

    return arrow_table(con.sql(f"SELECT * FROM ({sql}) LIMIT 0")).schema


def _delta_identifier(name: str) -> str:
    return name if name.isidentifier() and name.islower() else f'"{name}"'


def _iso(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _naive(value: datetime) -> str:
    return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def _prepared(reader: pa.RecordBatchReader, timestamp: str) -> tuple[pa.RecordBatchReader, list[int]]:
    """Stream ``reader`` with timestamps as ``timestamp[us, UTC]`` (Delta's TIMESTAMP is UTC-adjusted) and
    the event-day partition column added, batch by batch (a whole window never sits in memory twice).
    The returned list holds the number of rows streamed so far."""
    import pyarrow as pa
    import pyarrow.compute as pc

    utc = pa.timestamp("us", tz="UTC")
    fields = [pa.field(f.name, utc) if f.name in (timestamp, CREATE_TIMESTAMP) else f for f in reader.schema]
    schema = pa.schema([*fields, pa.field(DAY_COLUMN, pa.date32())])
    counter = [0]

    def batches() -> Any:
        for batch in reader:
            columns = [column.cast(utc) if name in (timestamp, CREATE_TIMESTAMP) else column
                       for name, column in zip(batch.schema.names, batch.columns, strict=True)]
            day = pc.cast(columns[batch.schema.names.index(timestamp)], pa.date32())
            counter[0] += batch.num_rows
            yield pa.RecordBatch.from_arrays([*columns, day], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches()), counter


def _file_sizes(table: Any) -> dict[str, int]:
    """Size in bytes of every file of the table's current version (to report what a write added)."""
    import pyarrow as pa

    columns = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    return dict(zip(columns.get("path", []), columns.get("size_bytes", []), strict=True))


def _file_day(uri: str) -> date:
    """The event day of a file of a day-partitioned table (from its ``_event_day=`` folder)."""
    return datetime.fromisoformat(uri.split(f"{DAY_COLUMN}=", 1)[1].split("/", 1)[0]).date()


def _file_day_in(uri: str, windows: set[tuple[Any, Any]]) -> bool:
    if f"{DAY_COLUMN}=" not in uri:
        return True
    day = _file_day(uri)
    return any(first <= day <= last for first, last in windows)


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _delete(paths: Any) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
