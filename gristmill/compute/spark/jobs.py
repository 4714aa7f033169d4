"""The Spark engine's materialization of one feature window ``[start, end)`` (SPEC §3 "Materialization"), with
the same rows as the DuckDB engine's (``gristmill.compute.duckdb.jobs``) and without the driver holding them:

- offline: the executors compute the window, keep one row per (key, time) by the tie rule, stamp
  ``create_timestamp`` where absent, and write Parquet files (UTC microsecond timestamps, partitioned by event
  day) beside the Delta table; the driver moves them into the table's day folders and the offline store
  commits them with delta-rs as one atomic replacement of the window (``DeltaOfflineStore.replace_window``,
  which retries on a concurrent commit);
- online: the newest row per key; a network store (Redis, Redis Cluster) is written by the executors, each
  partition with its own connection (Gristmill must be importable on the executors); a single-file store
  (SQLite) is written by the driver in bounded batches;
- what was read and written is counted by Spark itself (``DataFrame.observe``), in the same jobs, and the
  job's CPU seconds include the executors' from Spark's task metrics (``gristmill.compute.spark.metrics``).

Settings of the asset's ``materialization_settings.spark_configuration`` that Spark can change on a running
session are set for the job (and restored after it); the others take effect only when a session starts, so
the job's log names them as not applied."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.planning import EPOCH, ONE_MICROSECOND, declared_schema
from gristmill.compute.spark.types import tie_rule_columns, timestamp_literal
from gristmill.jobs.materialize import MaterializationResult
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP, FeatureSetSpec
from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import EVENT_TIMESTAMP

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

    from gristmill.compute.statistics import WindowStatistics
    from gristmill.registry.materialization import OnlineOutcome
    from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable, WindowWrite
    from gristmill.stores.online.base import OnlineStore, OnlineTable

log = logging.getLogger("gristmill.jobs")

STAGING = "_gm_staging"          # where Spark writes a window's files before they move into the table
DRIVER_BATCH_ROWS = 50_000       # rows per batch when the driver writes a single-file online store
_RANK = "__gm_rank"


def materialize(spark: SparkSession, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime,
                label: str, offline: tuple[DeltaOfflineStore, OfflineTable] | None = None,
                online: tuple[OnlineStore, OnlineTable] | None = None, online_from_offline: bool = False,
                spark_configuration: dict[str, Any] | None = None) -> MaterializationResult:
    """Compute ``[start, end)`` on Spark and write it to the given stores (see the module docstring).

    With ``online_from_offline`` the online rows are read from the offline store (a Complete window)
    instead of being recomputed from source. A failure inside Spark is one ``SparkJobError`` line."""
    from gristmill.compute.spark.session import SparkJobError, failure_text

    try:
        return _materialize(spark, spec, start, end, now=now, label=label, offline=offline, online=online,
                            online_from_offline=online_from_offline, spark_configuration=spark_configuration)
    except Exception as exc:
        if type(exc).__module__.startswith(("pyspark", "py4j", "grpc")):
            raise SparkJobError(f"Spark failed: {failure_text(exc)}") from None
        raise


def _materialize(spark: SparkSession, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime,
                 label: str, offline: tuple[DeltaOfflineStore, OfflineTable] | None,
                 online: tuple[OnlineStore, OnlineTable] | None, online_from_offline: bool,
                 spark_configuration: dict[str, Any] | None) -> MaterializationResult:
    from gristmill.compute.spark.metrics import task_metrics

    cpu_started = time.process_time()
    with job_settings(spark, spark_configuration or {}, label=label) as spark, \
            task_metrics(spark, label=label) as spent:
        rows_read = rows_written = bytes_written = 0
        outcome = None
        statistics: dict[str, WindowStatistics] = {}
        if offline is not None and not online_from_offline:
            offline_store, offline_table = offline
            rows_read, rows_written, bytes_written = _write_offline(spark, spec, start, end, now=now, label=label,
                                                                    store=offline_store, table=offline_table)
        if online is not None:
            if offline is not None:       # the window as the offline store holds it now (just written, or Complete)
                offline_store, offline_table = offline
                relation = _stored_window(spark, spec, offline_store, offline_table, start, end)
                has_order = False
                whole_window = None
            else:
                # online only: rows already expired at `now` can never be written, so the computation starts
                # where they end (as the DuckDB engine's jobs; DSL windows still read their history); the
                # keys and times of the whole window are read to count the keys that expired
                from gristmill.compute.spark.frames import feature_rows

                ttl = online[1].ttl
                alive_from = min(max(start, now - ttl), end) if ttl is not None else start
                computed = feature_rows(spark, spec, alive_from, end, label=label)
                relation, has_order = computed.df, True
                whole_window = (_window_keys_and_times(spark, spec, relation, start, alive_from, end, label=label)
                                if alive_from > start else None)
            store, table = online
            read, keys_written, online_bytes, outcome = _write_online(relation, spec, store, table, now=now,
                                                                      has_order=has_order,
                                                                      whole_window=whole_window)
            if offline is None or online_from_offline:
                rows_read = read
            rows_written += keys_written
            bytes_written += online_bytes
    log.info("%s: Spark task metrics: %s", label, spent.describe())
    if offline is not None and not online_from_offline:
        # after the metrics: they describe the materialization (the statistics re-read the written files)
        statistics = _written_statistics(spark, spec, start, end, label=label, store=offline[0], table=offline[1])
    # the job's CPU: the executors' (Spark's task metrics) plus this process's own
    cpu_seconds = time.process_time() - cpu_started + spent.executor_cpu_seconds
    return MaterializationResult(rows_read=rows_read, rows_written=rows_written, bytes_written=bytes_written,
                                 cpu_seconds=cpu_seconds, online=outcome, statistics=statistics)


def _written_statistics(spark: SparkSession, spec: FeatureSetSpec, start: datetime, end: datetime, *, label: str,
                        store: DeltaOfflineStore, table: OfflineTable) -> dict[str, WindowStatistics]:
    """The statistics of the offline window just written (``compute/statistics.py``): the shared aggregate
    queries over the window's files (two scans of the written Parquet, never the source). The online store's
    statistics are not computed on Spark yet (its rows are chosen and written on the executors). A failure is
    logged and left out: the job's data is written."""
    from gristmill.compute.spark.statistics import frame_statistics

    try:
        window = _stored_window(spark, spec, store, table, start, end)
        return {"offline": frame_statistics(window, spec, start=start, end=end)}
    except Exception as exc:                # statistics are a by-product of the written data
        log.warning("%s: statistics of the offline rows of [%s, %s) not computed: %s", label, start, end, exc)
        return {}


# -- offline --------------------------------------------------------------------------------------------------

def deduplicated(rows: DataFrame, spec: FeatureSetSpec, *, has_create: bool, stamp: datetime) -> DataFrame:
    """One row per (key, time), chosen by the tie rule, with ``create_timestamp`` stamped where absent: the
    columns of ``planning.declared_schema`` in its order."""
    from pyspark.sql import functions as F

    keys, ts = spec.index_column_names, spec.timestamp_column
    tie = tie_rule_columns(ts, has_create_timestamp=has_create)          # (time, create, order), greater wins
    carried = [*([CREATE_TIMESTAMP] if has_create else []), *spec.feature_names]
    chosen = winner_per_group(rows, [*keys, ts], carried, tie[1:])
    create = F.coalesce(F.col(CREATE_TIMESTAMP), timestamp_literal(stamp)) if has_create else timestamp_literal(stamp)
    return chosen.select(*[F.col(f"`{k}`") for k in keys], F.col(f"`{ts}`"), create.alias(CREATE_TIMESTAMP),
                         *[F.col(f"`{f}`") for f in spec.feature_names])


def winner_per_group(rows: DataFrame, group: list[str], carried: list[str], order: list[Column]) -> DataFrame:
    """Per distinct ``group`` value, the ``carried`` columns of the row with the greatest ``order`` (a hash
    aggregate with ``max_by``: no sort of the rows, and partial aggregation before the shuffle)."""
    from pyspark.sql import functions as F

    values = F.struct(*[F.col(f"`{c}`").alias(f"c{i}") for i, c in enumerate(carried)])
    best = rows.groupBy(*[F.col(f"`{g}`") for g in group]).agg(
        F.max_by(values, F.struct(*[part.alias(f"o{i}") for i, part in enumerate(order)])).alias(_RANK))
    return best.select(*[F.col(f"`{g}`") for g in group],
                       *[F.col(f"{_RANK}.c{i}").alias(c) for i, c in enumerate(carried)])


def _write_offline(spark: SparkSession, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime,
                   label: str, store: DeltaOfflineStore, table: OfflineTable) -> tuple[int, int, int]:
    """Replace ``[start, end)`` of the offline table; (rows of the window, rows written, bytes written)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from gristmill.compute.spark.frames import feature_rows
    from gristmill.errors import OfflineStoreError
    from gristmill.stores.offline.delta import is_uri

    uri = store.table_uri(table)
    if is_uri(uri):
        raise OfflineStoreError(f"offline store {uri}: the Spark engine materializes into a folder that the "
                                "driver and the executors share; object storage is written by the DuckDB engine "
                                "(set engine: {type: duckdb} for the jobs of this store)")
    computed = feature_rows(spark, spec, start, end, label=label)
    new_rows = deduplicated(computed.df, spec, has_create=computed.has_create_timestamp, stamp=now)
    ts = spec.timestamp_column
    naive = {f.name for f in spec.features if f.type == FeatureType.DATETIME}
    counted: list[int] = []

    def write(target: WindowWrite) -> None:
        observed = Observation(f"gm_window_{uuid.uuid4().hex[:8]}")
        rows = new_rows.observe(observed, F.count(F.lit(1)).alias("rows"))
        if target.stored_files:
            time = F.col(f"`{ts}`")
            inside = (time >= timestamp_literal(target.start)) & (time < timestamp_literal(target.end))
            kept = spark.read.schema(_spark_schema(spec)).parquet(*target.stored_files).where(~inside)
            rows = rows.unionByName(kept)
        # datetime features are stored as naive UTC times (TIMESTAMP_NTZ), as the DuckDB engine stores them
        rows = rows.select(*[F.col(f"`{c}`").cast("timestamp_ntz").alias(c) if c in naive else F.col(f"`{c}`")
                             for c in rows.columns])
        staging = Path(target.uri) / STAGING / target.file_prefix
        try:
            (rows.withColumn(target.day_column, F.to_date(F.col(f"`{ts}`")))
             .write.mode("overwrite").partitionBy(target.day_column).parquet(staging.as_uri()))
            _move_into_table(staging, Path(target.uri), target.file_prefix, day_column=target.day_column)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(Path(target.uri) / STAGING)
        counted.append(int(observed.get.get("rows", 0)))

    stats = store.replace_window(table, start, end, schema=_stored_schema(spec), write=write)
    return (counted[-1] if counted else 0), stats.rows, stats.bytes


def _stored_schema(spec: FeatureSetSpec) -> pa.Schema:
    """The offline table's columns as the DuckDB engine creates them: datetime features as naive UTC times."""
    import pyarrow as pa

    naive = {f.name for f in spec.features if f.type == FeatureType.DATETIME}
    schema = declared_schema(spec)
    return pa.schema([pa.field(f.name, pa.timestamp("us")) if f.name in naive else f for f in schema])


def _move_into_table(staging: Path, table: Path, prefix: str, *, day_column: str) -> None:
    """Spark's files ``<staging>/_event_day=<d>/part-*.parquet`` become ``<table>/_event_day=<d>/<prefix>-N.parquet``
    (a rename: the staging folder is inside the table's folder, on the same file system)."""
    for n, path in enumerate(sorted(staging.glob(f"{day_column}=*/*.parquet"))):
        folder = table / path.parent.name
        folder.mkdir(exist_ok=True)
        path.rename(folder / f"{prefix}-{n:05d}.parquet")


def _remove_empty(folder: Path) -> None:
    with suppress(OSError):               # not empty (another job's staging) or already gone
        folder.rmdir()


def _stored_window(spark: SparkSession, spec: FeatureSetSpec, store: DeltaOfflineStore, table: OfflineTable,
                   start: datetime, end: datetime) -> DataFrame:
    """The offline table's rows of ``[start, end)`` (one snapshot of its files)."""
    from pyspark.sql import functions as F

    files = store.files(table, [(start, end)]).files
    schema = _spark_schema(spec)
    stored = spark.read.schema(schema).parquet(*files) if files else spark.createDataFrame([], schema)
    time = F.col(f"`{spec.timestamp_column}`")
    return stored.where((time >= timestamp_literal(start)) & (time < timestamp_literal(end)))


# -- online ---------------------------------------------------------------------------------------------------

def _write_online(relation: DataFrame, spec: FeatureSetSpec, store: OnlineStore, table: OnlineTable, *,
                  now: datetime, has_order: bool, whole_window: DataFrame | None = None
                  ) -> tuple[int, int, int, OnlineOutcome]:
    """Write the newest row per key of ``relation`` (rows already expired at ``now`` are skipped): (rows of
    the window, keys written, bytes handed to the store, the outcome). ``whole_window``: the keys and times of
    the whole window when ``relation`` holds only its part that may be live; the outcome and the rows read are
    counted over it."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from gristmill.registry.materialization import OnlineOutcome

    keys, ts = spec.index_column_names, spec.timestamp_column
    has_create = CREATE_TIMESTAMP in relation.columns
    read = Observation(f"gm_read_{uuid.uuid4().hex[:8]}")
    window = Observation(f"gm_keys_{uuid.uuid4().hex[:8]}")
    rows = relation.observe(read, F.count(F.lit(1)).alias("rows"))
    for key in keys:
        rows = rows.where(F.col(f"`{key}`").isNotNull())            # keys with a null part are never looked up
    tie = tie_rule_columns(ts, has_create_timestamp=has_create)
    if not has_order:
        tie = tie[:2]
    carried = [ts, *([CREATE_TIMESTAMP] if has_create else []), *spec.feature_names]
    newest = winner_per_group(rows, keys, carried, tie)
    ttl = table.ttl
    cutoff = timestamp_literal(now - ttl) if ttl is not None else None
    expired = F.count(F.when(F.col(f"`{ts}`") <= cutoff, 1)) if cutoff is not None else F.lit(0)
    newest = newest.observe(window, expired.alias("expired"), F.max(F.unix_micros(F.col(f"`{ts}`"))).alias("newest"))
    if cutoff is not None:
        newest = newest.where(F.col(f"`{ts}`") > cutoff)
    create = F.col(CREATE_TIMESTAMP) if has_create else F.lit(None).cast("timestamp")
    written_rows = newest.select(*[F.col(f"`{k}`") for k in keys], F.col(f"`{ts}`").alias(EVENT_TIMESTAMP),
                                 create.alias(CREATE_TIMESTAMP), *[F.col(f"`{f}`") for f in spec.feature_names])
    if getattr(store, "executor_writes", False):
        keys_written, nbytes = _write_from_executors(written_rows, store, table, now=now)
        metrics = window.get
    else:
        # the driver fetches the rows (an action Spark's observed metrics do not follow): the newest rows per
        # key are kept by the executors meanwhile, counted by one job and then fetched
        newest = newest.persist()
        try:
            newest.agg(F.count(F.lit(1))).collect()      # fills the cache and runs the observations
            metrics = window.get
            keys_written, nbytes = _write_from_driver(written_rows, store, table, now=now)
        finally:
            newest.unpersist()
    rows_read = int(read.get.get("rows", 0))
    if whole_window is not None:
        rows_read, metrics = _outcome_of(whole_window, keys, ts, cutoff)
    newest_time = _from_micros(metrics.get("newest"))
    outcome = OnlineOutcome(keys_written=keys_written, keys_expired=int(metrics.get("expired") or 0),
                            newest_event_time=newest_time,
                            expires_at=newest_time + ttl if newest_time is not None and ttl is not None else None)
    return rows_read, keys_written, nbytes, outcome


def _window_keys_and_times(spark: SparkSession, spec: FeatureSetSpec, live_part: DataFrame, start: datetime,
                           alive_from: datetime, end: datetime, *, label: str) -> DataFrame:
    """The keys and times of the rows of ``[start, end)``, ``live_part`` being its rows from ``alive_from`` on.

    A source without a transformation gives one output row per source row of the window, so one scan of the
    whole window gives them (each part's scan reads every row group whose times overlap it: on a source not
    sorted by time, the whole file twice). A transformation's rows may depend on where the computation starts,
    so there the window is its two parts, computed as the DuckDB engine computes them."""
    from gristmill.compute.spark.frames import feature_rows
    from gristmill.spec.featureset_spec import SourceType

    names = [f"`{c}`" for c in [*spec.index_column_names, spec.timestamp_column]]
    if spec.feature_transformation is None and spec.source.type in (SourceType.PARQUET, SourceType.CSV,
                                                                    SourceType.DELTA):
        return feature_rows(spark, spec, start, end, label=label).df.select(*names)
    expired_part = feature_rows(spark, spec, start, alive_from, label=label).df
    return live_part.select(*names).unionByName(expired_part.select(*names))


def _outcome_of(window: DataFrame, keys: list[str], ts: str, cutoff: Column | None) -> tuple[int, dict[str, Any]]:
    """(rows of ``window``, {"expired": keys whose newest row expired, "newest": the newest event time}) over the
    keys and times of ``window``, in one job (keys with a null part not counted)."""
    from functools import reduce

    from pyspark.sql import functions as F

    per_key = window.groupBy(*[F.col(f"`{k}`") for k in keys]).agg(F.max(F.col(f"`{ts}`")).alias("__gm_newest"),
                                                                  F.count(F.lit(1)).alias("__gm_rows"))
    keyed = reduce(lambda a, b: a & b, [F.col(f"`{k}`").isNotNull() for k in keys], F.lit(True))
    newest = F.col("__gm_newest")
    expired = F.count(F.when(keyed & (newest <= cutoff), 1)) if cutoff is not None else F.lit(0)
    totals = per_key.agg(F.sum("__gm_rows").alias("rows"), expired.alias("expired"),
                         F.max(F.when(keyed, F.unix_micros(newest))).alias("newest")).collect()[0]
    return int(totals["rows"] or 0), {"expired": totals["expired"], "newest": totals["newest"]}


def _write_from_executors(rows: DataFrame, store: OnlineStore, table: OnlineTable, *,
                          now: datetime) -> tuple[int, int]:
    """Each partition writes its rows with its own connection (the store pickles as its settings);
    returns (keys written, bytes handed over). The time the partitions spent in the store's writes and in
    their Python tasks as a whole (rows arriving from Spark included) goes to the job's log."""
    from pyspark.sql import functions as F

    writer = _partition_writer(store, table, now)
    counts = rows.mapInArrow(writer, "written long, nbytes long, write_seconds double, task_seconds double")
    try:
        total = counts.agg(*[F.sum(c).alias(c) for c in ("written", "nbytes", "write_seconds", "task_seconds")],
                           F.count(F.lit(1)).alias("partitions")).collect()[0]
    except Exception as exc:
        raise _executor_error(exc) from None
    log.info("online store written by %d Spark partitions: %.2f s in the store's writes, %.2f s in their Python "
             "tasks", total["partitions"], total["write_seconds"] or 0.0, total["task_seconds"] or 0.0)
    return int(total["written"] or 0), int(total["nbytes"] or 0)


def _executor_error(error: Exception) -> Exception:
    """An error raised by the online store on an executor, as the store's own error: Spark hands it over as the
    worker's whole Python traceback; its last line is the store's message (which never holds a password)."""
    import re

    from gristmill.stores.online.encoding import OnlineStoreError

    if not type(error).__module__.startswith(("pyspark", "py4j")):
        return error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [re.match(r"^(?:[\w.]+\.)?(\w+): (.*)$", line) for line in lines if not line.startswith("File ")]
    found = [m for m in raised if m is not None and m.group(1).endswith(("Error", "Exception"))]
    if found and found[-1].group(1) == "OnlineStoreError":
        return OnlineStoreError(found[-1].group(2))
    if not found or "Python worker" not in str(error):
        return error                          # not the writer's (e.g. computing the rows failed): as it is
    return OnlineStoreError(f"online store: the Spark executors could not write the rows: {found[-1].group(1)}: "
                            f"{found[-1].group(2)}")


def _partition_writer(store: OnlineStore, table: OnlineTable, now: datetime
                      ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:    # runs on an executor
        import time

        import pyarrow as pa

        begun = time.perf_counter()
        written = nbytes = 0
        writing = 0.0
        try:
            for batch in batches:
                if batch.num_rows:
                    started = time.perf_counter()
                    written += store.write(table, pa.Table.from_batches([batch]), now=now)
                    writing += time.perf_counter() - started
                    nbytes += batch.nbytes
        finally:
            store.close()
        yield pa.RecordBatch.from_pydict(
            {"written": [written], "nbytes": [nbytes], "write_seconds": [writing],
             "task_seconds": [time.perf_counter() - begun]},
            schema=pa.schema([("written", pa.int64()), ("nbytes", pa.int64()), ("write_seconds", pa.float64()),
                              ("task_seconds", pa.float64())]))
    return write


def _write_from_driver(rows: DataFrame, store: OnlineStore, table: OnlineTable, *, now: datetime) -> tuple[int, int]:
    """A single-file store: the driver fetches the rows a partition at a time and writes bounded batches.
    Times travel as microseconds since the epoch (Python datetimes from Spark would be in the driver's zone)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    schema = _arrow_schema(rows)
    times = {f.name for f in schema if pa.types.is_timestamp(f.type)}
    fetched = rows.select(*[F.unix_micros(F.col(f"`{n}`")).alias(n) if n in times else F.col(f"`{n}`")
                            for n in schema.names])
    written = nbytes = 0
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        nonlocal written, nbytes
        columns = list(zip(*batch, strict=True))
        arrays = [pa.array(columns[i], pa.int64()).cast(f.type) if f.name in times else pa.array(columns[i], f.type)
                  for i, f in enumerate(schema)]
        frame = pa.Table.from_arrays(arrays, schema=schema)
        written += store.write(table, frame, now=now)
        nbytes += frame.nbytes
        batch.clear()

    for row in fetched.toLocalIterator():
        batch.append(tuple(row))
        if len(batch) >= DRIVER_BATCH_ROWS:
            flush()
    if batch:
        flush()
    return written, nbytes


def _arrow_schema(frame: DataFrame) -> pa.Schema:
    """The Arrow types of ``frame``'s columns, times as naive UTC microseconds."""
    import pyarrow as pa

    schema = frame.limit(0).toArrow().schema
    return pa.schema([pa.field(f.name, pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f for f in schema])


# -- settings -------------------------------------------------------------------------------------------------

@contextmanager
def job_settings(spark: SparkSession, settings: dict[str, Any], *, label: str) -> Iterator[SparkSession]:
    """The session a job runs on, with ``spark_configuration`` applied where Spark allows it: settings a running
    session can change are set, settings read only when a session starts are logged as not applied (set them in
    featurestore.yaml's ``engine.conf``).

    On a classic session the settings go to a session of the job's own (Spark's ``newSession``, sharing the
    SparkContext, with the parent's SQL settings copied): jobs running at once in one process (the server's
    backfill workers) never see, nor undo, each other's settings. A Spark Connect session is changed for the job
    and restored after it. A value Spark refuses fails the job with an error naming the setting."""
    from gristmill.compute.spark.session import is_connect
    from gristmill.errors import ConfigError

    where = f"{label}: materialization_settings.spark_configuration"
    for key, value in settings.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(f"{where}: {key!r} must be a text, number or true/false (got "
                              f"{type(value).__name__} {_shown(value)}); change the feature set's "
                              "materialization_settings and run the job again")
    modifiable = [key for key in settings if _modifiable(spark, key)]
    ignored = sorted(key for key in settings if key not in modifiable)
    session = spark
    if modifiable and not is_connect(spark):
        session = spark.newSession()
        for key, value in spark.conf.getAll.items():
            if _modifiable(spark, key):
                session.conf.set(key, value)
    applied: dict[str, str | None] = {}
    try:
        for key in modifiable:
            value = settings[key]
            text = str(value).lower() if isinstance(value, bool) else str(value)
            previous = session.conf.get(key, None)
            try:
                session.conf.set(key, text)
            except Exception as exc:
                raise ConfigError(f"{where}: Spark refuses {key} = {_shown(text)}{_spark_reason(exc)}; change the "
                                  "feature set's materialization_settings and run the job again") from None
            applied[key] = previous
        if applied:
            log.info("%s: Spark settings applied for this job: %s", label, ", ".join(sorted(applied)))
        if ignored:
            log.info("%s: Spark settings not applied (they take effect when a session starts; set them in "
                     "featurestore.yaml engine.conf): %s", label, ", ".join(ignored))
        yield session
    finally:
        if session is spark:                 # a Connect session: put its settings back
            for key, previous in applied.items():
                try:
                    if previous is None:
                        spark.conf.unset(key)
                    else:
                        spark.conf.set(key, previous)
                except Exception:           # the session is gone (the job failed with it): nothing to restore
                    log.debug("could not restore Spark setting %s", key, exc_info=True)


def _modifiable(spark: SparkSession, key: str) -> bool:
    try:
        return bool(spark.conf.isModifiable(key))
    except Exception:
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _spark_reason(error: BaseException) -> str:
    """Spark's reason for refusing a setting ("It should be a/an 'int' value"), without the echoed value."""
    import re

    found = re.search(r"(It should be [^.]*?value|It should be [^.]*)", str(error))
    return f" ({found.group(1)})" if found else ""


# -- helpers --------------------------------------------------------------------------------------------------

def _spark_schema(spec: FeatureSetSpec) -> Any:
    from gristmill.compute.spark.engine import spark_schema

    return spark_schema(spec)


def _from_micros(value: int | None) -> datetime | None:
    """A time Spark's metrics give as microseconds since the epoch, as naive UTC (a timestamp metric would
    arrive as a datetime in the driver's own time zone)."""
    return None if value is None else EPOCH + int(value) * ONE_MICROSECOND


__all__ = ["deduplicated", "job_settings", "materialize"]
