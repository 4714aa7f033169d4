"""Registered models and lineage (SPEC §1, §4): a model version records the features it uses, on SQLite
and PostgreSQL registries; retrieval by model equals retrieval by its spec; the CLI's ``model`` commands,
``retrieve --model`` and the lineage in ``show``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cli_support import assert_ok, assert_user_error, gristmill
from repo_support import write_fs1_repo

import gristmill as gm


def _store(root: Path, registry: tuple[str, str] | None = None) -> gm.FeatureStore:
    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"acct": ["A", "A", "B"], "ts": pd.Series([datetime(2024, 1, 1), datetime(2024, 1, 2),
                                                            datetime(2024, 1, 1, 12)]).astype("datetime64[us]"),
                  "f1": [1.0, 2.0, 10.0], "f2": [5, 6, 7]}).to_parquet(root / "data" / "rows.parquet")
    repo = write_fs1_repo(root, source=root / "data" / "rows.parquet", settings={"online_enabled": True},
                          features=[{"name": "f1", "type": "double"}, {"name": "f2", "type": "long"}])
    url, schema = registry or (None, None)
    store = gm.FeatureStore.init(root / "store", registry_url=url, registry_schema=schema,
                                 clock=lambda: datetime(2024, 1, 3))
    assert store.apply(repo).ok
    return store


@pytest.mark.parametrize("registry", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_register_models_and_query_lineage(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    pg = request.getfixturevalue("postgres_schema") if registry == "postgresql" else None
    store = _store(tmp_path, pg)
    spec = gm.FeatureRetrievalSpec.from_features(["fs1:1:f1", "fs1:1:f2"])
    (tmp_path / "churn").mkdir()
    spec.dump(tmp_path / "churn")                                   # churn/feature_retrieval_spec.yaml
    assert store.register_model("churn", 1, tmp_path / "churn", description="Churn v1") == "created"
    assert store.register_model("churn", 1, tmp_path / "churn", description="Churn v1") == "unchanged"
    assert store.register_model("churn", 1, spec, description="Churn, first version") == "updated"
    assert store.register_model("fraud", 2, ["fs1:1:f2"]) == "created"
    with pytest.raises(gm.ImmutableError, match=r"churn:1 is registered with other features.*churn:2"):
        store.register_model("churn", 1, ["fs1:1:f1"])
    model = store.get_model("churn")
    assert (model.ref, model.features, model.feature_sets, model.description) == (
        "churn:1", ["fs1:1:f1", "fs1:1:f2"], ["fs1:1"], "Churn, first version")
    assert [m.ref for m in store.list_models()] == ["churn:1", "fraud:2"]
    assert [m.ref for m in store.models_using("fs1")] == ["churn:1", "fraud:2"]
    assert [m.ref for m in store.models_using("fs1", 1)] == ["churn:1", "fraud:2"]
    assert store.models_using("fs1", 2) == [] and store.models_using("other") == []
    with pytest.raises(gm.NotFoundError, match="feature set fs1:1 has no feature nope"):
        store.register_model("bad", 1, ["fs1:1:nope"])
    with pytest.raises(gm.NotFoundError, match="feature set fs9:1 is not registered"):
        store.register_model("bad", 1, ["fs9:1:f1"])
    with pytest.raises(gm.NotFoundError, match="model"):
        store.get_model("bad")


def test_retrieval_by_model_equals_retrieval_by_its_spec(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.register_model("churn", 1, ["fs1:1:f2", "fs1:1:f1"])
    observations = pd.DataFrame({"acct": ["A", "B", "C"], "ts": pd.Series([datetime(2024, 1, 1, 6)] * 3
                                                                          ).astype("datetime64[us]")})
    model = store.get_model("churn", 1)
    by_model = store.get_offline_features(model, observations, "ts").to_pandas()
    by_list = store.get_offline_features(["fs1:1:f2", "fs1:1:f1"], observations, "ts").to_pandas()
    pd.testing.assert_frame_equal(by_model, by_list)
    assert list(by_model.columns) == ["acct", "ts", "f2", "f1"]
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-03")
    online = store.get_online_features(model, {"acct": ["A", "B"]}).to_dict()
    assert online == {"acct": ["A", "B"], "f2": [6, 7], "f1": [2.0, 10.0]}


def test_model_commands_and_retrieve_by_model(tmp_path: Path) -> None:
    store = _store(tmp_path)
    folder = tmp_path / "store"
    gm.FeatureRetrievalSpec.from_features(["fs1:1:f1"]).dump(tmp_path / "spec.yaml")
    assert_ok(gristmill("model", "register", "churn:1", "--spec", tmp_path / "spec.yaml",
                        "--description", "Churn", "--store", folder))
    listed = json.loads(gristmill("model", "list", "--json", "--store", folder).stdout)
    assert listed == [{"model": "churn:1", "feature_sets": "fs1:1", "features": 1, "description": "Churn"}]
    shown = yaml.safe_load(gristmill("model", "show", "churn", "--store", folder).stdout)
    assert shown["retrieval_spec"]["feature_stores"][0]["features"] == [{"feature_set": "fs1:1",
                                                                         "feature_name": "f1"}]
    lineage = yaml.safe_load(gristmill("show", "fs1:1", "--store", folder).stdout)
    assert lineage["used_by_models"] == ["churn:1"]
    pd.DataFrame({"acct": ["A"], "ts": pd.Series([datetime(2024, 1, 2, 1)]).astype("datetime64[us]")}
                 ).to_parquet(tmp_path / "obs.parquet")
    out = tmp_path / "train" / "train.parquet"
    assert_ok(gristmill("retrieve", "--model", "churn:1", "--observations", tmp_path / "obs.parquet",
                        "--timestamp-column", "ts", "--output", out, "--store", folder))
    assert pd.read_parquet(out)["f1"].tolist() == [2.0]
    assert (out.parent / "feature_retrieval_spec.yaml").exists()
    assert_user_error(gristmill("model", "register", "bad:1", "--spec", tmp_path / "nowhere.yaml", "--store", folder),
                      "nowhere.yaml")
    assert_user_error(gristmill("retrieve", "--model", "churn:1", "--features", "fs1:1:f1", "--observations",
                                tmp_path / "obs.parquet", "--timestamp-column", "ts", "--output", out,
                                "--store", folder), "exactly one of")
    del store
