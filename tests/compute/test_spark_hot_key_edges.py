"""The Spark engine's point-in-time join on every path a key can take (range join; hot keys split off to the
ordered join; every key ordered, as past ``MAX_HOT_KEYS``) against the DuckDB engine: composite keys with null
parts, ties decided by create_timestamp and source order, ``as_known_at``, exact-timestamp joins, DSL windows
aggregated as of the observation time, observations given as a Spark DataFrame."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from conftest import FeatureSetDefinition, table
from spark_session import spark_engine, spark_session

from gristmill.compute.duckdb.engine import DuckDBEngine


def _source() -> pd.DataFrame:
    frame = table("acct n ts create_timestamp f1",
                  ("A", 1, "2024-01-01 00:00", "2024-01-01 01:00", 1.0),
                  ("A", 1, "2024-01-02 00:00", "2024-01-02 05:00", 2.0),    # a late correction of the next row
                  ("A", 1, "2024-01-02 00:00", "2024-01-02 01:00", 3.0),
                  ("A", 1, "2024-01-02 00:00", "2024-01-02 01:00", 4.0),    # equal create: the later row
                  ("A", 2, "2024-01-01 12:00", None, 5.0),
                  ("B", 1, "2024-01-01 06:00", "2024-01-01 06:00", 6.0),
                  ("B", 1, "2024-01-03 00:00", "2024-01-03 00:00", 7.0),
                  (None, 1, "2024-01-01 00:00", None, 8.0),
                  ("A", None, "2024-01-01 00:00", None, 9.0),
                  times=("ts", "create_timestamp"))
    frame["n"] = frame["n"].astype("Int64")
    return frame


def _observations() -> pd.DataFrame:
    frame = table("acct n ts obs_id",
                  ("A", 1, "2024-01-02 00:00", 0), ("A", 1, "2024-01-02 03:00", 1), ("A", 1, "2024-01-02 06:00", 2),
                  ("A", 1, "2023-12-31 00:00", 3), ("A", 2, "2024-01-01 12:00", 4), ("A", 2, "2024-01-05 00:00", 5),
                  ("B", 1, "2024-01-01 06:00", 6), ("B", 1, "2024-01-03 00:00", 7), (None, 1, "2024-01-02 00:00", 8),
                  ("A", None, "2024-01-02 00:00", 9), ("A", 1, None, 10), ("C", 1, "2024-01-02 00:00", 11),
                  ("A", 1, "2024-01-02 00:00", 12), ("B", 1, "2024-01-02 23:59", 13))
    frame["n"] = frame["n"].astype("Int64")
    return frame


def _definitions() -> list[FeatureSetDefinition]:
    index = {"acct": "string", "n": "long"}
    window = {"transformation_expressions": [
        {"transformation_type": "window", "feature_name": "s1d", "source_column": "f1", "aggregation": "sum",
         "window": {"days": 1}},
        {"transformation_type": "window", "feature_name": "c1d", "aggregation": "count", "window": {"days": 1}}]}
    return [
        FeatureSetDefinition(name="open", index=index, features={"f1": "double"}, source=_source()),
        FeatureSetDefinition(name="day", index=index, features={"f1": "double"}, source=_source(),
                             temporal_join_lookback=timedelta(days=1), source_delay=timedelta(hours=1)),
        FeatureSetDefinition(name="exact", index=index, features={"f1": "double"}, source=_source(),
                             temporal_join_lookback=timedelta(0), source_delay=timedelta(hours=1)),
        FeatureSetDefinition(name="win", index=index, features={"s1d": "double", "c1d": "long"}, source=_source(),
                             transformation=window, temporal_join_lookback=timedelta(days=2)),
    ]


FEATURES = ["open:1:f1", "day:1:f1", "exact:1:f1", "win:1:s1d", "win:1:c1d"]


@pytest.mark.parametrize("path", ["range", "split", "all-ordered"])
@pytest.mark.parametrize("options", [{}, {"as_known_at": True}, {"aggregation_mode": "as_of_observation"}],
                         ids=["plain", "as_known_at", "as_of_observation"])
def test_every_join_path_equals_duckdb(build_store: Any, path: str, options: dict[str, Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gristmill.compute.spark import engine
    from gristmill.retrieval import plan_requests, references

    if path != "range":
        monkeypatch.setattr(engine, "HOT_KEY_PAIRS", 0)
        monkeypatch.setattr(engine, "MIN_HOT_OBSERVATIONS", 0)
    if path == "all-ordered":
        monkeypatch.setattr(engine, "MAX_HOT_KEYS", 0)
    repo = build_store(*_definitions())
    store = repo.store
    requests = plan_requests(references(FEATURES), store._resolve, full_feature_names=True, store_name=store.name)
    observations = _observations()
    expected = DuckDBEngine().retrieve(requests, observations, "ts", **options).to_pandas()
    actual = spark_engine().retrieve(requests, observations, "ts", **options).to_pandas()
    pd.testing.assert_frame_equal(actual, expected)
    # as known at 01-02 00:00 the rows of that time (created later) are unknown; at 03:00 the equal-create tie
    # goes to the later row; at 06:00 the late correction is known
    assert expected["open__1__f1"].fillna(-1).tolist()[:4] == ([1.0, 4.0, 2.0, -1] if options.get("as_known_at")
                                                               else [2.0, 2.0, 2.0, -1])
    given = spark_session().createDataFrame(observations)        # keys counted by Spark, not on the driver
    from_spark = spark_engine().retrieve(requests, given, "ts", **options).to_pandas()
    columns = ["obs_id", *[c for c in expected.columns if "__" in c]]
    pd.testing.assert_frame_equal(from_spark[columns].sort_values("obs_id").reset_index(drop=True),
                                  expected[columns].sort_values("obs_id").reset_index(drop=True), check_dtype=False)
