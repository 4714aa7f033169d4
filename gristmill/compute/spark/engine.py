"""The Spark engine: the same feature sets and point-in-time answers as the DuckDB engine, computed by
Apache Spark (classic or Spark Connect) for data that outgrows one machine.

What a retrieval means is decided in ``gristmill.compute.planning`` (windows, tie rule, naming); feature
rows come from ``gristmill.compute.spark.frames``; this module prepares observations, reads materialized
files and carries out the point-in-time join (a range join on the key, then ``row_number`` by the tie
rule — the fastest of the strategies measured in SPARK_NOTES.md, and identical to DuckDB's ASOF join)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.engine import FeatureSetRequest, to_utc_naive
from gristmill.compute.planning import (
    EPOCH,
    INTERNAL_PREFIX,
    ISO_TIME_FORMS,
    ISO_TIME_PATTERN,
    ORDER,
    ROW,
    AggregationMode,
    check_declared_outputs,
    declared_schema,
    feature_window,
    index_columns_to_match,
    key_type_message,
    missing_index_columns,
    rename_clashes,
    request_order,
    split_windows,
)
from gristmill.compute.planning import aggregation_mode as parse_mode
from gristmill.compute.schema import sql_family
from gristmill.compute.spark.result import SparkFeatureFrame, SparkRetrievalResult
from gristmill.compute.spark.result import column as named
from gristmill.compute.spark.session import (
    build_session,
    import_pyspark,
    is_spark_dataframe,
    prepare_session,
    reports_spark_failures,
)
from gristmill.compute.spark.types import tie_rule_columns
from gristmill.errors import RetrievalError
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP, FeatureSetSpec, SourceType
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

    from gristmill.compute.engine import MaterializedData
    from gristmill.compute.spark.frames import SparkFeatureRows
    from gristmill.compute.statistics import WindowStatistics
    from gristmill.config import EngineConfig

log = logging.getLogger("gristmill.compute")

OBS_TIME = "__gm_t"
MICROS = "__gm_us"            # a time as microseconds since the epoch (compared as numbers)
TARGET = "__gm_target"        # latest feature time an observation may reach, in microseconds
LOW = "__gm_low"              # earliest, in microseconds (lookback)
RANK = "__gm_rank"

#: Spark's type for each declared type (DDL spelling).
SPARK_TYPES: dict[FeatureType, str] = {
    FeatureType.STRING: "string", FeatureType.INTEGER: "int", FeatureType.LONG: "bigint",
    FeatureType.FLOAT: "float", FeatureType.DOUBLE: "double", FeatureType.BOOLEAN: "boolean",
    FeatureType.DATETIME: "timestamp", FeatureType.BINARY: "binary", FeatureType.FLOAT_VECTOR: "array<float>",
}

#: Spark type names as the DuckDB engine spells them in messages ("observations column acct is BIGINT ...").
_ENGINE_NAMES: dict[str, str] = {
    "string": "VARCHAR", "int": "INTEGER", "bigint": "BIGINT", "smallint": "SMALLINT", "tinyint": "TINYINT",
    "float": "FLOAT", "double": "DOUBLE", "boolean": "BOOLEAN", "timestamp": "TIMESTAMP WITH TIME ZONE",
    "timestamp_ntz": "TIMESTAMP", "date": "DATE", "binary": "BLOB", "array<float>": "FLOAT[]",
    "array<double>": "DOUBLE[]", "void": "NULL",
}


def engine_type_name(spark_type: Any) -> str:
    """A Spark column type in the engine-neutral spelling of ``gristmill.compute.schema`` (DuckDB's)."""
    text = spark_type.simpleString()
    if text.startswith("decimal"):
        return text.upper()
    return _ENGINE_NAMES.get(text, text.upper())


@dataclass
class _Observations:
    """Observations in Spark: ``frame`` has the row id, the UTC time and one column per converted key."""

    frame: DataFrame
    columns: list[str]                      # the user's observation columns, in order
    key_columns: dict[tuple[str, str], str]  # (index column, declared type) -> column of ``frame``
    given: pa.Table | None = None           # in-memory observations, returned as given
    low: datetime | None = None
    high: datetime | None = None
    carried: list[str] = field(default_factory=list)   # observation columns carried in ``frame``
    keys_table: pa.Table | None = None      # in-memory observations: ``frame``'s data, on the driver


@dataclass(frozen=True)
class _Plan:
    rows: SparkFeatureRows
    key_columns: list[str]
    outputs: list[tuple[str, str]]
    delay: timedelta
    lookback: timedelta | None
    as_known_at: bool = False
    exact_time: bool = False


class SparkEngine:
    """Computes feature sets and point-in-time joins with Apache Spark.

    >>> engine = SparkEngine(master="local[2]")                      # doctest: +SKIP
    >>> engine = SparkEngine(remote="sc://spark.example.com:15002")  # doctest: +SKIP
    >>> engine = SparkEngine(session=spark)                          # doctest: +SKIP
    """

    name = "spark"

    def __init__(self, *, master: str | None = None, remote: str | None = None, conf: dict[str, Any] | None = None,
                 session: SparkSession | None = None) -> None:
        self.master = master
        self.remote = remote
        self.conf = dict(conf or {})
        self._session = session
        if session is not None:
            prepare_session(session)

    @classmethod
    def from_config(cls, config: EngineConfig, *, folder: Path | None = None,
                    session: SparkSession | None = None) -> SparkEngine:
        """The engine described by ``featurestore.yaml``'s ``engine`` section (``master``, ``remote``,
        ``conf``); ``session`` (a SparkSession the caller already has) wins over them. (``folder``, the
        store's, is where DuckDB spills; Spark keeps its own scratch space.)"""
        return cls(master=config.master, remote=config.remote, conf=config.conf or {}, session=session)

    @property
    def spark(self) -> SparkSession:
        """The session, started on first use."""
        if self._session is None:
            self._session = build_session(master=self.master, remote=self.remote, conf=self.conf)
        return self._session

    # -- materialization ---------------------------------------------------------------------------
    def materialize(self, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime, label: str,
                    offline: Any = None, online: Any = None, online_from_offline: bool = False,
                    spark_configuration: dict[str, Any] | None = None) -> Any:
        """Compute ``[start, end)`` and write it to the offline and/or online store from the executors
        (``gristmill.compute.spark.jobs``)."""
        from gristmill.compute.spark.jobs import materialize

        return materialize(self.spark, spec, start, end, now=now, label=label, offline=offline, online=online,
                           online_from_offline=online_from_offline, spark_configuration=spark_configuration)

    # -- computing ---------------------------------------------------------------------------------
    def compute(self, spec: FeatureSetSpec, start: datetime | str | None, end: datetime | str | None,
                *, label: str = "feature set") -> SparkFeatureFrame:
        """Compute ``spec`` over ``[start, end)``: index columns, timestamp, [create_timestamp], features."""
        import_pyspark()                         # the install hint, when pyspark is missing
        from gristmill.compute.spark.frames import feature_rows

        lo = to_utc_naive(start, name="start") if start is not None else None
        hi = to_utc_naive(end, name="end") if end is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise RetrievalError(f"start ({lo}) must be before end ({hi}); the window is [start, end)")
        rows = feature_rows(self.spark, spec, lo, hi, label=label)
        shown = [*rows.keys, rows.timestamp, *([CREATE_TIMESTAMP] if rows.has_create_timestamp else []),
                 *rows.features]
        frame = rows.df.select(*shown, ORDER)
        schema = _compute_schema(spec, has_create=rows.has_create_timestamp)
        return SparkFeatureFrame(frame, description=f"{label} over [{lo}, {hi})",
                                 order=[*rows.keys, rows.timestamp, ORDER], schema=schema)

    def check(self, spec: FeatureSetSpec, *, sample_rows: int, window: tuple[datetime, datetime] | None,
              label: str = "feature set", memory_limit: str | None = None,
              started: Callable[[Any], None] | None = None) -> int:
        """Compute ``spec`` on at most ``sample_rows`` source rows (of ``window``, else the first rows) and
        raise the error a backfill would meet; also refuse undeclared output columns of SQL or code
        transformations. Returns the number of rows computed. (``memory_limit`` is DuckDB's; Spark's memory
        is set by the session.)"""
        from gristmill.compute.spark.frames import feature_rows

        if started is not None:
            started(_Interrupter(self.spark))       # the caller may interrupt it (gristmill.compute.check)
        start, end = window if window is not None else (None, None)
        rows = feature_rows(self.spark, spec, start, end, label=label, sample_rows=sample_rows)
        check_declared_outputs(spec, rows.extra_columns, label=label)
        return int(rows.df.count())

    @reports_spark_failures("feature statistics", RetrievalError)
    def statistics(self, spec: FeatureSetSpec, start: datetime, end: datetime, *, sample_rows: int,
                   label: str = "feature set") -> WindowStatistics:
        """The feature statistics of ``spec`` over ``[start, end)`` from at most ``sample_rows`` of its rows
        (``compute/statistics.py``). As on DuckDB, a feature set whose rows need no history reads only the
        first ``sample_rows`` source rows of the window; one that needs history (DSL windows,
        ``source_lookback``) is computed over the window with it, and its first ``sample_rows`` rows are kept
        (cached: the statistics read them twice)."""
        from dataclasses import replace

        from gristmill.compute.spark.frames import feature_rows
        from gristmill.compute.spark.statistics import frame_statistics

        needs_history = spec.window_expressions is not None or spec.source_lookback is not None
        rows = feature_rows(self.spark, spec, start, end, label=label,
                            sample_rows=None if needs_history else sample_rows).df.limit(sample_rows).cache()
        try:
            found = frame_statistics(rows, spec, start=start, end=end)
        finally:
            rows.unpersist()
        return replace(found, sampled=True, sample_rows=sample_rows)

    # -- retrieval -----------------------------------------------------------------------------------
    @reports_spark_failures("point-in-time retrieval", RetrievalError)
    def retrieve(self, requests: list[FeatureSetRequest], observations: Any, timestamp_column: str, *,
                 as_known_at: bool = False, aggregation_mode: str = "per_event") -> SparkRetrievalResult:
        """Point-in-time join of ``requests`` onto ``observations`` (SPEC §3); the same answers, errors,
        column names and order as ``DuckDBEngine.retrieve``."""
        import_pyspark()                         # the install hint, when pyspark is missing
        from pyspark.sql import functions as F

        mode = parse_mode(aggregation_mode, as_known_at=as_known_at)
        if not requests:
            raise RetrievalError("features: the list is empty; name at least one feature as "
                                 "'feature_set:version:feature'")
        spark = self.spark
        if is_spark_dataframe(observations) or isinstance(observations, str | Path):
            obs, requests = _spark_observations(spark, observations, requests, timestamp_column)
        else:
            obs, requests = _memory_observations(spark, observations, requests, timestamp_column)
        plans: list[_Plan] = []
        for request in requests:
            spec = request.spec
            key_columns = [obs.key_columns[(c.name, c.type.sql)] for c in spec.index_columns]
            delay = spec.source_delay
            lookback = spec.temporal_join_lookback.timedelta if spec.temporal_join_lookback else None
            if mode == AggregationMode.AS_OF_OBSERVATION and spec.window_expressions is not None:
                from gristmill.compute.spark.frames import probe_rows

                delay_us = _micros(delay)
                probes = obs.frame.where(F.col(OBS_TIME).isNotNull()).select(
                    *[F.col(k).alias(c.name) for k, c in zip(key_columns, spec.index_columns, strict=True)],
                    F.timestamp_micros(F.unix_micros(F.col(OBS_TIME)) - F.lit(delay_us)).alias("__gm_probe_ts"))
                rows = probe_rows(spark, spec, probes, label=request.label)
                plans.append(_Plan(rows, key_columns, list(request.outputs), delay, None, exact_time=True))
                continue
            start, end = feature_window(obs.low, obs.high, delay, lookback)
            if request.materialized is not None and not as_known_at:
                rows = materialized_rows(spark, spec, request.materialized, start, end, label=request.label)
            else:
                from gristmill.compute.spark.frames import feature_rows

                rows = feature_rows(spark, spec, start, end, label=request.label)
            plans.append(_Plan(rows, key_columns, list(request.outputs), delay, lookback, as_known_at=as_known_at))
        winners = [_winners(obs, plan, i) for i, plan in enumerate(plans)]
        result = obs.frame.select(ROW, *[named(c) for c in obs.carried])
        for part in winners:
            result = result.join(part, on=ROW, how="left")
        output_order = request_order(requests)
        result = result.select(ROW, *[named(c) for c in [*obs.carried, *output_order]])
        feature_schema = _feature_schema(requests)
        labels = ", ".join(r.label for r in requests)
        description = f"point-in-time retrieval of {labels}"
        if obs.given is not None:
            given = obs.given
            features_only = result.select(ROW, *output_order)
            return SparkRetrievalResult(features_only, description=description, order=[ROW], schema=feature_schema,
                                        observations=given, given=observations,
                                        full=lambda: _joined_back(spark, given, features_only),
                                        fetch=lambda: _scattered(winners, given.num_rows, feature_schema))
        import pyarrow as pa

        carried_schema = _arrow_schema_of(obs.frame.select(*[named(c) for c in obs.carried]))
        schema = pa.schema([*carried_schema, *feature_schema])
        return SparkRetrievalResult(result, description=description, order=[ROW], schema=schema,
                                    observation_columns=obs.columns)


class _Interrupter:
    """What ``gristmill.compute.check`` interrupts when a check runs too long: the session's jobs."""

    def __init__(self, spark: SparkSession) -> None:
        self._spark = spark

    def interrupt(self) -> None:
        interrupt_all = getattr(self._spark, "interruptAll", None)
        if interrupt_all is not None:
            interrupt_all()
        else:
            self._spark.sparkContext.cancelAllJobs()


# -- observations ---------------------------------------------------------------------------------------

def _memory_observations(spark: SparkSession, observations: Any, requests: list[FeatureSetRequest],
                         timestamp_column: str) -> tuple[_Observations, list[FeatureSetRequest]]:
    """Observations held in memory (pandas, Polars, Arrow): checked and converted exactly as the DuckDB
    engine does (its own functions, in-process), then only the row id, time and keys go to Spark."""

    from gristmill.compute.duckdb.engine import (
        DuckDBEngine,
        _time_expression,
        observations_table,
        register_observations,
    )
    from gristmill.compute.duckdb.pit import observation_key_sql
    from gristmill.compute.duckdb.sqltext import q
    from gristmill.compute.result import arrow_table

    given = observations_table(observations)
    con = DuckDBEngine().connect()
    raw, columns, types = register_observations(con, given)
    requests = _checked_requests(requests, columns, set(types), timestamp_column)
    obs_time = _time_expression(con, raw, timestamp_column, types[timestamp_column])
    select = [f"{ROW}", f"{obs_time} AS {OBS_TIME}"]
    spark_fields = [f"{ROW} bigint", f"{OBS_TIME} timestamp"]
    key_columns: dict[tuple[str, str], str] = {}
    for column, label in index_columns_to_match(requests):
        converted = observation_key_sql(column.name, types[column.name], column.type)
        if converted is None:
            raise RetrievalError(key_type_message(column.name, types[column.name], column.type, label))
        alias = f"__gm_key_{len(key_columns)}"
        select.append(f"{converted} AS {q(alias)}")
        spark_fields.append(f"{alias} {SPARK_TYPES[column.type]}")
        key_columns[(column.name, column.type.sql)] = alias
    prepared = arrow_table(con.sql(f"SELECT {', '.join(select)} FROM {raw}"))
    low, high = con.execute(f"SELECT min({obs_time}), max({obs_time}) FROM {raw}").fetchall()[0]
    outside = [value for value in (low, high) if value is not None and not isinstance(value, datetime)]
    if outside:
        raise RetrievalError(f"timestamp_column '{timestamp_column}': observation times must lie between "
                             f"0001-01-01 and 9999-12-31 in UTC (one is {outside[0]} after converting its offset)")
    con.close()
    frame = spark.createDataFrame(_plain_arrow(prepared), schema=", ".join(spark_fields))
    return _Observations(frame, columns, key_columns, given=given, low=low, high=high,
                         keys_table=prepared), requests


def _plain_arrow(table: pa.Table) -> pa.Table:
    """Times as UTC instants: Spark reads an Arrow table's naive times in the session time zone anyway,
    but an explicit zone does not depend on that."""
    import pyarrow as pa

    fields = [pa.field(f.name, pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def _checked_requests(requests: list[FeatureSetRequest], columns: list[str], present: set[str],
                      timestamp_column: str) -> list[FeatureSetRequest]:
    """The DuckDB engine's checks of the observation columns, in its order; returns the renamed requests."""
    if timestamp_column not in present:
        raise RetrievalError(f"timestamp_column '{timestamp_column}' is not a column of the observations "
                             f"(columns: {', '.join(columns)}); pass the name of the observation time column")
    missing = missing_index_columns(requests, columns)
    if missing:
        raise RetrievalError(missing)
    return rename_clashes(requests, columns)


def _refuse_reserved(columns: list[str]) -> None:
    reserved = [c for c in columns if c.startswith(INTERNAL_PREFIX)]
    if reserved:
        raise RetrievalError(f"observations: column(s) {', '.join(reserved)} use the reserved prefix "
                             f"{INTERNAL_PREFIX}; rename them")


def _spark_observations(spark: SparkSession, observations: Any, requests: list[FeatureSetRequest],
                        timestamp_column: str) -> tuple[_Observations, list[FeatureSetRequest]]:
    """Observations as a Spark DataFrame or Parquet/CSV files read by Spark: converted in Spark, never
    collected to the driver (only their earliest and latest time are)."""
    from pyspark.sql import functions as F

    if is_spark_dataframe(observations):
        repeated = sorted({c for c in observations.columns if list(observations.columns).count(c) > 1})
        if repeated:
            raise RetrievalError(f"observations: column(s) {', '.join(repeated)} appear more than once; give every "
                                 "column its own name (e.g. with .withColumnRenamed or a select with aliases)")
        _refuse_reserved(list(observations.columns))
        raw = observations.withColumn(ROW, F.monotonically_increasing_id())
    else:
        text_keys = {c.name for r in requests for c in r.spec.index_columns if c.type == FeatureType.STRING}
        raw = _read_observation_files(spark, str(observations), text_columns=text_keys | {timestamp_column})
    columns = [c for c in raw.columns if c != ROW]
    _refuse_reserved(columns)
    types = {f.name: engine_type_name(f.dataType) for f in raw.schema.fields}
    requests = _checked_requests(requests, columns, set(types), timestamp_column)
    obs_time = _spark_time(raw, timestamp_column, types[timestamp_column])
    key_columns: dict[tuple[str, str], str] = {}
    extra: list[Column] = []
    for column, label in index_columns_to_match(requests):
        converted = _spark_key(column.name, types[column.name], column.type)
        if converted is None:
            raise RetrievalError(key_type_message(column.name, types[column.name], column.type, label))
        alias = f"__gm_key_{len(key_columns)}"
        extra.append(converted.alias(alias))
        key_columns[(column.name, column.type.sql)] = alias
    frame = raw.select("*", obs_time.alias(OBS_TIME), *extra)
    bounds = frame.agg(F.min(F.unix_micros(OBS_TIME)), F.max(F.unix_micros(OBS_TIME))).collect()[0]
    try:
        low, high = (None if v is None else EPOCH + timedelta(microseconds=v) for v in bounds)
    except OverflowError:
        raise RetrievalError(f"timestamp_column '{timestamp_column}': observation times must lie between 0001-01-01 "
                             "and 9999-12-31 in UTC") from None
    return _Observations(frame, columns, key_columns, low=low, high=high, carried=columns), requests


def _read_observation_files(spark: SparkSession, path: str, *, text_columns: set[str]) -> DataFrame:
    """Parquet or CSV observation files (a file, folder or glob; listed as for sources) with their row
    order in ``__gm_row``: (file index, row index within the file)."""
    import duckdb
    from pyspark.sql import functions as F

    from gristmill.compute.sources import SourceError, list_files

    kind = SourceType.CSV if path.lower().endswith(".csv") else SourceType.PARQUET
    try:
        files = list_files(path, None, kind, duckdb.connect(), what="observations")
    except SourceError as exc:
        raise RetrievalError(str(exc)) from None
    parts = []
    try:
        for index, file in enumerate(files):
            if kind == SourceType.CSV:
                header = spark.read.csv(file, header=True, inferSchema=True)
                schema = ", ".join(f"`{f.name}` {'string' if f.name in text_columns else f.dataType.simpleString()}"
                                   for f in header.schema.fields)
                part = spark.read.csv(file, header=True, schema=schema)
                part = part.withColumn(ROW, (F.lit(index).cast("long") * F.lit(1 << 40))
                                       + F.monotonically_increasing_id())
            else:
                part = spark.read.parquet(file)
                part = part.select("*", ((F.lit(index).cast("long") * F.lit(1 << 40))
                                         + F.col("_metadata.row_index")).alias(ROW))
            parts.append(part)
    except Exception as exc:
        if not type(exc).__module__.startswith(("pyspark", "py4j")):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RetrievalError(f"observations file {path}: cannot be read as {kind.value}: {first}") from None
    frame = parts[0]
    for part in parts[1:]:
        frame = frame.unionByName(part, allowMissingColumns=True)
    return frame


def _spark_time(frame: DataFrame, name: str, engine_type: str) -> Column:
    """Observation time column ``name`` as a UTC Spark timestamp; text must be ISO 8601 (checked here, so a
    bad value is reported by name, as the DuckDB engine does)."""
    from pyspark.sql import functions as F

    column = named(name)
    family = sql_family(engine_type)
    if family == "string":
        parsed = _parse_iso(column)
        bad = frame.where(column.isNotNull() & ~F.coalesce(column.rlike(f"^(?:{ISO_TIME_PATTERN})$")
                                                           & parsed.isNotNull(), F.lit(False)))
        found = bad.agg(F.count(F.lit(1)), F.first(column)).collect()[0]
        if found[0]:
            raise RetrievalError(f"timestamp_column '{name}' has {found[0]} value(s) that are not ISO 8601 times, "
                                 f"e.g. {found[1]!r}; write them as {ISO_TIME_FORMS}, or pass timestamps "
                                 f"(e.g. pd.to_datetime(df['{name}'], format='%d/%m/%Y %H:%M', utc=True))")
        return parsed
    if family == "datetime":
        return column.cast("timestamp")
    raise RetrievalError(f"timestamp_column '{name}' has type {engine_type}; it must hold timestamps, dates or "
                         f"ISO 8601 time strings ({ISO_TIME_FORMS})")


def _parse_iso(column: Column) -> Column:
    """ISO 8601 text as a UTC timestamp (no offset = UTC); offsets written +02 or +0200 become +02:00 and
    missing seconds :00, the forms Spark parses."""
    from pyspark.sql import functions as F

    text = F.regexp_replace(F.trim(column), r"([+-]\d{2})(\d{2})$", "$1:$2")
    text = F.regexp_replace(text, r"([ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?[+-]\d{2})$", "$1:00")
    text = F.regexp_replace(text, r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2})(?=[Z+-]|$)", "$1:00")
    return text.try_cast("timestamp")


def _spark_key(name: str, engine_type: str, declared: FeatureType) -> Column | None:
    """Observation key ``name`` in the declared type, by the same rules as the DuckDB engine
    (``planning.KEY_CONVERSIONS``); None when no conversion is safe."""

    from gristmill.compute.planning import KEY_CONVERSIONS as _KEY_CONVERSIONS

    column = named(name)
    if engine_type.upper() == declared.sql:
        return column if declared != FeatureType.DATETIME else column.cast("timestamp")
    if sql_family(engine_type) not in _KEY_CONVERSIONS.get(declared, {}):
        return None
    if declared in (FeatureType.INTEGER, FeatureType.LONG):
        return column.try_cast(SPARK_TYPES[declared])
    return column.cast(SPARK_TYPES[declared])


# -- feature rows read from the offline store --------------------------------------------------------------

def spark_schema(spec: FeatureSetSpec) -> Any:
    """The Spark schema of materialized files (``planning.declared_schema``; times are UTC)."""
    from pyspark.sql.types import StructType, _parse_datatype_string

    declared = {c.name: c.type for c in [*spec.index_columns, *spec.features]}
    schema = StructType()
    for item in declared_schema(spec):
        kind = declared.get(item.name)
        schema.add(item.name, _parse_datatype_string(SPARK_TYPES[kind] if kind is not None else "timestamp"))
    return schema


def materialized_rows(spark: SparkSession, spec: FeatureSetSpec, materialized: MaterializedData,
                      start: datetime | None, end: datetime, *, label: str) -> SparkFeatureRows:
    """Feature rows of ``[start, end)``: read from the offline store where the window is Complete, computed
    from source in the gaps (as ``featureframe.materialized_view`` does for DuckDB)."""
    from functools import reduce

    from pyspark.sql import functions as F

    from gristmill.compute.spark.frames import SparkFeatureRows, feature_rows

    split = split_windows(materialized, start, end, label=label)
    if not split.complete:
        return feature_rows(spark, spec, start, end, label=label)
    shape = feature_rows(spark, spec, EPOCH, EPOCH, label=label)
    columns = [*shape.keys, shape.timestamp, *([CREATE_TIMESTAMP] if shape.has_create_timestamp else []),
               *shape.features]
    files = materialized.store.files(materialized.table, split.complete)
    schema = spark_schema(spec)
    stored = (spark.read.schema(schema).parquet(*files.files) if files.files
              else spark.createDataFrame([], schema))
    micros = F.unix_micros(F.col(shape.timestamp))
    inside = reduce(lambda a, b: a | b, [(micros >= _micros(s - EPOCH)) & (micros < _micros(e - EPOCH))
                                         for s, e in split.complete])
    parts = [stored.where(inside).select(*columns, F.lit(0).cast("long").alias(ORDER))]
    for s, e in split.gaps:
        parts.append(feature_rows(spark, spec, s, e, label=label).df.select(*columns, ORDER))
    frame = reduce(lambda a, b: a.unionByName(b), parts)
    return SparkFeatureRows(frame, keys=shape.keys, timestamp=shape.timestamp, features=shape.features,
                            has_create_timestamp=shape.has_create_timestamp, ties_are_equal=shape.ties_are_equal,
                            extra_columns=())


# -- the point-in-time join ---------------------------------------------------------------------------------

def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


#: A key whose observation rows x feature rows exceed this takes the ordered (near-linear) path of the join.
HOT_KEY_PAIRS = 2_000_000
#: Keys with fewer observations always take the range join (its output per key is at most this many times the
#: key's feature rows), so most retrievals pay nothing for finding hot keys.
MIN_HOT_OBSERVATIONS = 64
#: More hot keys than this: every key takes the ordered path (the keys are collected to the driver).
MAX_HOT_KEYS = 10_000


def _winners(observations: _Observations, plan: _Plan, index: int) -> DataFrame:
    """Per observation row, the feature values of the winning feature row (rows without one are absent).

    Two ways, the same answers: a range join on the key within the time bounds, then the tie rule's first row
    per observation (the fastest on ordinary keys); and, for hot keys (observations x feature rows of the key
    above ``HOT_KEY_PAIRS``, where the range join is quadratic), one sort of both sides per key with the running
    latest feature row at each observation (``_ordered_winners``)."""
    from pyspark.sql import functions as F

    rows = plan.rows
    prefix = f"__gm_f{index}_"
    features = [f for f, _ in plan.outputs]
    obs_keys = [f"{prefix}o{i}" for i in range(len(plan.key_columns))]
    t = F.unix_micros(F.col(OBS_TIME))
    target = t if plan.lookback == timedelta(0) and not plan.exact_time else t - F.lit(_micros(plan.delay))
    obs = observations.frame.where(F.col(OBS_TIME).isNotNull()).select(
        ROW, *[F.col(k).alias(o) for k, o in zip(plan.key_columns, obs_keys, strict=True)],
        t.alias(f"{prefix}t"), target.alias(f"{prefix}{TARGET}"),
        *([(t - F.lit(_micros(plan.lookback))).alias(f"{prefix}{LOW}")] if plan.lookback else []))
    tie = tie_rule_columns(rows.timestamp, has_create_timestamp=rows.has_create_timestamp)   # planning.TIE_RULE
    side_keys = [f"{prefix}k{i}" for i in range(len(rows.keys))]
    side = rows.df
    for key in rows.keys:
        side = side.where(F.col(key).isNotNull())
    side = side.select(*[F.col(k).alias(s) for k, s in zip(rows.keys, side_keys, strict=True)],
                       F.unix_micros(F.col(rows.timestamp)).alias(f"{prefix}{MICROS}"),
                       tie[1].alias(f"{prefix}c"), tie[2].alias(f"{prefix}order"),
                       *[F.col(f).alias(f"{prefix}v_{n}") for n, f in enumerate(features)])
    if plan.as_known_at and rows.has_create_timestamp:
        # "known at the observation time" bounds create_timestamp too: a condition on two columns, which one
        # ordering per key cannot apply; the range join does
        return _joined_winners(obs, side, plan, prefix, obs_keys, side_keys)
    hot = _hot_keys(observations, plan, obs, side, obs_keys, side_keys)
    if hot is None:
        return _joined_winners(obs, side, plan, prefix, obs_keys, side_keys)
    if isinstance(hot, str):                     # "all"
        return _ordered_winners(obs, side, plan, prefix, obs_keys, side_keys)
    hot_columns = [f"{prefix}h{i}" for i in range(len(obs_keys))]
    on_obs, on_side = _matching(obs_keys, hot_columns), _matching(side_keys, hot_columns)
    hot_keys = F.broadcast(hot.toDF(*hot_columns))
    ordinary = _joined_winners(obs.join(hot_keys, on_obs, "left_anti"), side.join(hot_keys, on_side, "left_anti"),
                               plan, prefix, obs_keys, side_keys)
    skewed = _ordered_winners(obs.join(hot_keys, on_obs, "left_semi"), side.join(hot_keys, on_side, "left_semi"),
                              plan, prefix, obs_keys, side_keys)
    return ordinary.unionByName(skewed)


def _matching(left: list[str], right: list[str]) -> Column:
    from functools import reduce

    from pyspark.sql import functions as F

    return reduce(lambda a, b: a & b, [F.col(a) == F.col(b) for a, b in zip(left, right, strict=True)])


def _hot_keys(observations: _Observations, plan: _Plan, obs: DataFrame, side: DataFrame, obs_keys: list[str],
              side_keys: list[str]) -> DataFrame | str | None:
    """The keys whose observation rows x feature rows exceed ``HOT_KEY_PAIRS`` (a DataFrame of ``obs_keys``),
    "all" when there are more than ``MAX_HOT_KEYS`` of them, or None.

    Only keys with at least ``MIN_HOT_OBSERVATIONS`` observations can be hot: they are counted first (on the
    driver for in-memory observations, else by one Spark job); their feature rows are counted only when there
    are such keys."""
    from pyspark.sql import functions as F

    if observations.keys_table is not None:
        import pyarrow.compute as pc

        table = observations.keys_table.filter(pc.is_valid(observations.keys_table.column(OBS_TIME)))
        table = table.select(plan.key_columns).rename_columns(obs_keys)
        counts = table.group_by(obs_keys).aggregate([([], "count_all")])
        heavy = counts.filter(pc.greater_equal(counts.column("count_all"), MIN_HOT_OBSERVATIONS))
        if heavy.num_rows == 0:
            return None
        schema = obs.select(*obs_keys).schema.add("__gm_no", "long")
        heavy = heavy.select([*obs_keys, "count_all"]).rename_columns([*obs_keys, "__gm_no"])
        candidates = obs.sparkSession.createDataFrame(_plain_arrow(heavy), schema=schema)
    else:        # the candidates stay in Spark (there may be millions); one job tells whether there are any
        candidates = (obs.groupBy(*obs_keys).agg(F.count(F.lit(1)).alias("__gm_no"))
                      .where(F.col("__gm_no") >= MIN_HOT_OBSERVATIONS))
        if not candidates.limit(1).collect():
            return None
    stored = side.join(candidates.select(*obs_keys), _matching(side_keys, obs_keys), "left_semi")
    stored = stored.groupBy(*side_keys).agg(F.count(F.lit(1)).alias("__gm_nr"))
    pairs = candidates.join(stored, _matching(obs_keys, side_keys))
    found = (pairs.where(F.col("__gm_no") * F.col("__gm_nr") > HOT_KEY_PAIRS).select(*obs_keys)
             .limit(MAX_HOT_KEYS + 1).collect())
    if not found:
        return None
    log.info("%s keys with more than %d observation x feature row pairs: they take the ordered join",
             f"more than {MAX_HOT_KEYS}" if len(found) > MAX_HOT_KEYS else len(found), HOT_KEY_PAIRS)
    if len(found) > MAX_HOT_KEYS:
        return "all"
    return obs.sparkSession.createDataFrame(found, obs.select(*obs_keys).schema)


def _joined_winners(obs: DataFrame, side: DataFrame, plan: _Plan, prefix: str, obs_keys: list[str],
                    side_keys: list[str]) -> DataFrame:
    """A join on the key within the time bounds, then the tie rule's first row per observation."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ts = F.col(f"{prefix}{MICROS}")
    condition = [F.col(o) == F.col(s) for o, s in zip(obs_keys, side_keys, strict=True)]
    if plan.exact_time or plan.lookback == timedelta(0):
        condition.append(ts == F.col(f"{prefix}{TARGET}"))
    else:
        condition.append(ts <= F.col(f"{prefix}{TARGET}"))
        if plan.lookback is not None:
            condition.append(ts >= F.col(f"{prefix}{LOW}"))
    if plan.as_known_at and plan.rows.has_create_timestamp:
        condition.append(F.col(f"{prefix}c") <= F.col(f"{prefix}t"))
    joined = obs.join(side, on=condition, how="inner")
    if plan.rows.ties_are_equal:
        ordering = [ts.desc()]
    else:
        ordering = [ts.desc(), F.col(f"{prefix}c").desc(), F.col(f"{prefix}order").desc()]
    ranked = joined.withColumn(RANK, F.row_number().over(Window.partitionBy(ROW).orderBy(*ordering)))
    return ranked.where(F.col(RANK) == 1).select(
        ROW, *[F.col(f"{prefix}v_{n}").alias(out) for n, (_, out) in enumerate(plan.outputs)])


def _ordered_winners(obs: DataFrame, side: DataFrame, plan: _Plan, prefix: str, obs_keys: list[str],
                     side_keys: list[str]) -> DataFrame:
    """One sort per key of feature rows and observations together — feature rows by the tie rule, each
    observation at its target time after the feature rows of that time — and the running latest feature row
    at each observation, if it is within the lookback (exactly at the target for exact-time joins).
    Near-linear in the rows of a key (SPARK_NOTES: 9 s for one key of 20k observations x 60k rows)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    position, is_observation, found, latest = (f"{prefix}{name}" for name in ("pos", "is_obs", "found", "latest"))
    ts = f"{prefix}{MICROS}"
    values = [f"{prefix}v_{n}" for n in range(len(plan.outputs))]
    key_types = {o: obs.schema[o].dataType for o in obs_keys}
    stored = side.select(*[F.col(s).cast(key_types[o]).alias(o) for s, o in zip(side_keys, obs_keys, strict=True)],
                         F.col(ts).alias(position), F.lit(0).alias(is_observation),
                         F.col(f"{prefix}c"), F.col(f"{prefix}order"),
                         F.struct(F.col(ts).alias("t"), *[F.col(v) for v in values]).alias(found))
    bounds = [f"{prefix}{TARGET}", *([f"{prefix}{LOW}"] if plan.lookback else [])]
    observed = obs.select(ROW, *obs_keys, F.col(f"{prefix}{TARGET}").alias(position),
                          F.lit(1).alias(is_observation), *bounds)
    together = stored.unionByName(observed, allowMissingColumns=True)
    ordering = [position, is_observation, f"{prefix}c", f"{prefix}order"]
    window = (Window.partitionBy(*obs_keys).orderBy(*ordering)
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    ranked = together.withColumn(latest, F.last(F.col(found), ignorenulls=True).over(window))
    chosen = F.col(latest).isNotNull() & (F.col(is_observation) == 1)
    if plan.exact_time or plan.lookback == timedelta(0):
        chosen &= F.col(f"{latest}.t") == F.col(f"{prefix}{TARGET}")
    elif plan.lookback is not None:
        chosen &= F.col(f"{latest}.t") >= F.col(f"{prefix}{LOW}")
    return ranked.where(chosen).select(
        ROW, *[F.col(f"{latest}.{v}").alias(out) for v, (_, out) in zip(values, plan.outputs, strict=True)])


def _scattered(winners: list[DataFrame], count: int, schema: pa.Schema) -> pa.Table:
    """The feature columns of ``count`` in-memory observation rows from each feature set's winning rows
    (collected in one job): rows without a winner get nulls. Cheaper than joining them back
    to the observations in Spark, which would cost a shuffle per feature set and a sort."""
    from functools import reduce

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    part_column = "__gm_part"
    tagged = [w.withColumn(part_column, F.lit(i)) for i, w in enumerate(winners)]
    collected = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), tagged).toArrow()  # one job
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for i, part in enumerate(winners):
        table = collected.filter(pc.equal(collected.column(part_column), i)).select(part.columns)
        position = np.full(count, -1, dtype=np.int64)
        position[table.column(ROW).to_numpy()] = np.arange(table.num_rows, dtype=np.int64)
        indices = pa.array(position, mask=position < 0)
        for name in table.column_names:
            if name != ROW:
                columns[name] = table.column(name).take(indices)
    return pa.table({name: columns[name] for name in schema.names})


def _joined_back(spark: SparkSession, given: pa.Table, features: DataFrame) -> DataFrame:
    """In-memory observations and their features as one Spark DataFrame, in observation order."""
    import numpy as np
    import pyarrow as pa

    table = given.append_column(ROW, pa.array(np.arange(given.num_rows, dtype=np.int64)))
    frame = spark.createDataFrame(_plain_arrow(table))
    return frame.join(features, on=ROW, how="left").orderBy(ROW).drop(ROW)


# -- output types -----------------------------------------------------------------------------------------

def _declared_arrow(kind: FeatureType, *, naive_times: bool = True) -> pa.DataType:
    import pyarrow as pa

    if kind == FeatureType.DATETIME and naive_times:
        return pa.timestamp("us")
    return kind.arrow_type()


def _compute_schema(spec: FeatureSetSpec, *, has_create: bool) -> pa.Schema:
    """The Arrow schema of ``compute``: as the DuckDB engine's (event and create times as UTC instants)."""
    import pyarrow as pa

    fields = [pa.field(c.name, _declared_arrow(c.type)) for c in spec.index_columns]
    fields.append(pa.field(spec.timestamp_column, pa.timestamp("us", tz="UTC")))
    if has_create:
        fields.append(pa.field(CREATE_TIMESTAMP, pa.timestamp("us", tz="UTC")))
    fields += [pa.field(f.name, _declared_arrow(f.type)) for f in spec.features]
    return pa.schema(fields)


def _feature_schema(requests: list[FeatureSetRequest]) -> pa.Schema:
    """The Arrow schema of the feature columns of a retrieval, in request order."""
    import pyarrow as pa

    types = {out: next(f.type for f in r.spec.features if f.name == feature)
             for r in requests for feature, out in r.outputs}
    return pa.schema([pa.field(name, _declared_arrow(types[name])) for name in request_order(requests)])


def _arrow_schema_of(frame: DataFrame) -> pa.Schema:
    """The Arrow schema Spark gives ``frame`` (observation columns read from files keep Spark's types)."""
    return frame.limit(0).toArrow().schema
