"""Spark computation of feature rows against the DuckDB engine: the same spec over the same window gives the same
rows (sums, averages and deviations within a relative 1e-9), for every source type, transformation kind and DSL
aggregation — and a hot key (one key with most rows) stays fast."""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.spark.frames import feature_rows, probe_rows
from gristmill.compute.spark.transform import to_spark_sql
from gristmill.errors import SourceError, TransformationError
from gristmill.spec import FeatureSetSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

START, END = datetime(2024, 1, 2), datetime(2024, 1, 6)


@pytest.fixture(scope="module")
def spark() -> SparkSession:
    """The test process's one Spark session, built by the engine's own session code (tests/spark_session.py)."""
    from spark_session import spark_session

    return spark_session()
AGGREGATIONS = ["sum", "avg", "min", "max", "count", "latest", "first", "stddev", "variance", "distinct_count"]


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _spec(folder: Path, source: dict[str, Any], *, features: dict[str, str] | None = None,
          keys: dict[str, str] | None = None, **extra: Any) -> FeatureSetSpec:
    data = {"source": {"timestamp_column": {"name": "ts"}, **source},
            "index_columns": [{"name": k, "type": t} for k, t in (keys or {"acct": "string"}).items()],
            "features": [{"name": n, "type": t} for n, t in (features or {"f1": "double"}).items()], **extra}
    return FeatureSetSpec.from_dict(data, folder=folder)


def _duckdb_rows(spec: FeatureSetSpec, start: datetime | None = START, end: datetime | None = END) -> pd.DataFrame:
    frame = DuckDBEngine().compute(spec, start, end).to_arrow().to_pandas()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert(None).astype("datetime64[us]")
    return frame.reset_index(drop=True)


def _spark_rows(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None = START,
                end: datetime | None = END) -> pd.DataFrame:
    rows = feature_rows(spark, spec, start, end, label="feature set")
    shown = [*rows.keys, rows.timestamp, *(["create_timestamp"] if rows.has_create_timestamp else []), *rows.features]
    frame = rows.df.toPandas()
    frame = frame.sort_values([*rows.keys, rows.timestamp, "__gm_order"], kind="stable")[shown]
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype("datetime64[us]")
    return frame.reset_index(drop=True)


def _same(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected), (len(actual), len(expected))
    for column in expected.columns:
        for i, (want, got) in enumerate(zip(expected[column].tolist(), actual[column].tolist(), strict=True)):
            if _missing(want) or _missing(got):
                assert _missing(want) and _missing(got), (column, i, want, got)
            elif isinstance(want, float) or isinstance(got, float):
                assert math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-12), (column, i, want, got)
            else:
                assert want == got, (column, i, want, got)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NaT or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _check(spark: SparkSession, spec: FeatureSetSpec, start: datetime | None = START,
           end: datetime | None = END) -> pd.DataFrame:
    expected = _duckdb_rows(spec, start, end)
    actual = _spark_rows(spark, spec, start, end)
    _same(expected, actual)
    return actual


def _events(n: int, *, keys: int, seed: int = 7, days: float = 6.0) -> pd.DataFrame:
    """Random events over ``days`` days from 2024-01-01, with equal timestamps, nulls and repeated values."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, int(days * 86_400) // 600, n)) * 600   # 10-minute grid: many equal times
    amounts = np.round(rng.normal(100, 30, n), 2)
    amounts[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({
        "acct": [f"k{v}" for v in rng.integers(0, keys, n)],
        "ts": (pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us]"),
        "amount": amounts,
        "items": rng.integers(1, 6, n).astype("int64"),
        "kind": rng.choice(["a", "b", "c", "d"], n),
    })


def _dsl(folder: Path, *, window: dict[str, int], path: str = "events.parquet",
         also: dict[str, int] | None = None) -> FeatureSetSpec:
    """Every aggregation over ``window`` (and again over ``also``: several window lengths in one computation)."""
    expressions = []
    features = {}
    for suffix, length in (("", window), ("_also", also)):
        if length is None:
            continue
        for agg in AGGREGATIONS:
            column = {"sum": "amount", "avg": "amount", "min": "amount", "max": "items", "latest": "amount",
                      "first": "kind", "stddev": "amount", "variance": "items", "distinct_count": "kind"}.get(agg)
            name = f"{agg}_{column or 'rows'}{suffix}"
            expressions.append({"transformation_type": "window", "feature_name": name, "aggregation": agg,
                                "window": length, **({"source_column": column} if column else {})})
            features[name] = {"count": "long", "distinct_count": "long", "first": "string", "max": "long",
                              "latest": "double"}.get(agg, "double")
    return _spec(folder, {"type": "parquet", "path": path}, features=features,
                 feature_transformation={"transformation_expressions": expressions})


# -- sources ----------------------------------------------------------------------------------------------------

ROWS = pd.DataFrame({"acct": ["A", "A", "B", "A", "B"],
                     "ts": _ts("2024-01-02", "2024-01-03", "2024-01-02 12:00", "2024-01-03", "2024-01-07"),
                     "f1": [1.0, 2.0, 10.0, 3.0, None]})


def test_parquet_files_in_source_order(spark: SparkSession, tmp_path: Path) -> None:
    data = tmp_path / "data dir"
    data.mkdir()
    ROWS.iloc[:3].to_parquet(data / "a #1.parquet")
    ROWS.iloc[3:].to_parquet(data / "b+2.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "data dir"})
    actual = _check(spark, spec)
    # A at 2024-01-03 twice: file a's row first, then file b's (source order)
    assert actual["f1"].tolist() == [1.0, 2.0, 3.0, 10.0]
    orders = feature_rows(spark, spec, START, END, label="fs").df.orderBy("f1").select("__gm_order").toPandas()
    assert orders["__gm_order"].tolist() == [0, 1, 1 << 40, 2]


def test_csv_source(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.iloc[:3].to_csv(tmp_path / "a.csv", index=False)
    ROWS.iloc[3:].to_csv(tmp_path / "b.csv", index=False)
    _check(spark, _spec(tmp_path, {"type": "csv", "path": "*.csv"}))


def test_delta_source_partitioned(spark: SparkSession, tmp_path: Path) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "table"), ROWS.iloc[:3], partition_by=["acct"])
    write_deltalake(str(tmp_path / "table"), ROWS.iloc[3:], partition_by=["acct"], mode="append")
    _check(spark, _spec(tmp_path, {"type": "deltaTable", "path": "table"}))


CUSTOM = '''
import pandas as pd


class Rows:
    def __init__(self, scale: str = "1"):
        self.scale = float(scale)

    def process(self, start, end, **kwargs):
        frame = pd.DataFrame({"acct": ["A", "A", "B"], "ts": pd.to_datetime(["2024-01-03", "2024-01-03",
                              "2024-01-04"]).astype("datetime64[us]"), "f1": [1.0, 2.0, 3.0]})
        frame["f1"] = frame["f1"] * self.scale
        return frame
'''

CUSTOM_SPARK = '''
from pyspark.sql import SparkSession


class Rows:
    def process(self, start, end, **kwargs):
        spark = SparkSession.getActiveSession()
        return spark.sql("SELECT 'A' AS acct, TIMESTAMP '2024-01-03 00:00:00' AS ts, 1.0D AS f1 "
                         "UNION ALL SELECT 'A', TIMESTAMP '2024-01-03 00:00:00', 2.0D").coalesce(1)
'''


def test_custom_source_built_with_kwargs(spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "rows.py").write_text(CUSTOM)
    spec = _spec(tmp_path, {"type": "custom", "source_process_code": {"path": ".", "process_class": "rows.Rows"},
                            "kwargs": {"scale": "2"}})
    assert _check(spark, spec)["f1"].tolist() == [2.0, 4.0, 6.0]


def test_custom_source_returning_a_spark_dataframe(spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "rows.py").write_text(CUSTOM_SPARK)
    spec = _spec(tmp_path, {"type": "custom", "source_process_code": {"path": ".", "process_class": "rows.Rows"}})
    actual = _spark_rows(spark, spec)
    assert actual["f1"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize(("written", "fmt"), [
    (["2024-01-03T02:00:00+02:00", "2024-01-02 19:00:00-05:00", "2024-01-03 12:00:00Z"], None),
    (["2024-01-03 02:00 +0200", "2024-01-02 19:00 -0500", "2024-01-03 12:00 +0000"], "%Y-%m-%d %H:%M %z"),
    (["03/01/2024 02:00", "02/01/2024 19:00", "03/01/2024 12:00"], "%d/%m/%Y %H:%M"),
], ids=["iso", "format-offsets", "format"])
def test_text_timestamps(spark: SparkSession, tmp_path: Path, written: list[str], fmt: str | None) -> None:
    ROWS.iloc[:3].assign(ts=written).to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet", "timestamp_column": {"name": "ts",
                                                                                            "format": fmt}})
    _check(spark, spec)


def test_missing_column_fails_as_on_duckdb(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.drop(columns=["f1"]).to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"})
    with pytest.raises(SourceError) as duck:
        _duckdb_rows(spec)
    with pytest.raises(SourceError) as spark_error:
        _spark_rows(spark, spec)
    assert str(spark_error.value) == str(duck.value)


def test_declared_type_mismatch_fails_as_on_duckdb(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_sql": "SELECT acct, ts, 'x' AS f1 FROM source"})
    with pytest.raises(TransformationError) as duck:
        _duckdb_rows(spec)
    with pytest.raises(TransformationError) as spark_error:
        _spark_rows(spark, spec)
    assert str(spark_error.value) == str(duck.value)


# -- transformations --------------------------------------------------------------------------------------------

def test_sql_transformation(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    sql = ("SELECT acct, ts, f1 * 2 AS f1, CAST(ts AS TIMESTAMP) + INTERVAL 1 HOUR AS later, "
           "arg_max(ts, f1) OVER (PARTITION BY acct) AS best FROM source WHERE f1 IS NOT NULL")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 features={"f1": "double", "later": "datetime", "best": "datetime"},
                 feature_transformation={"transformation_sql": sql})
    _check(spark, spec)


@pytest.mark.parametrize(("sql", "construct"), [
    ("SELECT a.* FROM source a ASOF JOIN source b ON a.ts >= b.ts", "ASOF JOIN"),
    ("SELECT * REPLACE (f1 + 1 AS f1) FROM source", "* REPLACE"),
    ("SELECT acct, ts, count(DISTINCT f1) OVER (PARTITION BY acct) AS f1 FROM source", "DISTINCT in a window"),
    ("SELECT acct, ts, rowid AS f1 FROM source", "rowid"),
    ("SELECT acct, 'infinity'::TIMESTAMP AS ts, f1 FROM source", "infinite timestamps"),
    ("SELECT * FROM read_parquet('/etc/passwd')", "read_parquet is not allowed"),
    ("SELECT acct, ts, reflect('java.lang.System', 'exit', 1) AS f1 FROM source", "reflect is not allowed"),
])
def test_sql_without_a_spark_form_is_refused(sql: str, construct: str) -> None:
    with pytest.raises(TransformationError, match="transformation_sql") as error:
        to_spark_sql(sql, label="feature set t:1")
    assert construct in str(error.value)
    assert "__gm_" not in str(error.value)


def test_duckdb_timestamp_is_spark_timestamp() -> None:
    assert "TIMESTAMP_NTZ" not in to_spark_sql("SELECT CAST(ts AS TIMESTAMP) AS t FROM source", label="t")


PANDAS_CODE = '''
class Doubler:
    def transform(self, frame):
        frame = frame.copy()
        frame["f1"] = frame["f1"] * 2
        return frame
'''

TRANSFORMER_CODE = '''
from pyspark.ml import Transformer
from pyspark.sql import functions as F


class AccountTransformer(Transformer):
    """Azure's shape: a pyspark.ml Transformer whose _transform maps the source DataFrame to features."""

    def _transform(self, df):
        return df.where(F.col("f1").isNotNull()).select("acct", "ts", (F.col("f1") * 2).alias("f1"))
'''


def test_pandas_code_transformation(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "doubler.py").write_text(PANDAS_CODE)
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_code": {"path": "code",
                                                                 "transformer_class": "doubler.Doubler"}})
    _check(spark, spec)


def test_azure_transformer_runs_on_spark_and_is_refused_by_duckdb(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "account.py").write_text(TRANSFORMER_CODE)
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_code": {
                     "path": "code", "transformer_class": "account.AccountTransformer"}})
    actual = _spark_rows(spark, spec)
    assert actual["f1"].tolist() == [2.0, 4.0, 6.0, 20.0]
    with pytest.raises(TransformationError, match="AccountTransformer is a PySpark Transformer; it runs on the "
                                                  r"Spark engine: set engine: \{type: spark\}"):
        _duckdb_rows(spec)


# -- DSL windows ------------------------------------------------------------------------------------------------

@pytest.fixture(params=["sliding", "near-linear", "mixed"])
def window_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways DSL windows are computed: Spark's sliding frames (no hot key) and the near-linear path (taken
    by keys with more than ``HOT_KEY_ROWS`` rows; forced here by a limit of 0), and both in one computation."""
    from gristmill.compute.spark import windows

    if request.param == "near-linear":
        monkeypatch.setattr(windows, "HOT_KEY_ROWS", 0)
    elif request.param == "mixed":                 # some keys of the test data above, some below
        monkeypatch.setattr(windows, "HOT_KEY_ROWS", 100)
    return str(request.param)


def test_all_aggregations_match_duckdb(spark: SparkSession, tmp_path: Path, window_path: str) -> None:
    _events(600, keys=6).to_parquet(tmp_path / "events.parquet")
    _check(spark, _dsl(tmp_path, window={"days": 1}, also={"hours": 3}))


def test_all_aggregations_with_ties_across_files(spark: SparkSession, tmp_path: Path, window_path: str) -> None:
    events = _events(300, keys=3, seed=3)
    (tmp_path / "parts").mkdir()
    events.iloc[::2].to_parquet(tmp_path / "parts" / "a.parquet")
    events.iloc[1::2].to_parquet(tmp_path / "parts" / "b.parquet")
    _check(spark, _dsl(tmp_path, window={"hours": 12}, path="parts"), None, None)


def test_probes_as_of_observation_match_duckdb(spark: SparkSession, tmp_path: Path) -> None:
    _events(400, keys=4).to_parquet(tmp_path / "events.parquet")
    spec = _dsl(tmp_path, window={"hours": 6})
    probes = pd.DataFrame({"acct": ["k0", "k1", "k1", "k9", "k2"],
                           "__gm_probe_ts": _ts("2024-01-03 05:00", "2024-01-02", "2024-01-02", "2024-01-04",
                                                "2024-01-05 10:10")})
    con = DuckDBEngine().connect()
    con.register("probes", probes)
    from gristmill.compute.duckdb.featureframe import probe_view

    view = probe_view(con, spec, "probes", label="fs")
    columns = [view.timestamp, *view.features]
    expected = con.execute(f"SELECT acct, {', '.join(columns)} FROM {view.name} ORDER BY acct, ts").df()
    rows = probe_rows(spark, spec, spark.createDataFrame(probes), label="fs")
    actual = rows.df.toPandas().sort_values(["acct", "ts"])[["acct", *columns]].reset_index(drop=True)
    actual["ts"] = actual["ts"].astype("datetime64[us]")
    expected["ts"] = expected["ts"].astype("datetime64[us]")
    _same(expected.reset_index(drop=True), actual)
    assert len(actual) == 4


def test_hot_key_is_near_linear(spark: SparkSession, tmp_path: Path) -> None:
    """One key with 30k rows inside one window: Spark's sliding frames would take minutes (O(rows x frame))."""
    events = _events(30_000, keys=1, seed=11, days=6.9)
    events.to_parquet(tmp_path / "events.parquet")
    spec = _dsl(tmp_path, window={"days": 7})
    started = time.perf_counter()
    actual = _spark_rows(spark, spec, None, None)
    elapsed = time.perf_counter() - started
    _same(_duckdb_rows(spec, None, None), actual)
    print(f"hot key: 30,000 rows of one key, 10 aggregations over 7 days: {elapsed:.1f} s on Spark")
    assert elapsed < 150       # quadratic frames take many minutes; 150 s leaves room for a loaded machine


def test_transformer_module_without_pyspark_is_refused_by_duckdb(tmp_path: Path) -> None:
    """Where pyspark is not installed, importing an Azure transformer fails; DuckDB says where it runs instead."""
    ROWS.to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "account.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyspark'\", name='pyspark')\n")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_code": {
                     "path": ".", "transformer_class": "account.AccountTransformer"}})
    with pytest.raises(TransformationError) as error:
        _duckdb_rows(spec)
    assert str(error.value) == (
        "feature set: transformation_code AccountTransformer is a PySpark Transformer; it runs on the Spark engine: "
        "set engine: {type: spark} in featurestore.yaml (docs/engines.md)")


def test_derived_feature_set_reads_its_parent(spark: SparkSession, tmp_path: Path) -> None:
    _events(200, keys=3, seed=5).to_parquet(tmp_path / "events.parquet")
    parent = _dsl(tmp_path, window={"hours": 5})
    child = FeatureSetSpec.from_dict({
        "source": {"type": "featureset", "path": "parent:1"},
        "index_columns": [{"name": "acct", "type": "string"}],
        "features": [{"name": "scaled", "type": "double"}],
        "feature_transformation": {"transformation_sql": "SELECT acct, ts, sum_amount * 10 AS scaled FROM source"},
    }, folder=tmp_path).with_parent(parent)
    _check(spark, child)


def test_sql_error_on_spark_names_the_sql_not_internals(spark: SparkSession, tmp_path: Path) -> None:
    ROWS.to_parquet(tmp_path / "rows.parquet")
    spec = _spec(tmp_path, {"type": "parquet", "path": "rows.parquet"},
                 feature_transformation={"transformation_sql": "SELECT acct, ts, nope AS f1 FROM source"})
    with pytest.raises(TransformationError, match="feature set: transformation_sql failed on Spark") as error:
        feature_rows(spark, spec, START, END, label="feature set")
    assert "nope" in str(error.value)
    assert "__gm_" not in str(error.value)


def test_rows_without_a_time_form_their_own_window(spark: SparkSession, tmp_path: Path, window_path: str) -> None:
    events = _events(60, keys=2, seed=9)
    events.loc[[3, 10, 11], "ts"] = pd.NaT
    events.to_parquet(tmp_path / "events.parquet")
    _check(spark, _dsl(tmp_path, window={"hours": 8}), None, None)


@pytest.mark.parametrize(("sql", "named"), [
    ("SELECT *, java_method('java.lang.System', 'getenv', 'HOME') AS x FROM source", "java_method is not allowed"),
    ("SELECT *, \"java_method\"('java.lang.System', 'getenv', 'HOME') AS x FROM source", "java_method is not allowed"),
    ("SELECT *, \"REFLECT\"('java.lang.System', 'getenv', 'HOME') AS x FROM source", "reflect is not allowed"),
    ("SELECT *, '${env:HOME}' AS x FROM source", "contains '${'"),
    ("SELECT *, '${spark.driver.extraJavaOptions}' AS x FROM source", "contains '${'"),
    ("SELECT *, 'a\\'' AS x FROM source", "does not parse"),
])
def test_spark_sql_that_reaches_the_machine_is_refused(sql: str, named: str) -> None:
    """Quoting a function's name does not hide it, and Spark's ${...} substitution never runs."""
    with pytest.raises(TransformationError) as caught:
        to_spark_sql(sql, label="feature set t:1")
    assert named in str(caught.value)
