"""Results of computations and retrievals: lazy DuckDB queries that convert to pandas, Arrow, Polars and
Parquet. Converting runs the query; writing Parquet streams from the engine without a Python copy."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from gristmill.compute.duckdb.sqltext import lit
from gristmill.compute.messages import engine_message
from gristmill.errors import GristmillError, RetrievalError, TransformationError, install_hint

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import duckdb
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger("gristmill.compute")
T = TypeVar("T")


def arrow_table(relation: Any) -> pa.Table:
    """Fetch a DuckDB relation as an Arrow table (``to_arrow_table`` on DuckDB >= 1.4, ``arrow`` before)."""
    fetch = getattr(relation, "to_arrow_table", None)
    return fetch() if fetch is not None else relation.arrow()


class QueryResult:
    """A query bound to the engine connection that holds its inputs."""

    failure: ClassVar[type[GristmillError]] = GristmillError

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: str, *, description: str) -> None:
        self._con = con
        self._sql = sql
        self._description = description
        self._table: pa.Table | None = None

    @property
    def sql(self) -> str:
        return self._sql

    def _run(self, work: Callable[[], T]) -> T:
        """Run the query: an engine failure (a source file removed meanwhile, memory, disk) becomes one
        error naming what was being computed, in the user's terms."""
        import duckdb

        try:
            return work()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise self.failure(f"{self._description} failed: {engine_message(exc)}") from None

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table (timestamps as UTC ``timestamp[us]``)."""
        if self._table is None:
            started = time.perf_counter()
            self._table = self._run(lambda: arrow_table(self._con.sql(self._sql)))
            log.info("%s: %d rows in %.2f s", self._description, self._table.num_rows,
                     time.perf_counter() - started)
        return self._table

    def to_batches(self, *, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        """The rows as a stream of Arrow record batches of at most ``batch_rows`` rows, without holding them all
        in memory (for results larger than memory; ``to_arrow`` holds them all)."""
        import pyarrow as pa

        if self._table is not None:
            return pa.RecordBatchReader.from_batches(self._table.schema, self._table.to_batches(batch_rows))
        relation = self._run(lambda: self._con.sql(self._sql))
        reader = getattr(relation, "to_arrow_reader", None)
        return self._run(lambda: reader(batch_rows) if reader is not None else relation.fetch_record_batch(batch_rows))

    def to_pandas(self) -> pd.DataFrame:
        """The rows as pandas; integer and boolean columns use nullable dtypes so 64-bit values and nulls
        survive (a null in a float64 column would round large integers)."""
        return _nullable_pandas(self.to_arrow())

    def to_polars(self) -> Any:
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError(f"to_polars() needs Polars: {install_hint('polars')}") from exc
        return pl.from_arrow(self.to_arrow())

    def to_parquet(self, path: str | Path) -> Path:
        """Write the rows to one Parquet file, streaming from the engine; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if self._table is not None:
            import pyarrow.parquet as pq

            pq.write_table(self._table, path)
        else:
            self._run(lambda: self._con.execute(f"COPY ({self._sql}) TO {lit(str(path))} (FORMAT parquet)"))
        log.info("%s: wrote %s in %.2f s", self._description, path, time.perf_counter() - started)
        return path

    def __len__(self) -> int:
        if self._table is not None:
            return self._table.num_rows
        return int(self._run(lambda: self._con.execute(f"SELECT count(*) FROM ({self._sql})").fetchall()[0][0]))

    @property
    def columns(self) -> list[str]:
        if self._table is not None:
            return list(self._table.column_names)
        return [row[0] for row in self._run(lambda: self._con.execute(f"DESCRIBE {self._sql}").fetchall())]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._description}>"


class FeatureFrame(QueryResult):
    """Computed feature rows of one feature set over a window: index columns, timestamp, features."""

    failure = TransformationError


class RetrievalResult(QueryResult):
    """Point-in-time correct training data: observation columns, then the requested features.

    Observations given in memory come back exactly as given (types, time zones, values): the query then
    computes only the feature columns, one row per observation in observation order, ``observations`` (the
    input as Arrow) supplies the rest, and ``frame`` (the caller's pandas or Polars DataFrame) answers
    ``to_pandas`` / ``to_polars`` of the same library. Otherwise ``observation_columns`` names the query's
    leading observation columns."""

    failure = RetrievalError

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: str, *, description: str,
                 observations: pa.Table | None = None, frame: Any = None,
                 observation_columns: Sequence[str] = ()) -> None:
        super().__init__(con, sql, description=description)
        self._observations = observations
        self._frame = frame if observations is not None else None
        self._observation_columns = list(observations.column_names if observations is not None
                                         else observation_columns)
        self._combined: pa.Table | None = None

    @classmethod
    def from_arrow(cls, table: pa.Table, *, description: str, observations: pa.Table | None = None,
                   frame: Any = None, observation_columns: Sequence[str] = ()) -> RetrievalResult:
        """A result over rows already computed (e.g. received from a server)."""
        import duckdb

        con = duckdb.connect()
        con.register("__gm_rows", table)
        return cls(con, "SELECT * FROM __gm_rows", description=description, observations=observations,
                   frame=frame, observation_columns=observation_columns)

    def to_arrow(self) -> pa.Table:
        if self._observations is None:
            return super().to_arrow()
        if self._combined is None:
            import pyarrow as pa

            features = super().to_arrow()
            given = self._observations
            schema = pa.schema([*given.schema, *features.schema], metadata=given.schema.metadata)
            self._combined = pa.Table.from_arrays([*given.columns, *features.columns], schema=schema)
        return self._combined

    def to_batches(self, *, batch_rows: int = 100_000) -> pa.RecordBatchReader:
        if self._observations is None:
            return super().to_batches(batch_rows=batch_rows)
        import pyarrow as pa

        table = self.to_arrow()                   # the observations are in memory already
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(batch_rows))

    def to_pandas(self) -> pd.DataFrame:
        """The rows as pandas: observation columns as given (for a pandas input) or as pandas reads them,
        features with nullable integer and boolean dtypes (``Int64``, ``boolean``) so 64-bit values and nulls
        survive."""
        import pandas as pd

        table = self.to_arrow()
        features = table.select([c for c in table.column_names if c not in self._observation_columns])
        feature_frame = _nullable_pandas(features.replace_schema_metadata(None))
        if isinstance(self._frame, pd.DataFrame):
            observed = self._frame.reset_index(drop=True)
        elif self._observation_columns:
            observed = table.select(self._observation_columns).to_pandas()
        else:
            return feature_frame
        return pd.concat([observed, feature_frame], axis=1)

    def to_polars(self) -> Any:
        if type(self._frame).__module__.startswith("polars"):
            import polars as pl

            features = self.to_arrow().select(self.columns[len(self._observation_columns):])
            return self._frame.hstack(pl.from_arrow(features).get_columns())
        return super().to_polars()

    def to_parquet(self, path: str | Path) -> Path:
        if self._observations is None:
            return super().to_parquet(path)
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), path)            # the observations are in memory already
        log.info("%s: wrote %s", self._description, path)
        return path

    def __len__(self) -> int:
        return self._observations.num_rows if self._observations is not None else super().__len__()

    @property
    def columns(self) -> list[str]:
        if self._observations is None:
            return super().columns
        if self._combined is not None:
            return list(self._combined.column_names)
        return [*self._observation_columns, *super().columns]


def _nullable_pandas(table: pa.Table) -> pd.DataFrame:
    """``table`` as pandas with nullable integer and boolean dtypes."""
    import pandas as pd
    import pyarrow as pa

    mapping = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
               pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)
