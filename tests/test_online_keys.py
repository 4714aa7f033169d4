"""Online lookups hold keys to the declared index column types, as training-data retrieval does: integers of
any width for integer/long columns and text for string columns; anything else is one clear error, never a
silent miss. The CLI's ``--key`` text becomes an integer for integer columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from cli_support import assert_ok, assert_user_error, run_concurrently

import gristmill as gm


def _repo(root: Path) -> Path:
    pd.DataFrame({"acct": ["A", "7"], "n": np.array([7, 2**40], dtype="int64"),
                  "ts": pd.to_datetime(["2024-01-01", "2024-01-01"]).astype("datetime64[us]"),
                  "f": [1.0, 2.0]}).to_parquet(root / "rows.parquet", index=False)
    repo = root / "repo"
    for name, key, kind in (("by_text", "acct", "string"), ("by_number", "n", "long")):
        (repo / name / "spec").mkdir(parents=True)
        (repo / name / "FeatureSet.yaml").write_text(yaml.safe_dump({
            "name": name, "version": "1", "specification": {"path": "./spec"},
            "materialization_settings": {"online_enabled": True}}))
        (repo / name / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
            "source": {"type": "parquet", "path": str(root / "rows.parquet"), "timestamp_column": {"name": "ts"}},
            "index_columns": [{"name": key, "type": kind}], "features": [{"name": "f", "type": "double"}]}))
    return repo


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("online_keys")
    with gm.FeatureStore.init(root / "store") as opened:
        assert opened.apply(_repo(root)).ok
        for name in ("by_text", "by_number"):
            opened.backfill(name, 1, start="2024-01-01", end="2024-01-02")
        yield opened


@pytest.mark.parametrize(("feature", "column", "value", "fragments"), [
    ("by_text:1:f", "acct", 7, ["column acct holds 7 (int)", "by_text:1 declares it string", "e.g. '7'"]),
    ("by_text:1:f", "acct", np.int64(7), ["column acct holds", "declares it string"]),
    ("by_number:1:f", "n", "7", ["column n holds '7' (str)", "declares it long", "whole numbers"]),
    ("by_number:1:f", "n", 7.0, ["holds 7.0 (float)"]),
    ("by_number:1:f", "n", True, ["holds True (bool)"]),
])
def test_a_key_of_another_type_is_one_clear_error(store: gm.FeatureStore, feature: str, column: str, value: Any,
                                                  fragments: list[str]) -> None:
    with pytest.raises(gm.RetrievalError) as raised:
        store.get_online_features([feature], {column: [value]})
    for fragment in fragments:
        assert fragment in str(raised.value), str(raised.value)


def test_keys_of_the_declared_type_are_found(store: gm.FeatureStore) -> None:
    assert store.get_online_features(["by_text:1:f"], {"acct": ["7", "A", None]}).to_dict()["f"] == [2.0, 1.0, None]
    found = store.get_online_features(["by_number:1:f"], {"n": [np.int32(7), 2**40]}).to_dict()["f"]
    assert found == [1.0, 2.0]


def test_the_cli_reads_integer_keys_from_text(store: gm.FeatureStore) -> None:
    s = ["--store", store.path]
    ran = run_concurrently({
        "number": ["online", "get", "--features", "by_number:1:f", "--key", f"n=7,{2**40}", "--json", *s],
        "text": ["online", "get", "--features", "by_text:1:f", "--key", "acct=7", "--json", *s],
        "not a number": ["online", "get", "--features", "by_number:1:f", "--key", "n=seven", *s],
    })
    assert_ok(ran["number"])
    assert '"f": 1.0' in ran["number"].stdout and '"f": 2.0' in ran["number"].stdout
    assert_ok(ran["text"])
    assert '"f": 2.0' in ran["text"].stdout
    assert_user_error(ran["not a number"], "column n holds 'seven' (str)")
