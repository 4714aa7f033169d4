"""The Spark engine's own surface, beyond the shared scenarios: observations given as a Spark DataFrame
(``to_spark()``), observation files read by Spark, one-file ``to_parquet``, the Arrow types of results and
the user-facing errors, each compared with the DuckDB engine's answer."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FeatureSetDefinition, Repo, fs1, rows, table
from spark_session import spark_engine, spark_session

from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.errors import RetrievalError

SCENARIO_1 = [2.0, 2.0, None, 10.0, None]


def s1() -> pd.DataFrame:
    return table("acct ts f1", ("A", "2024-01-01 00:00", 1.0), ("A", "2024-01-02 00:00", 2.0),
                 ("A", "2024-01-03 00:00", 3.0), ("B", "2024-01-01 12:00", 10.0))


def o1() -> pd.DataFrame:
    return table("acct ts obs_id", ("A", "2024-01-02 00:00", "o1"), ("A", "2024-01-02 12:00", "o2"),
                 ("A", "2023-12-31 00:00", "o3"), ("B", "2024-01-05 00:00", "o4"), ("C", "2024-01-02 00:00", "o5"))


@pytest.fixture(scope="module")
def repo(build_module_store: Any) -> Repo:
    typed = FeatureSetDefinition(
        name="typed", index={"acct": "string", "n": "long"},
        features={"i": "integer", "l": "long", "f": "float", "d": "double", "b": "boolean", "when": "datetime",
                  "s": "string"},
        source=pd.DataFrame({"acct": ["A", "A"], "n": [1, 2],
                             "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]).astype("datetime64[us]"),
                             "i": pd.array([1, None], "Int32"), "l": [2**40, 3], "f": [0.5, 1.5],
                             "d": [0.25, None], "b": [True, None],
                             "when": pd.to_datetime(["2023-06-01 12:00", None]).astype("datetime64[us]"),
                             "s": ["x", None]}))
    return build_module_store(fs1(s1()), typed)


def _requests(repo: Repo, features: list[str], *, full_feature_names: bool = False) -> list[Any]:
    from gristmill.retrieval import plan_requests, references

    store = repo.store
    return plan_requests(references(features), store._resolve, full_feature_names=full_feature_names,
                         store_name=store.name)


def _both(repo: Repo, features: list[str], observations: Any, timestamp_column: str = "ts",
          **options: Any) -> tuple[Any, Any]:
    requests = _requests(repo, features)
    duck = DuckDBEngine().retrieve(requests, observations, timestamp_column, **options)
    spark = spark_engine().retrieve(requests, observations, timestamp_column, **options)
    return duck, spark


def test_spark_dataframe_observations_and_to_spark(repo: Repo) -> None:
    frame = spark_session().createDataFrame(o1())
    result = spark_engine().retrieve(_requests(repo, ["fs1:1:f1"]), frame, "ts")
    out = result.to_spark()
    assert type(out).__name__ == "DataFrame"
    assert out.columns == ["acct", "ts", "obs_id", "f1"]
    assert [r["f1"] for r in out.orderBy("obs_id").collect()] == SCENARIO_1
    assert rows(result.to_pandas(), ["obs_id", "f1"]) == list(zip(o1()["obs_id"], SCENARIO_1, strict=True))
    assert len(result) == 5 and result.columns == ["acct", "ts", "obs_id", "f1"]
    batches = list(result.to_batches(batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert pa.Table.from_batches(batches).column("f1").to_pylist() == SCENARIO_1


def test_observation_column_names_with_dots_and_spaces(repo: Repo, tmp_path: Path) -> None:
    observations = o1().rename(columns={"obs_id": "obs.id x"})
    path = tmp_path / "observations.parquet"
    observations.to_parquet(path, index=False)
    for given in (spark_session().createDataFrame(observations), str(path)):
        result = spark_engine().retrieve(_requests(repo, ["fs1:1:f1"]), given, "ts").to_pandas()
        assert list(result.columns) == ["acct", "ts", "obs.id x", "f1"]
        assert rows(result, ["obs.id x", "f1"]) == list(zip(o1()["obs_id"], SCENARIO_1, strict=True))


def test_in_memory_observations_to_spark(repo: Repo) -> None:
    result = spark_engine().retrieve(_requests(repo, ["fs1:1:f1"]), o1(), "ts")
    out = result.to_spark().toPandas()
    assert list(out.columns) == ["acct", "ts", "obs_id", "f1"]
    assert rows(out, ["obs_id", "f1"]) == list(zip(o1()["obs_id"], SCENARIO_1, strict=True))


def test_check_counts_rows_like_duckdb(repo: Repo) -> None:
    spec = repo.store.get_feature_set("fs1", "1").spec
    for window in (None, (datetime(2024, 1, 2), datetime(2024, 1, 4))):
        expected = DuckDBEngine().check(spec, sample_rows=3, window=window)
        assert spark_engine().check(spec, sample_rows=3, window=window) == expected


def test_observation_files_read_by_spark(repo: Repo, tmp_path: Path) -> None:
    observations = o1()
    csv = tmp_path / "observations.csv"
    observations.assign(ts=observations["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")).to_csv(csv, index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    observations.iloc[:2].to_parquet(folder / "a.parquet", index=False)
    observations.iloc[2:].to_parquet(folder / "b.parquet", index=False)
    for path in (csv, folder / "*.parquet"):
        duck, spark = _both(repo, ["fs1:1:f1"], str(path))
        assert rows(spark.to_pandas()) == rows(duck.to_pandas()), path
        assert [v for v in spark.to_pandas()["f1"].tolist()][:1] == [2.0]


def test_to_parquet_writes_one_file(repo: Repo, tmp_path: Path) -> None:
    duck, spark = _both(repo, ["fs1:1:f1"], o1().assign(n=[1, 1, 2, 2, 1]))
    assert pq.read_table(spark.to_parquet(tmp_path / "a.parquet")).equals(duck.to_arrow())
    frame = spark_session().createDataFrame(o1().assign(n=[1, 1, 2, 2, 1]))
    by_spark = spark_engine().retrieve(_requests(repo, ["fs1:1:f1"]), frame, "ts")
    written = by_spark.to_parquet(tmp_path / "sub" / "b.parquet")
    assert written.is_file() and [p.name for p in written.parent.iterdir()] == ["b.parquet"]
    assert pq.read_table(written).column("f1").to_pylist() == SCENARIO_1


def _types_equal(repo: Repo, features: list[str]) -> None:
    observations = o1().assign(n=[1, 2, 2, 1, 1])
    duck, spark = _both(repo, [f"typed:1:{f}" for f in features], observations)
    assert spark.to_arrow().schema == duck.to_arrow().schema
    assert spark.to_arrow().equals(duck.to_arrow())
    spec = repo.store.get_feature_set("typed", "1").spec
    computed = spark_engine().compute(spec, "2024-01-01", "2024-02-01").to_arrow()
    expected = DuckDBEngine().compute(spec, "2024-01-01", "2024-02-01").to_arrow()
    assert computed.schema == expected.schema
    assert computed.equals(expected)


def test_arrow_types_equal_duckdb(build_store: Any) -> None:
    repo = build_store(FeatureSetDefinition(
        name="typed", index={"acct": "string", "n": "long"},
        features={"i": "integer", "l": "long", "f": "float", "d": "double", "b": "boolean", "s": "string"},
        source=pd.DataFrame({"acct": ["A", "A"], "n": [1, 2],
                             "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]).astype("datetime64[us]"),
                             "i": pd.array([1, None], "Int32"), "l": [2**40, 3], "f": [0.5, 1.5],
                             "d": [0.25, None], "b": [True, None], "s": ["x", None]})))
    _types_equal(repo, ["i", "l", "f", "d", "b", "s"])


def test_datetime_feature_types_equal_duckdb(repo: Repo) -> None:
    _types_equal(repo, ["i", "when", "s"])


def _error(call: Any) -> str:
    with pytest.raises(RetrievalError) as caught:
        call().to_arrow()
    return str(caught.value)


@pytest.mark.parametrize(("features", "observations", "timestamp_column", "options"), [
    (["fs1:1:f1"], o1(), "when", {}),                                             # no such time column
    (["typed:1:i"], o1(), "ts", {}),                                              # index column n missing
    (["fs1:1:f1"], o1().assign(acct=[1, 2, 3, 4, 5]), "ts", {}),                  # key type
    (["typed:1:i"], o1().assign(n=[1.5] * 5), "ts", {}),                          # lossy key
    (["fs1:1:f1"], o1().assign(ts=["01/02/2024"] * 5), "ts", {}),                 # not ISO text
    (["fs1:1:f1"], o1().assign(ts=[True] * 5), "ts", {}),                         # not a time
    (["fs1:1:f1"], o1().assign(__gm_row=1), "ts", {}),                            # reserved prefix
    (["fs1:1:f1"], o1(), "ts", {"aggregation_mode": "sliding"}),                  # unknown mode
    ([], o1(), "ts", {}),                                                         # no features
], ids=["time-column", "index-column", "key-type", "lossy-key", "iso", "time-type", "reserved", "mode", "empty"])
def test_errors_equal_duckdb(repo: Repo, features: list[str], observations: pd.DataFrame, timestamp_column: str,
                             options: dict[str, Any]) -> None:
    requests = _requests(repo, features) if features else []
    expected = _error(lambda: DuckDBEngine().retrieve(requests, observations, timestamp_column, **options))
    assert _error(lambda: spark_engine().retrieve(requests, observations, timestamp_column, **options)) == expected
    if "__gm_row" in observations.columns or not features:
        return
    frame = spark_session().createDataFrame(pa.Table.from_pandas(observations, preserve_index=False))
    assert _error(lambda: spark_engine().retrieve(requests, frame, timestamp_column, **options)) == expected


def test_iso_text_times_with_offsets(repo: Repo) -> None:
    texts = ["2024-01-02", "2024-01-02T12:00:00Z", "2024-01-01 23:00-0100", "2024-01-05 02:00+02",
             "2024-01-02 00:00:00.000000+00:00"]
    observations = o1().assign(ts=texts)
    duck, spark = _both(repo, ["fs1:1:f1"], observations)
    assert rows(spark.to_pandas()) == rows(duck.to_pandas())
    frame = spark_session().createDataFrame(observations)
    by_frame = spark_engine().retrieve(_requests(repo, ["fs1:1:f1"]), frame, "ts").to_pandas()
    assert rows(by_frame) == rows(duck.to_pandas())


def test_spark_dataframe_observations_with_bad_shapes_are_refused_by_name(repo: Repo, tmp_path: Path) -> None:
    spark = spark_session()
    requests = _requests(repo, ["fs1:1:f1"])
    repeated = spark.sql("SELECT 'A' AS acct, timestamp'2024-01-02' AS ts, 1 AS x, 2 AS x")
    with pytest.raises(RetrievalError, match=r"column\(s\) x appear more than once"):
        spark_engine().retrieve(requests, repeated, "ts")
    beyond = spark.sql("SELECT 'A' AS acct, timestamp_micros(253402300800000000) AS ts")
    with pytest.raises(RetrievalError, match="timestamp_column 'ts': observation times must lie between"):
        spark_engine().retrieve(requests, beyond, "ts")
    ticked = spark.createDataFrame(o1().rename(columns={"ts": "t`s"}))
    assert rows(spark_engine().retrieve(requests, ticked, "t`s").to_pandas(), ["f1"]) == \
        [(v,) for v in SCENARIO_1]
    result = spark_engine().retrieve(requests, spark.createDataFrame(o1()), "ts")
    with pytest.raises(RetrievalError, match="is a folder; give the path of the file"):
        result.to_parquet(tmp_path)


# Azure ML's featurestore_sample computes its transactions feature set with a pyspark.ml Transformer of this
# shape (rolling windows per account over the transaction time); written here from its description.
AZURE_TRANSFORMER = '''
from pyspark.ml import Transformer
from pyspark.sql import Window
from pyspark.sql import functions as F


def _last_days(n):
    return Window.partitionBy("accountID").orderBy(F.col("timestamp").cast("long")).rangeBetween(-n * 86400, 0)


class TransactionFeatureTransformer(Transformer):
    def _transform(self, df):
        return (df.withColumn("transaction_amount_7d_sum", F.sum("transactionAmount").over(_last_days(7)))
                  .withColumn("transaction_amount_7d_avg", F.avg("transactionAmount").over(_last_days(7)))
                  .withColumn("transaction_3d_count", F.count("transactionID").over(_last_days(3)))
                  .select("accountID", "timestamp", "transaction_amount_7d_sum", "transaction_amount_7d_avg",
                          "transaction_3d_count"))
'''
AZURE_FEATURES = {"transaction_amount_7d_sum": "double", "transaction_amount_7d_avg": "double",
                  "transaction_3d_count": "long"}


def test_azure_transformer_feature_set_computes_and_retrieves_as_sparks_own_run(tmp_path: Path) -> None:
    """Done-when of the Spark issue: the Azure-style transformer's feature set, applied to a store on the Spark
    engine, computes the rows Spark's own run of the transformer gives, and retrieval joins exactly those rows
    (the DuckDB engine over Spark's own output is the reference)."""
    import importlib.util

    spark = spark_session()
    source = pd.DataFrame({
        "accountID": [f"A{i % 3}" for i in range(40)],
        "timestamp": (pd.Timestamp("2024-01-01") + pd.to_timedelta([i * 11 for i in range(40)], unit="h")
                      ).astype("datetime64[us]"),
        "transactionID": [f"t{i}" for i in range(40)],
        "transactionAmount": [float((i * 37) % 101) for i in range(40)]})
    transactions = FeatureSetDefinition(
        name="transactions", index={"accountID": "string"}, features=AZURE_FEATURES, source=source,
        timestamp="timestamp", code={"transformation_code/transaction_transform.py": AZURE_TRANSFORMER},
        transformation={"transformation_code": {
            "path": "./transformation_code",
            "transformer_class": "transaction_transform.TransactionFeatureTransformer"}})
    repo = Repo(tmp_path / "azure")
    repo.add(transactions)
    plan = repo.spark_store.apply(repo.root / "repo")          # the spec check runs the transformer on Spark
    assert plan.ok, str(plan)

    module_file = repo.spec_folder("transactions") / "transformation_code" / "transaction_transform.py"
    loaded = importlib.util.spec_from_file_location("azure_transaction_transform", module_file)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    own = module.TransactionFeatureTransformer().transform(spark.createDataFrame(source)).toPandas()
    own = own.sort_values(["accountID", "timestamp"], kind="stable").reset_index(drop=True)
    own["timestamp"] = own["timestamp"].astype("datetime64[us]")

    computed = repo.spark_store.preview("transactions", "1", "2024-01-01", "2024-02-01").to_pandas()
    columns = ["accountID", "timestamp", *AZURE_FEATURES]
    assert rows(computed, columns) == rows(own, columns) and len(own) == 40

    reference = Repo(tmp_path / "reference")
    reference.add(FeatureSetDefinition(name="transactions", index={"accountID": "string"},
                                       features=AZURE_FEATURES, source=own, timestamp="timestamp"))
    reference.apply()
    observations = table("accountID ts", *[(f"A{i % 4}", f"2024-01-{1 + i % 25:02d} {i % 24:02d}:30")
                                          for i in range(30)])
    features = [f"transactions:1:{name}" for name in AZURE_FEATURES]
    expected = reference.store.get_offline_features(features, observations, "ts").to_pandas()
    actual = repo.spark_store.get_offline_features(features, observations, "ts").to_pandas()
    assert rows(actual) == rows(expected)
    assert sum(value is not None for value in rows(actual, ["transaction_3d_count"])) > 20
    repo.close()
    reference.close()


# -- a hot key in the point-in-time join --------------------------------------------------------------------------

def _hot_key_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Key H: 2,500 feature rows (ties on ts, decided by source order) x 1,000 observations = 2.5M pairs, above
    ``HOT_KEY_PAIRS``; keys c0..c9 are ordinary. Observations fall before, between, on and after the rows."""
    import numpy as np

    generator = np.random.default_rng(7)
    start = pd.Timestamp("2024-01-01")
    hot = pd.DataFrame({"acct": "H", "ts": start + pd.to_timedelta(generator.integers(0, 600, 2_500), unit="min"),
                        "f1": generator.normal(size=2_500)})
    cold = pd.DataFrame({"acct": [f"c{i % 10}" for i in range(200)],
                         "ts": start + pd.to_timedelta(generator.integers(0, 600, 200), unit="min"),
                         "f1": generator.normal(size=200)})
    source = pd.concat([hot, cold], ignore_index=True)
    source["ts"] = source["ts"].astype("datetime64[us]")
    observations = pd.DataFrame({
        "acct": ["H"] * 1_000 + [f"c{i % 12}" for i in range(100)],
        "ts": start + pd.to_timedelta(generator.integers(-30, 700, 1_100), unit="min"),
        "obs_id": range(1_100)})
    observations["ts"] = observations["ts"].astype("datetime64[us]")
    return source, observations


@pytest.mark.parametrize(("lookback", "given_as"), [(None, "pandas"), (timedelta(minutes=20), "pandas"),
                                                    (timedelta(minutes=20), "spark")])
def test_hot_key_takes_the_ordered_join_with_duckdbs_answers(build_store: Any, lookback: timedelta | None,
                                                             given_as: str, caplog: pytest.LogCaptureFixture) -> None:
    source, observations = _hot_key_data()
    repo = build_store(fs1(source, temporal_join_lookback=lookback))
    requests = _requests(repo, ["fs1:1:f1"])
    expected = DuckDBEngine().retrieve(requests, observations, "ts").to_pandas()
    given = spark_session().createDataFrame(observations) if given_as == "spark" else observations
    with caplog.at_level(logging.INFO, logger="gristmill.compute"):
        actual = spark_engine().retrieve(requests, given, "ts").to_pandas()
    assert "1 keys with more than 2000000 observation x feature row pairs" in caplog.text
    assert expected["f1"].notna().sum() > 500 and expected["f1"].isna().sum() > 10
    if given_as == "spark":                  # a Spark DataFrame's own columns keep Spark's types
        actual, expected = actual[["obs_id", "f1"]], expected[["obs_id", "f1"]]
    pd.testing.assert_frame_equal(actual, expected)


@pytest.mark.parametrize("path", ["split", "all-ordered"])
def test_ordered_join_matches_the_range_join_on_the_scenarios(build_store: Any, path: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key through the ordered join (all keys hot; or more hot keys than are collected)."""
    from gristmill.compute.spark import engine

    monkeypatch.setattr(engine, "HOT_KEY_PAIRS", 0)
    monkeypatch.setattr(engine, "MIN_HOT_OBSERVATIONS", 0)
    if path == "all-ordered":
        monkeypatch.setattr(engine, "MAX_HOT_KEYS", 0)
    repo = build_store(fs1(s1()), fs1(s1(), name="fs2", temporal_join_lookback=timedelta(days=1)),
                       fs1(s1(), name="fs3", source_delay=timedelta(hours=12)))
    requests = _requests(repo, ["fs1:1:f1", "fs2:1:f1", "fs3:1:f1"], full_feature_names=True)
    observations = o1()
    duck = DuckDBEngine().retrieve(requests, observations, "ts").to_pandas()
    spark = spark_engine().retrieve(requests, observations, "ts").to_pandas()
    pd.testing.assert_frame_equal(spark, duck)
    assert spark.iloc[:, 3].tolist()[:1] == [2.0]


@pytest.mark.parametrize("literal_files", [256, 0], ids=["file-map", "broadcast-join"])
def test_source_order_across_files(build_store: Any, monkeypatch: pytest.MonkeyPatch, literal_files: int) -> None:
    """A source of several files: each row's file index (from a literal map up to FILE_INDEX_LITERAL_FILES files,
    a broadcast join above) gives the same source order, and so the same tie winners, as the DuckDB engine."""
    from gristmill.compute.spark import sources

    monkeypatch.setattr(sources, "FILE_INDEX_LITERAL_FILES", literal_files)
    parts = [table("acct ts f1", ("A", "2024-01-01 00:00", values[0]), ("B", f"2024-01-0{index + 1} 12:00", values[1]))
             for index, values in enumerate(([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]))]   # (A, ts) in every file
    repo = build_store(fs1(parts))                                                 # type: ignore[arg-type]
    observations = table("acct ts", ("A", "2024-01-02 00:00"), ("B", "2024-01-04 00:00"))
    duck, spark = _both(repo, ["fs1:1:f1"], observations)
    assert spark.to_pandas()["f1"].tolist() == duck.to_pandas()["f1"].tolist() == [5.0, 6.0]   # the last file wins
