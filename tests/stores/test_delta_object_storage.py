"""The Delta offline store on object storage (an S3 URI, through delta-rs and pyarrow), end to end through
the FeatureStore: windows replaced in one commit (scenario 16), retrieval from the materialized data equal
to computing from source, and the online store bootstrapped from Complete offline windows."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml
from object_store import BUCKET, S3Server
from repo_support import write_fs1_repo

import gristmill as gm


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _store(root: Path, server: S3Server, rows: pd.DataFrame, *, online: bool = False) -> gm.FeatureStore:
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows.to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", lookback_days=2,
                          settings={"offline_enabled": True, "online_enabled": online})
    uri = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/offline"
    gm.FeatureStore.init(root / "store", offline_store_uri=uri)
    config = yaml.safe_load((root / "store" / "featurestore.yaml").read_text())
    config["offline_store"]["storage_options"] = server.storage_options
    (root / "store" / "featurestore.yaml").write_text(yaml.safe_dump(config))
    store = gm.FeatureStore(root / "store", clock=lambda: datetime(2024, 1, 4))
    assert store.apply(repo).ok
    return store


ROWS_16 = pd.DataFrame({"acct": ["A"] * 3 + ["B"], "ts": _ts("2024-01-01 10:00", "2024-01-02 10:00",
                                                           "2024-01-03 10:00", "2024-01-02 18:00"),
                        "f1": [1.0, 2.0, 3.0, 9.0]})


def _stored(store: gm.FeatureStore) -> list[tuple[str, str, float]]:
    table = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    return [(r["acct"], r["ts"].strftime("%m-%d %H:%M"), r["f1"]) for r in store.offline_store.read(table).to_pylist()]


def test_scenario_16_on_object_storage(tmp_path: Path, s3_server: S3Server) -> None:
    store = _store(tmp_path, s3_server, ROWS_16)
    assert store.offline_store.table_uri(store.materializer.offline_table(store.get_feature_set("fs1", "1"))
                                         ).startswith(f"s3://{BUCKET}/")
    [job] = store.backfill("fs1", 1, start="2023-12-28", end="2024-01-04")     # covers the 2-day lookback
    assert (job.status.value, job.rows_written) == ("Completed", 4), job.error
    pd.DataFrame({"acct": ["A"] * 3, "ts": _ts("2024-01-01 10:00", "2024-01-02 12:00", "2024-01-03 10:00"),
                  "f1": [1.0, 22.0, 33.0]}).to_parquet(tmp_path / "data" / "rows.parquet")
    [job] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-03")
    assert job.status.value == "Completed", job.error
    # B's 01-02 row is gone at the source, so it is gone from the window; 01-01 and 01-03 are untouched
    assert _stored(store) == [("A", "01-01 10:00", 1.0), ("A", "01-02 12:00", 22.0), ("A", "01-03 10:00", 3.0)]
    observations = pd.DataFrame({"acct": ["A", "A", "B"], "ts": _ts("2024-01-02 11:00", "2024-01-03 12:00",
                                                                    "2024-01-03")})
    got = store.get_offline_features(["fs1:1:f1"], observations, "ts", materialized_only=True).to_pandas()
    assert got["f1"].tolist()[:2] == [1.0, 3.0] and pd.isna(got["f1"].tolist()[2])


def test_online_bootstraps_from_offline_windows_on_object_storage(tmp_path: Path, s3_server: S3Server) -> None:
    store = _store(tmp_path, s3_server, ROWS_16)
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    (tmp_path / "data" / "rows.parquet").unlink()          # the online job must read the offline store
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True, "online_enabled": True})
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04", stores=["online"])
    assert job.status.value == "Completed", job.error
    got = store.get_online_features(["fs1:1:f1"], {"acct": ["A", "B", "C"]}).to_dict()
    assert got["f1"] == [3.0, 9.0, None]
