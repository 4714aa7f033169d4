"""Queries spanning feature stores (SPEC §1: "several stores can exist; a query may span them"): a store
names others under ``peers:``, and ``other/feature_set:version:feature`` reads from them, offline
(computed and materialized) and online, with the same answers as asking the other store itself."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from repo_support import write_fs1_repo

import gristmill as gm

NOW = datetime(2024, 1, 10)


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _store(root: Path, name: str, values: list[float]) -> gm.FeatureStore:
    (root / "data").mkdir(parents=True)
    pd.DataFrame({"acct": ["A", "A", "B"], "ts": _ts("2024-01-01", "2024-01-08", "2024-01-08"), "f1": values}
                 ).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", lookback_days=5,
                          settings={"offline_enabled": True, "online_enabled": True})
    store = gm.FeatureStore.init(root / name, clock=lambda: NOW)
    assert store.apply(repo).ok
    return store


@pytest.fixture
def stores(tmp_path: Path) -> tuple[gm.FeatureStore, gm.FeatureStore]:
    marketing = _store(tmp_path / "m", "marketing", [1.0, 2.0, 3.0])
    risk = _store(tmp_path / "r", "risk", [10.0, 20.0, 30.0])
    config = yaml.safe_load((marketing.path / "featurestore.yaml").read_text())
    config["peers"] = {"risk": "../../r/risk"}
    (marketing.path / "featurestore.yaml").write_text(yaml.safe_dump(config))
    return gm.FeatureStore(marketing.path, clock=lambda: NOW), risk


OBSERVATIONS = pd.DataFrame({"acct": ["A", "A", "B", "C"], "ts": _ts("2024-01-02", "2024-01-09", "2024-01-09",
                                                                     "2024-01-09")})


def test_offline_retrieval_spans_stores(stores: tuple[gm.FeatureStore, gm.FeatureStore]) -> None:
    marketing, risk = stores
    got = marketing.get_offline_features(["fs1:1:f1", "risk/fs1:1:f1"], OBSERVATIONS, "ts",
                                         full_feature_names=True).to_pandas()
    assert list(got.columns) == ["acct", "ts", "fs1__1__f1", "risk__fs1__1__f1"]
    assert got["fs1__1__f1"].tolist()[:3] == [1.0, 2.0, 3.0]
    own = risk.get_offline_features(["fs1:1:f1"], OBSERVATIONS, "ts").to_pandas()
    assert got["risk__fs1__1__f1"].tolist()[:3] == own["f1"].tolist()[:3] == [10.0, 20.0, 30.0]
    assert got.iloc[3, 2:].isna().all()
    # a prefix naming this store itself is the same as no prefix
    same = marketing.get_offline_features(["marketing/fs1:1:f1"], OBSERVATIONS, "ts").to_pandas()
    assert same["f1"].tolist()[:3] == [1.0, 2.0, 3.0]


def test_the_other_stores_materialized_data_is_used(stores: tuple[gm.FeatureStore, gm.FeatureStore]) -> None:
    marketing, risk = stores
    with pytest.raises(gm.RetrievalError, match="strict retrieval"):
        marketing.get_offline_features(["risk/fs1:1:f1"], OBSERVATIONS, "ts", materialized_only=True)
    [job] = risk.backfill("fs1", 1, start="2023-12-01", end="2024-01-10")
    assert job.status.value == "Completed"
    stored = marketing.get_offline_features(["risk/fs1:1:f1"], OBSERVATIONS, "ts", materialized_only=True)
    assert stored.to_pandas()["f1"].tolist()[:3] == [10.0, 20.0, 30.0]


def test_online_lookups_span_stores(stores: tuple[gm.FeatureStore, gm.FeatureStore]) -> None:
    marketing, risk = stores
    marketing.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    risk.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    got = marketing.get_online_features(["fs1:1:f1", "risk/fs1:1:f1"], {"acct": ["A", "B", "C"]},
                                        full_feature_names=True).to_dict()
    assert got == {"acct": ["A", "B", "C"], "fs1__1__f1": [2.0, 3.0, None], "risk__fs1__1__f1": [20.0, 30.0, None]}


def test_clear_errors(stores: tuple[gm.FeatureStore, gm.FeatureStore]) -> None:
    marketing, _ = stores
    with pytest.raises(gm.RetrievalError, match=r"store 'fraud' is not a known store .*peers: risk"):
        marketing.get_offline_features(["fraud/fs1:1:f1"], OBSERVATIONS, "ts")
    with pytest.raises(gm.RetrievalError, match="same column name"):
        marketing.get_offline_features(["fs1:1:f1", "risk/fs1:1:f1"], OBSERVATIONS, "ts")
    with pytest.raises(gm.NotFoundError, match="risk/fs1:1 has no feature 'nope'"):
        marketing.get_offline_features(["risk/fs1:1:nope"], OBSERVATIONS, "ts")


def test_retrieval_specs_and_models_may_span_stores(stores: tuple[gm.FeatureStore, gm.FeatureStore],
                                                   tmp_path: Path) -> None:
    marketing, _ = stores
    spec = gm.FeatureRetrievalSpec.from_features(["fs1:1:f1", "risk/fs1:1:f1"])
    spec.dump(tmp_path / "spec.yaml")
    again = gm.FeatureRetrievalSpec.load(tmp_path / "spec.yaml")
    assert [f.feature_set for f in again.features] == ["fs1:1", "risk/fs1:1"]
    got = marketing.get_offline_features(again, OBSERVATIONS, "ts", full_feature_names=True).to_pandas()
    assert got["risk__fs1__1__f1"].tolist()[:3] == [10.0, 20.0, 30.0]
    assert marketing.register_model("joint", 1, again) == "created"
    assert [m.ref for m in marketing.models_using("fs1")] == ["joint:1"]
    by_model = marketing.get_offline_features(marketing.get_model("joint"), OBSERVATIONS, "ts",
                                              full_feature_names=True).to_pandas()
    pd.testing.assert_frame_equal(by_model, got)
    with pytest.raises(gm.NotFoundError, match="risk/fs1:1 has no feature nope"):
        marketing.register_model("bad", 1, ["risk/fs1:1:nope"])


def test_a_models_reference_to_this_store_itself_is_a_plain_reference(
        stores: tuple[gm.FeatureStore, gm.FeatureStore]) -> None:
    marketing, _ = stores
    assert marketing.register_model("own", 1, ["marketing/fs1:1:f1"]) == "created"
    assert marketing.get_model("own").features == ["fs1:1:f1"]
    assert [m.ref for m in marketing.models_using("fs1")] == ["own:1"]
    with pytest.raises(gm.NotFoundError, match="fs1:1 has no feature nope"):
        marketing.register_model("own_bad", 1, ["marketing/fs1:1:nope"])
