"""Results of the Spark engine: lazy Spark DataFrames with the same API (and the same Arrow types) as the
DuckDB engine's ``FeatureFrame`` / ``RetrievalResult``, plus ``to_spark()``.

The classes reuse the DuckDB results' conversions (pandas with nullable dtypes, Polars, observations kept
as given) and replace only how rows are fetched: from a Spark DataFrame, in the order of its row-id
column."""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.compute.result import FeatureFrame, QueryResult, RetrievalResult
from gristmill.compute.spark.session import failure_text, is_spark_failure

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import pyarrow as pa
    from pyspark.sql import DataFrame

log = logging.getLogger("gristmill.compute")


class SparkQuery(QueryResult):
    """Rows of a Spark DataFrame, fetched on first use. ``order`` names the columns the rows are sorted by
    (ascending, nulls last; those not in ``schema`` are left out of the output); ``schema`` is the Arrow
    schema of the output (Spark's own Arrow types differ from the DuckDB engine's for naive times)."""

    def __init__(self, frame: DataFrame, *, description: str, order: Sequence[str], schema: pa.Schema,
                 full: Callable[[], DataFrame] | None = None, fetch: Callable[[], pa.Table] | None = None) -> None:
        super().__init__(None, "", description=description)  # type: ignore[arg-type]
        self._spark = frame
        self._order = list(order)
        self._schema = schema
        self._full = full
        self._fetch = fetch          # a cheaper way to the same rows, in order (fewer Spark stages)

    @property
    def sql(self) -> str:
        return f"(Spark) {self._description}"

    def _run(self, work: Callable[[], Any]) -> Any:
        """Run a Spark job: a failure becomes one error naming what was computed, without a JVM trace."""
        try:
            return work()
        except Exception as exc:
            if is_spark_failure(exc):
                raise self.failure(f"{self._description} failed: {failure_text(exc)}") from None
            raise

    def _output(self) -> DataFrame:
        """The DataFrame in output order, with only the output columns."""

        frame = self._spark
        if self._order:
            frame = frame.orderBy(*[column(c).asc_nulls_last() for c in self._order])
        return frame.select(*[column(c) for c in self._schema.names])

    def to_arrow(self) -> pa.Table:
        if self._table is None:
            started = time.perf_counter()
            # sorted on the driver: the rows are collected anyway, and a distributed sort costs a sampling job
            fetched = self._run(self._fetch or self._spark.toArrow)
            if self._fetch is None and self._order and fetched.num_rows > 1:
                fetched = fetched.sort_by([(c, "ascending", "at_end") for c in self._order])
            self._table = _conform(fetched, self._schema)
            log.info("%s: %d rows in %.2f s (Spark)", self._description, self._table.num_rows,
                     time.perf_counter() - started)
        return self._table

    def to_batches(self, *, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        """The rows as Arrow record batches of at most ``batch_rows`` rows. They are collected to the driver
        first: for results larger than its memory, use ``to_spark()`` or ``to_parquet()``."""
        import pyarrow as pa

        table = self.to_arrow()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(batch_rows))

    def to_spark(self) -> DataFrame:
        """The rows as a Spark DataFrame (lazy: nothing is collected to the driver)."""
        return self._full() if self._full is not None else self._output()

    def to_parquet(self, path: str | Path) -> Path:
        """Write the rows to one Parquet file at ``path``: the executors write into a folder next to it,
        then its single part file is moved to ``path`` (the same contract as the DuckDB engine)."""
        path = Path(path)
        if path.is_dir():
            raise self.failure(f"to_parquet: {path} is a folder; give the path of the file to write, e.g. "
                               f"{path / 'training.parquet'}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._table is not None:
            import pyarrow.parquet as pq

            pq.write_table(self._table, path)
            return path

        started = time.perf_counter()
        folder = path.parent / f".{path.name}.gm-{uuid.uuid4().hex[:8]}"
        output = self._output()
        naive = [f.name for f in self._schema if _is_naive_time(f.type)]
        output = output.select(*[column(c).cast("timestamp_ntz").alias(c) if c in naive else column(c)
                                 for c in output.columns])
        try:
            self._run(lambda: output.coalesce(1).write.mode("overwrite").parquet(str(folder.resolve())))
            parts = sorted(folder.glob("part-*.parquet"))
            if len(parts) != 1:
                raise self.failure(f"{self._description}: Spark wrote {len(parts)} files instead of one")
            shutil.move(str(parts[0]), path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("%s: wrote %s in %.2f s (Spark)", self._description, path, time.perf_counter() - started)
        return path

    def __len__(self) -> int:
        if self._table is not None:
            return self._table.num_rows
        return int(self._run(lambda: self._spark.count()))

    @property
    def columns(self) -> list[str]:
        return list(self._schema.names)


class SparkFeatureFrame(FeatureFrame, SparkQuery):
    """Computed feature rows of one feature set over a window, computed by Spark."""


class SparkRetrievalResult(RetrievalResult, SparkQuery):
    """Point-in-time correct training data computed by Spark: observation columns, then the features.

    In-memory observations come back exactly as given (the Spark job computes only the feature columns);
    ``to_spark()`` then joins them back in Spark."""

    def __init__(self, frame: DataFrame, *, description: str, order: Sequence[str], schema: pa.Schema,
                 observations: pa.Table | None = None, given: Any = None,
                 observation_columns: Sequence[str] = (), full: Callable[[], DataFrame] | None = None,
                 fetch: Callable[[], pa.Table] | None = None) -> None:
        SparkQuery.__init__(self, frame, description=description, order=order, schema=schema, full=full,
                            fetch=fetch)
        self._observations = observations
        self._frame = given if observations is not None else None   # the caller's pandas/Polars frame
        self._observation_columns = list(observations.column_names if observations is not None
                                         else observation_columns)
        self._combined = None

    @property
    def columns(self) -> list[str]:
        if self._observations is None:
            return list(self._schema.names)
        return [*self._observation_columns, *self._schema.names]

    def __len__(self) -> int:
        return self._observations.num_rows if self._observations is not None else SparkQuery.__len__(self)


def column(name: str) -> Any:
    """The Spark column named ``name`` exactly (a dot or space in it is part of the name, not a path)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _is_naive_time(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_timestamp(kind) and kind.tz is None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (as Spark hands it over) with the columns and Arrow types of ``schema``: UTC instants
    become naive UTC times where the DuckDB engine gives naive ones."""
    import pyarrow as pa

    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.type != field.type:
            if _is_naive_time(field.type) and pa.types.is_timestamp(column.type) and column.type.tz:
                column = column.cast(pa.timestamp(column.type.unit)).cast(field.type)
            else:
                column = column.cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
