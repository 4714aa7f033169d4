"""Online materialization and lookup through the FeatureStore (scenario 18), on SQLite and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from redis_servers import REDIS_URL
from repo_support import write_fs1_repo

import gristmill as gm


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _write_repo(root: Path, rows: pd.DataFrame, *, offline: bool) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows.to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", lookback_days=2,
                          settings={"offline_enabled": offline, "online_enabled": True},
                          features=[{"name": "f1", "type": "double"}, {"name": "big", "type": "long"}])
    return repo


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    stores: list[gm.FeatureStore] = []
    prefix = f"gmtest-{uuid.uuid4().hex[:10]}"

    def make(rows: pd.DataFrame, clock: Clock, *, offline: bool = False) -> gm.FeatureStore:
        repo = _write_repo(tmp_path, rows, offline=offline)
        online = {"sqlite": None, "redis": REDIS_URL}.get(request.param)
        if request.param == "redis-cluster":
            online = request.getfixturevalue("redis_cluster").url
        store = gm.FeatureStore.init(tmp_path / "store", online_store=online, online_prefix=prefix, clock=clock)
        assert store.apply(repo).ok
        stores.append(store)
        return store

    yield make
    for store in stores:
        for fs in store.list_feature_sets():
            table = store.materializer.online_table(store.get_feature_set(fs.name, fs.version))
            store.online_store.drop(table)
        store.close()


ROWS_18 = pd.DataFrame({"acct": ["A", "A", "B"], "ts": _ts("2024-01-07", "2024-01-09 12:00", "2024-01-07"),
                        "f1": [3.0, 5.0, 9.0], "big": [1, 3_000_000_000, 2]})


def test_scenario_18_online_materialization_and_lookup(make_store, tmp_path: Path) -> None:
    clock = Clock(datetime(2024, 1, 10))
    store = make_store(ROWS_18, clock)
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Completed", job.error
    observations = {"acct": ["A", "B", "C"], "request_id": [1, 2, 3]}
    result = store.get_online_features(["fs1:1:f1", "fs1:1:big"], observations).to_dict()
    assert result == {"acct": ["A", "B", "C"], "request_id": [1, 2, 3], "f1": [5.0, None, None],
                      "big": [3_000_000_000, None, None]}
    # an older event materialized later changes nothing
    pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-08"), "f1": [4.0], "big": [4]}).to_parquet(
        tmp_path / "data" / "rows.parquet")
    store.backfill("fs1", 1, start="2024-01-08", end="2024-01-09")
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}).to_dict()["f1"] == [5.0]
    clock.now = datetime(2024, 1, 11, 12)
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}).to_dict()["f1"] == [None]


def test_lookup_input_and_output_forms(make_store) -> None:
    store = make_store(ROWS_18, Clock(datetime(2024, 1, 10)))
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    rows = store.get_online_features(["fs1:1:f1"], [{"acct": "A", "f1": "mine"}]).to_rows()
    assert rows == [{"acct": "A", "f1": "mine", "f1_1": 5.0}]
    frame = store.get_online_features(["fs1:1:big"], pd.DataFrame({"acct": ["A", "C"]})).to_pandas()
    assert frame["big"].tolist()[0] == 3_000_000_000 and pd.isna(frame["big"].tolist()[1])
    with pytest.raises(gm.RetrievalError, match="acct"):
        store.get_online_features(["fs1:1:f1"], {"account": ["A"]})


def test_online_bootstraps_from_complete_offline_windows(make_store, tmp_path: Path) -> None:
    store = make_store(ROWS_18, Clock(datetime(2024, 1, 10)), offline=True)
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True, "online_enabled": False})
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    (tmp_path / "data" / "rows.parquet").unlink()  # from now on only the offline store has the rows
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True, "online_enabled": True})
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10", stores=["online"])
    assert job.status.value == "Completed", job.error
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}).to_dict()["f1"] == [5.0]


def test_reenabling_online_starts_empty(make_store) -> None:
    store = make_store(ROWS_18, Clock(datetime(2024, 1, 10)))
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    store.update_feature_set("fs1", 1, materialization_settings={"online_enabled": False})
    with pytest.raises(gm.RetrievalError, match="online_enabled"):
        store.get_online_features(["fs1:1:f1"], {"acct": ["A"]})
    store.update_feature_set("fs1", 1, materialization_settings={"online_enabled": True})
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}).to_dict()["f1"] == [None]
