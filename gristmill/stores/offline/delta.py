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

if TYPE_CHECKING:
    from collections.abc import Callable

from gristmill.compute.sources import is_uri
from gristmill.errors import OfflineStoreError

if TYPE_CHECKING:
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
class WindowWrite:
    """What an engine needs to write a window's replacement files (see ``replace_window``)."""

    uri: str                            # the table folder; files go to <uri>/_event_day=<day>/<prefix>-*.parquet
    stored_files: tuple[str, ...]       # stored files of the days the window touches (rows outside it are kept)
    start: datetime
    end: datetime
    file_prefix: str
    day_column: str = "_event_day"


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

    def replace_window(self, table: OfflineTable, start: datetime, end: datetime, *, schema: pa.Schema,
                       write: Callable[[WindowWrite], None]) -> WriteStats:
        """Replace the rows of ``[start, end)`` with files an engine writes, in one Delta commit.

        The store hands over a ``WindowWrite``: the table folder, the stored files of the day partitions the
        window touches, and a file-name prefix. ``write`` must write, partitioned by ``_event_day`` under the
        folder and named ``<prefix>-*.parquet``, the window's new rows plus the stored rows of those files
        outside the window (their days are rewritten whole), with UTC microsecond timestamps. The store then
        commits exactly those days' replacement. Optimistic concurrency: if another writer committed
        meanwhile, the written files are deleted and ``write`` is called again on the new snapshot.
        ``schema`` (the rows' columns, without the day column) creates the table on its first write.

        Local folders only; object storage goes through ``write_window``."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction

        uri = self.table_uri(table)
        if is_uri(uri):
            raise OfflineStoreError(f"offline store {uri}: engine-written windows need a local folder; "
                                    "use write_window for object storage")
        if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
            utc = pa.timestamp("us", tz="UTC")
            fields = [pa.field(f.name, utc) if pa.types.is_timestamp(f.type) and f.name in
                      (table.timestamp, CREATE_TIMESTAMP) else f for f in schema]
            try:
                DeltaTable.create(uri, schema=pa.schema([*fields, pa.field(DAY_COLUMN, pa.date32())]),
                                  partition_by=[DAY_COLUMN], storage_options=self.storage_options)
            except Exception:
                if not DeltaTable.is_deltatable(uri, storage_options=self.storage_options):
                    raise                                  # else: a concurrent writer created it first
        first_day, last_day = start.date(), (end - timedelta(microseconds=1)).date()
        days: set[date] = set()
        rows = written_bytes = 0
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            delta = DeltaTable(uri, storage_options=self.storage_options)
            stored = tuple(f for f in delta.file_uris() if _file_day_in(f, {(first_day, last_day)}))
            # only the days that hold rows (stored or new) are replaced: a window's empty days cost nothing,
            # however many there are (a 2,000-year window of a few rows is a few partitions, not 730,000)
            days = {_file_day(f) for f in stored if f"{DAY_COLUMN}=" in f}
            prefix = f"part-{uuid.uuid4().hex}"
            try:
                write(WindowWrite(uri=uri, stored_files=stored, start=start, end=end, file_prefix=prefix))
            except BaseException:              # a failed or interrupted write leaves no stray files behind
                _delete(Path(uri).glob(f"{DAY_COLUMN}=*/{prefix}-*.parquet"))
                raise
            written_files = sorted(Path(uri).glob(f"{DAY_COLUMN}=*/{prefix}-*.parquet"))
            actions = []
            rows = written_bytes = 0
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

    def dataset(self, table: OfflineTable) -> Any:
        """The table's current snapshot as a pyarrow dataset (object storage, where engines cannot list files
        themselves without credentials of their own)."""
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri(table), storage_options=self.storage_options).to_pyarrow_dataset()

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
