"""The Spark engine's feature statistics (``compute/spark/statistics.py``) against the DuckDB engine's on the
same known rows: the same SQL, the same numbers (a classic local session)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from repo_support import write_fs1_repo
from spark_session import spark_engine, spark_session
from statistics_support import FEATURES, ROWS

import gristmill as gm
from gristmill.compute.duckdb.statistics import window_statistics
from gristmill.compute.spark.statistics import frame_statistics
from gristmill.compute.statistics import TopValue
from gristmill.spec.types import FeatureType

SPEC = SimpleNamespace(features=[SimpleNamespace(name=f["name"], type=FeatureType(f["type"])) for f in FEATURES],
                       timestamp_column="ts")
WINDOW = {"start": datetime(2024, 1, 1), "end": datetime(2024, 1, 4)}


def test_spark_statistics_equal_the_duckdb_ones() -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(ROWS, preserve_index=False)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("known_rows", table)
    expected = window_statistics(con, "known_rows", SPEC, **WINDOW)  # type: ignore[arg-type]
    frame = spark_session().createDataFrame(ROWS.astype({"n": "float64"}).astype({"n": "Int64"}))
    got = frame_statistics(frame, SPEC, **WINDOW)  # type: ignore[arg-type]
    for mine, theirs in zip(got.features, expected.features, strict=True):     # equal up to float rounding
        close = {k: pytest.approx(getattr(theirs, k)) for k in ("mean", "stddev") if getattr(theirs, k) is not None}
        assert mine == replace(theirs, **close), mine.name
    assert replace(got, features=()) == replace(expected, features=())
    f1 = got.feature("f1")
    assert (got.rows, got.newest_event_time, f1.count, f1.nulls, f1.min, f1.max, f1.mean) == (
        6, datetime(2024, 1, 3, 10), 5, 1, 1.0, 9.0, 4.0)
    assert f1.stddev == pytest.approx(math.sqrt(10))
    assert [b.count for b in f1.histogram] == [1, 1, 1, 0, 0, 1, 0, 0, 0, 1]
    assert got.feature("cat").top_values == (TopValue("x", 3), TopValue("y", 2))
    assert (got.feature("seen").min, got.feature("seen").max) == (datetime(2023, 11, 20), datetime(2023, 12, 5))


def test_spark_statistics_from_the_source_equal_the_duckdb_ones(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", settings={}, features=FEATURES)
    store = gm.FeatureStore.init(tmp_path / "store")
    assert store.apply(repo).ok
    spec = store.get_feature_set("fs1", 1).spec
    got = spark_engine().statistics(spec, WINDOW["start"], WINDOW["end"], sample_rows=100, label="fs1:1")
    expected = store.engine.statistics(spec, WINDOW["start"], WINDOW["end"], sample_rows=100, label="fs1:1")
    assert (got.rows, got.sampled, got.sample_rows, got.newest_event_time) == (6, True, 100, datetime(2024, 1, 3, 10))
    assert [(f.name, f.count, f.nulls, f.min, f.max, f.top_values) for f in got.features] == [
        (f.name, f.count, f.nulls, f.min, f.max, f.top_values) for f in expected.features]
    assert spark_engine().statistics(spec, WINDOW["start"], WINDOW["end"], sample_rows=2).rows == 2
