"""The embedded engine: DuckDB in-process. It spills to disk past its memory limit, so retrievals larger
than memory finish instead of crashing."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.duckdb.featureframe import compute_view, materialized_view, probe_view
from gristmill.compute.duckdb.pit import (
    OBS_TIME,
    JoinPlan,
    asof_side_sql,
    known_at_sql,
    observation_key_sql,
    point_in_time_sql,
    utc_time_sql,
)
from gristmill.compute.duckdb.sqltext import cols, lit, q, utc_switched_select
from gristmill.compute.engine import FeatureSetRequest, to_utc_naive
from gristmill.compute.messages import engine_message
from gristmill.compute.planning import (
    ISO_TIME_FORMS,
    ISO_TIME_PATTERN,
    ROW,
    AggregationMode,
    check_declared_outputs,
    feature_window,
    index_columns_to_match,
    key_type_message,
    missing_index_columns,
    rename_clashes,
    request_order,
)
from gristmill.compute.planning import aggregation_mode as parse_mode
from gristmill.compute.result import FeatureFrame, RetrievalResult, arrow_table
from gristmill.compute.schema import sql_family
from gristmill.compute.sources import INTERNAL_PREFIX, ORDER, SourceError, list_files, to_arrow_table, unique_name
from gristmill.errors import RetrievalError, TransformationError
from gristmill.spec.featureset_spec import CREATE_TIMESTAMP, FeatureSetSpec, SourceType
from gristmill.spec.types import FeatureType

if TYPE_CHECKING:
    from collections.abc import Collection

    import duckdb
    import pyarrow as pa

    from gristmill.compute.statistics import WindowStatistics
    from gristmill.config import EngineConfig

log = logging.getLogger("gristmill.compute")


class DuckDBEngine:
    """Computes feature sets and point-in-time joins with DuckDB.

    >>> engine = DuckDBEngine(memory_limit="4GB")   # doctest: +SKIP
    """

    name = "duckdb"

    def __init__(self, *, memory_limit: str | None = None, threads: int | None = None,
                 temp_directory: str | Path | None = None) -> None:
        self.memory_limit = memory_limit
        self.threads = threads
        self.temp_directory = str(temp_directory) if temp_directory else None

    @classmethod
    def from_config(cls, config: EngineConfig, *, folder: Path, session: Any = None) -> DuckDBEngine:
        """The engine of a store in ``folder`` (its spill files go to ``folder/.spill``)."""
        return cls(memory_limit=config.memory_limit, threads=config.threads, temp_directory=folder / ".spill")

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A fresh connection with UTC session time and the configured limits."""
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        if self.memory_limit:
            con.execute(f"SET memory_limit = {lit(self.memory_limit)}")
        if self.threads:
            con.execute(f"SET threads = {int(self.threads)}")
        temp = self.temp_directory or str(Path(tempfile.gettempdir()) / "gristmill-spill")
        con.execute(f"SET temp_directory = {lit(temp)}")
        return con

    # -- computing ---------------------------------------------------------------------------------
    def compute(self, spec: FeatureSetSpec, start: datetime | str | None, end: datetime | str | None,
                *, label: str = "feature set") -> FeatureFrame:
        """Compute ``spec`` over ``[start, end)``: index columns, timestamp, [create_timestamp], features."""
        lo = to_utc_naive(start, name="start") if start is not None else None
        hi = to_utc_naive(end, name="end") if end is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise RetrievalError(f"start ({lo}) must be before end ({hi}); the window is [start, end)")
        con = self.connect()
        view = compute_view(con, spec, lo, hi, label=label)
        ts = q(view.timestamp)
        shown = [*view.keys, view.timestamp, *([CREATE_TIMESTAMP] if view.has_create_timestamp else []),
                 *view.features]
        select = utc_switched_select(shown, {view.timestamp, CREATE_TIMESTAMP})
        sql = f"SELECT {select} FROM {view.name} ORDER BY {cols(view.keys)}, {ts}, {q(ORDER)}"
        return FeatureFrame(con, sql, description=f"{label} over [{lo}, {hi})")

    def check(self, spec: FeatureSetSpec, *, sample_rows: int, window: tuple[datetime, datetime] | None,
              label: str = "feature set", memory_limit: str | None = None,
              started: Callable[[Any], None] | None = None) -> int:
        """Compute ``spec`` on at most ``sample_rows`` source rows (of ``window``, else the first rows) and
        raise the error a backfill would meet; also refuse undeclared output columns of SQL or code
        transformations. Returns the number of rows computed."""
        con = self.connect()
        if memory_limit:
            con.execute(f"SET memory_limit = {lit(memory_limit)}")
        if started is not None:
            started(con)                        # the caller may interrupt it (gristmill.compute.check)
        start, end = window if window is not None else (None, None)
        view = compute_view(con, spec, start, end, label=label, sample_rows=sample_rows)
        check_declared_outputs(spec, view.extra_columns, label=label)
        return len(con.execute(f"SELECT * FROM {view.name}").fetchall())

    def statistics(self, spec: FeatureSetSpec, start: datetime, end: datetime, *, sample_rows: int,
                   label: str = "feature set") -> WindowStatistics:
        """The feature statistics of ``spec`` over ``[start, end)`` from at most ``sample_rows`` of its rows
        (``compute/statistics.py``): a bounded look at a feature set not materialized.

        A feature set whose rows need no history (no DSL windows, no ``source_lookback``) reads only the
        first ``sample_rows`` source rows of the window. One that needs history is computed over the window
        as ``preview`` does (its values must see their whole lookback to be right), and a uniform sample of
        ``sample_rows`` of its rows is kept (reservoir sampling, a fixed seed)."""
        from gristmill.compute.duckdb.statistics import window_statistics

        needs_history = spec.window_expressions is not None or spec.source_lookback is not None
        con = self.connect()
        try:
            view = compute_view(con, spec, start, end, label=label,
                                sample_rows=None if needs_history else sample_rows)
            table = unique_name("sampled")
            sample = (f" USING SAMPLE reservoir({int(sample_rows)} ROWS) REPEATABLE (42)" if needs_history
                      else f" LIMIT {int(sample_rows)}")
            con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM {view.name}{sample}")  # computed once
            found = window_statistics(con, table, spec, start=start, end=end)
        finally:
            con.close()
        return replace(found, sampled=True, sample_rows=sample_rows)

    # -- materialization -----------------------------------------------------------------------------
    def materialize(self, spec: FeatureSetSpec, start: datetime, end: datetime, *, now: datetime, label: str,
                    offline: Any = None, online: Any = None, online_from_offline: bool = False,
                    spark_configuration: dict[str, Any] | None = None) -> Any:
        """Compute ``[start, end)`` and write it to the offline and/or online store (``jobs.materialize``).
        ``spark_configuration`` (an asset's Spark settings) does not apply to DuckDB."""
        from gristmill.compute.duckdb.jobs import materialize_window

        if spark_configuration:
            log.info("%s: Spark settings not applied: the job runs on the DuckDB engine", label)

        return materialize_window(self, spec, start, end, now=now, label=label, offline=offline, online=online,
                                  online_from_offline=online_from_offline)

    # -- retrieval -----------------------------------------------------------------------------------
    def retrieve(self, requests: list[FeatureSetRequest], observations: Any, timestamp_column: str, *,
                 as_known_at: bool = False, aggregation_mode: str = "per_event") -> RetrievalResult:
        """Point-in-time join of ``requests`` onto ``observations`` (SPEC §3)."""
        mode = parse_mode(aggregation_mode, as_known_at=as_known_at)
        if not requests:
            raise RetrievalError("features: the list is empty; name at least one feature as "
                                 "'feature_set:version:feature'")
        con = self.connect()
        given = None if isinstance(observations, str | Path) else observations_table(observations)
        text_keys = {c.name for r in requests for c in r.spec.index_columns if c.type == FeatureType.STRING}
        # CSV times are read as text, so they meet the ISO check instead of DuckDB's guess of the date order
        raw, columns, types = register_observations(con, observations if given is None else given,
                                                    text_columns=text_keys | {timestamp_column})
        if timestamp_column not in types:
            raise RetrievalError(f"timestamp_column '{timestamp_column}' is not a column of the observations "
                                 f"(columns: {', '.join(columns)}); pass the name of the observation time column")
        missing = missing_index_columns(requests, columns)
        if missing:
            raise RetrievalError(missing)
        requests = rename_clashes(requests, columns)
        obs_time = _time_expression(con, raw, timestamp_column, types[timestamp_column])
        key_casts: dict[tuple[str, str], str] = {}
        extra = []
        for column, label in index_columns_to_match(requests):
            converted = observation_key_sql(column.name, types[column.name], column.type)
            if converted is None:
                raise RetrievalError(key_type_message(column.name, types[column.name], column.type,
                                                      label))
            if converted == q(column.name):
                key_casts[(column.name, column.type.sql)] = converted
            else:
                alias = f"__gm_key_{len(key_casts)}"
                extra.append(f"{converted} AS {alias}")
                key_casts[(column.name, column.type.sql)] = alias
        obs = unique_name("obs")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {obs} AS SELECT *, {obs_time} AS {OBS_TIME}"
                    f"{''.join(', ' + e for e in extra)} FROM {raw}")
        low, high = con.execute(f"SELECT min({OBS_TIME}), max({OBS_TIME}) FROM {obs}").fetchall()[0]
        outside = [value for value in (low, high) if value is not None and not isinstance(value, datetime)]
        if outside:            # DuckDB hands back times Python cannot hold as text
            raise RetrievalError(f"timestamp_column '{timestamp_column}': observation times must lie between "
                                 f"0001-01-01 and 9999-12-31 in UTC (one is {outside[0]} after converting its "
                                 "offset)")
        plans: list[JoinPlan] = []
        right_sides: list[str] = []
        for request in requests:
            spec = request.spec
            obs_keys = [key_casts[(c.name, c.type.sql)] for c in spec.index_columns]
            delay = spec.source_delay
            lookback = spec.temporal_join_lookback.timedelta if spec.temporal_join_lookback else None
            features = [f for f, _ in request.outputs]
            if mode == AggregationMode.AS_OF_OBSERVATION and spec.window_expressions is not None:
                probes = unique_name("probes")
                key_select = ", ".join(f"{k} AS {q(c.name)}" for k, c in zip(obs_keys, spec.index_columns,
                                                                             strict=True))
                con.execute(f"CREATE OR REPLACE TEMP VIEW {probes} AS SELECT {key_select}, "
                            f"{OBS_TIME} - INTERVAL '{int(delay.total_seconds())} seconds' AS __gm_probe_ts "
                            f"FROM {obs} WHERE {OBS_TIME} IS NOT NULL")
                view = probe_view(con, spec, probes, label=request.label)
                plan = JoinPlan(view, obs_keys, list(request.outputs), delay, None, exact_time=True)
                plans.append(plan)
                right_sides.append(asof_side_sql(view, features))
                continue
            start, end = feature_window(low, high, delay, lookback)
            if request.materialized is not None and not as_known_at:
                view = materialized_view(con, spec, request.materialized, start, end, label=request.label)
            else:
                view = compute_view(con, spec, start, end, label=request.label)
            plan = JoinPlan(view, obs_keys, list(request.outputs), delay, lookback, as_known_at=as_known_at)
            plans.append(plan)
            right_sides.append(known_at_sql(plan, obs) if as_known_at else asof_side_sql(view, features))
        # Observations given in memory come back as given (the query only computes the features); rows read
        # from files come back as the engine read them.
        shown = [] if given is not None else columns
        sql = point_in_time_sql(obs, shown, plans, right_sides, request_order(requests))
        labels = ", ".join(r.label for r in requests)
        return RetrievalResult(con, sql, description=f"point-in-time retrieval of {labels}", observations=given,
                               frame=observations, observation_columns=columns)


def _time_expression(con: duckdb.DuckDBPyConnection, raw: str, name: str, sql_type: str) -> str:
    """The observation time as naive UTC; text must be ISO 8601 (checked here, so that a bad value is
    reported by name instead of failing inside the join)."""
    expression = utc_time_sql(name, sql_type)
    if expression is None:
        raise RetrievalError(f"timestamp_column '{name}' has type {sql_type}; it must hold timestamps, dates or "
                             f"ISO 8601 time strings ({ISO_TIME_FORMS})")
    if sql_family(sql_type) == "string":
        column = q(name)
        bad = con.execute(f"SELECT {column}, count(*) OVER () FROM {raw} WHERE {column} IS NOT NULL AND NOT "
                          f"coalesce(regexp_full_match({column}, {lit(ISO_TIME_PATTERN)}) AND "
                          f"TRY_CAST({column} AS TIMESTAMPTZ) IS NOT NULL, false) LIMIT 1").fetchall()
        if bad:
            example, count = bad[0]
            raise RetrievalError(f"timestamp_column '{name}' has {count} value(s) that are not ISO 8601 times, "
                                 f"e.g. {example!r}; write them as {ISO_TIME_FORMS}, or pass timestamps "
                                 f"(e.g. pd.to_datetime(df['{name}'], format='%d/%m/%Y %H:%M', utc=True))")
    return expression


def observations_table(observations: Any) -> pa.Table:
    """In-memory observations (pandas, Polars, Arrow) as the Arrow table the result returns them as."""
    try:
        return to_arrow_table(observations, what="observations")
    except TransformationError:
        raise RetrievalError(f"observations: expected a pandas/Polars DataFrame, an Arrow table or a "
                             f"Parquet/CSV path, got {type(observations).__name__}") from None
    except (TypeError, ValueError) as exc:       # pyarrow's errors for a column it cannot type
        raise RetrievalError(f"observations: the {type(observations).__name__} cannot be read as a table: "
                             f"{exc}; give every column one type") from None


def read_observations(observations: Any, *, text_columns: Collection[str] = ()) -> tuple[pa.Table | None, pa.Table]:
    """Observations as Arrow, read exactly as a retrieval reads them (files too), in their order: returns
    (the in-memory input as Arrow or None for files, the rows)."""
    given = None if isinstance(observations, str | Path) else observations_table(observations)
    con = DuckDBEngine().connect()
    try:
        raw, _, _ = register_observations(con, observations if given is None else given, text_columns=text_columns)
        return given, arrow_table(con.sql(f"SELECT * EXCLUDE ({ROW}) FROM {raw} ORDER BY {ROW}"))
    finally:
        con.close()


def register_observations(con: duckdb.DuckDBPyConnection, observations: Any, *,
                           text_columns: Collection[str] = ()) -> tuple[str, list[str], dict[str, str]]:
    """Register observations with a ``__gm_row`` column holding their original order. CSV columns named in
    ``text_columns`` (string keys) are read as text, so that '007' stays '007'."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    raw = unique_name("obs_raw")
    if isinstance(observations, str | Path):
        path = str(observations)
        kind = SourceType.CSV if path.lower().endswith(".csv") else SourceType.PARQUET
        try:
            files = list_files(path, None, kind, con, what="observations")
        except SourceError as exc:
            raise RetrievalError(str(exc)) from None
        try:
            _read_observation_files(con, raw, files, kind, text_columns)
        except duckdb.Error as exc:
            raise RetrievalError(f"observations file {path}: cannot be read as {kind.value}: "
                                 f"{engine_message(exc)}") from None
    else:
        table = observations_table(observations)
        _refuse_reserved(table.column_names)
        table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register(raw, table)
    described = con.execute(f"DESCRIBE SELECT * FROM {raw}").fetchall()
    columns = [r[0] for r in described if r[0] != ROW]
    types = {r[0]: r[1] for r in described}
    _refuse_reserved(columns)
    return raw, columns, types


def _refuse_reserved(columns: list[str]) -> None:
    reserved = [c for c in columns if c.startswith(INTERNAL_PREFIX)]
    if reserved:
        raise RetrievalError(f"observations: column(s) {', '.join(reserved)} use the reserved prefix "
                             f"{INTERNAL_PREFIX}; rename them")


def _read_observation_files(con: duckdb.DuckDBPyConnection, raw: str, files: list[str], kind: SourceType,
                            text_columns: Collection[str]) -> None:
    """Register observation files as view ``raw`` with their row order in ``__gm_row``."""
    file_list = "[" + ", ".join(lit(f) for f in files) + "]"
    if kind == SourceType.CSV:
        header = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv({file_list})").fetchall()]
        text = ", ".join(f"{lit(c)}: 'VARCHAR'" for c in header if c in text_columns)
        options = f", types = {{{text}}}" if text else ""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {raw}_t AS SELECT * FROM read_csv({file_list}{options})")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {raw} AS SELECT *, rowid::BIGINT AS {ROW} FROM {raw}_t")
    elif len(files) == 1:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {raw} AS SELECT * EXCLUDE (file_row_number), "
                    f"file_row_number AS {ROW} FROM read_parquet({file_list}, file_row_number=true)")
    else:
        mapping = ", ".join(f"({lit(f)}, {i})" for i, f in enumerate(files))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {raw}_files AS SELECT * FROM (VALUES {mapping}) "
                    "v(__gm_file, __gm_file_index)")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {raw} AS SELECT * EXCLUDE (filename, file_row_number, "
                    f"__gm_file, __gm_file_index), (__gm_file_index::BIGINT << 40) + file_row_number AS {ROW} "
                    f"FROM read_parquet({file_list}, filename=true, file_row_number=true) "
                    f"JOIN {raw}_files ON filename = __gm_file")
