"""Derived feature sets (source type ``featureset``): a feature set computed from another one's output,
row by row, through preview, point-in-time retrieval and materialization (computed and materialized
paths agree), chains of derivations, and the errors when the parent is missing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from repo_support import write_fs1_repo

import gristmill as gm


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


# A: 01-01 1, 01-02 2, 01-04 4 (and a duplicate at 01-02 created later: 20 wins the tie); B: 01-02 10
ROWS = pd.DataFrame({"acct": ["A", "A", "A", "A", "B"],
                     "ts": _ts("2024-01-01", "2024-01-02", "2024-01-04", "2024-01-02", "2024-01-02"),
                     "create_timestamp": _ts("2024-01-05", "2024-01-05", "2024-01-05", "2024-01-06", "2024-01-05"),
                     "f1": [1.0, 2.0, 4.0, 20.0, 10.0]})


def _derived(repo: Path, name: str, parent: str, spec: dict[str, Any]) -> None:
    folder = repo / name
    (folder / "spec").mkdir(parents=True)
    (folder / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": True}}))
    (folder / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump(
        {"source": {"type": "featureset", "path": parent}, "index_columns": [{"name": "acct", "type": "string"}],
         **spec}))


WINDOW_2D = {"feature_transformation": {"transformation_expressions": [
    {"transformation_type": "window", "feature_name": "f1_2d_sum", "source_column": "f1", "aggregation": "sum",
     "window": {"days": 2}}]}, "features": [{"name": "f1_2d_sum", "type": "double"}]}
DOUBLED = {"feature_transformation": {"transformation_sql": "SELECT acct, ts, create_timestamp, f1_2d_sum * 2 AS x "
                                                            "FROM source"},
           "features": [{"name": "x", "type": "double"}]}


@pytest.fixture
def store(tmp_path: Path) -> gm.FeatureStore:
    (tmp_path / "data").mkdir()
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", settings={"offline_enabled": True})
    # folder names sort the derived ones before their parents: apply must register parents first
    _derived(repo, "a_windows", "fs1:1", WINDOW_2D)
    _derived(repo, "a_doubled", "azureml:a_windows:1", DOUBLED)
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: datetime(2024, 1, 10))
    plan = store.apply(repo)
    assert plan.ok and [i.action for i in plan.items].count("created") == 4, str(plan)
    return store


def _rows(frame: pd.DataFrame, column: str) -> list[tuple[str, str, float]]:
    return [(r.acct, r.ts.strftime("%m-%d"), getattr(r, column)) for r in frame.itertuples()]


def test_a_window_over_a_parent_reads_its_output_row_by_row(store: gm.FeatureStore) -> None:
    got = store.preview("a_windows", 1, "2024-01-01", "2024-01-05").to_pandas()
    # the parent's output keeps both 01-02 rows of A (ties are settled at retrieval); the per-event window
    # includes every row within 2 days, both bounds inclusive
    assert sorted(_rows(got, "f1_2d_sum")) == [("A", "01-01", 1.0), ("A", "01-02", 23.0), ("A", "01-02", 23.0),
                                               ("A", "01-04", 26.0), ("B", "01-02", 10.0)]


def test_a_chain_of_derivations(store: gm.FeatureStore) -> None:
    got = store.preview("a_doubled", 1, "2024-01-03", "2024-01-05").to_pandas()
    # [01-03, 01-05) of the grandchild still sees the grandparent's history through the window
    assert _rows(got, "x") == [("A", "01-04", 52.0)]


def test_retrieval_materialized_equals_computed(store: gm.FeatureStore) -> None:
    observations = pd.DataFrame({"acct": ["A", "A", "A", "B", "C"],
                                 "ts": _ts("2024-01-01 12:00", "2024-01-02", "2024-01-04 06:00", "2024-01-03",
                                           "2024-01-03")})
    features = ["a_windows:1:f1_2d_sum", "a_doubled:1:x", "fs1:1:f1"]
    computed = store.get_offline_features(features, observations, "ts").to_pandas()
    assert computed["f1_2d_sum"].tolist()[:4] == [1.0, 23.0, 26.0, 10.0]
    assert computed["x"].tolist()[:4] == [2.0, 46.0, 52.0, 20.0]
    assert computed["f1"].tolist()[:4] == [1.0, 20.0, 4.0, 10.0]      # the later-created 01-02 row wins
    assert computed.iloc[4, 2:].isna().all()
    for name in ("fs1", "a_windows", "a_doubled"):
        [job] = store.backfill(name, 1, start="2023-12-01", end="2024-01-10")
        assert job.status.value == "Completed", job.error
    materialized = store.get_offline_features(features, observations, "ts", materialized_only=True).to_pandas()
    pd.testing.assert_frame_equal(materialized, computed)


def test_a_derived_feature_set_needs_its_parent(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "account.yaml").parent.mkdir(parents=True)
    (repo / "account.yaml").write_text("name: account\nversion: '1'\nindex_columns: [{name: acct, type: string}]\n")
    _derived(repo, "orphan", "nothere:1", WINDOW_2D)
    store = gm.FeatureStore.init(tmp_path / "store")
    plan = store.apply(repo)
    [item] = [i for i in plan.items if i.kind == "feature set"]
    assert item.action == "invalid" and "feature set nothere:1 not found" in item.detail
    assert "register it first" in item.detail
    local = gm.FeatureSetSpec.load(repo / "orphan" / "spec")
    with pytest.raises(gm.SpecError, match="compute it through a FeatureStore"):
        local.compute("2024-01-01", "2024-01-02")


def test_the_parent_path_must_name_a_version(tmp_path: Path) -> None:
    spec = gm.FeatureSetSpec.from_dict({"source": {"type": "featureset", "path": "fs1"},
                                        "index_columns": [{"name": "acct", "type": "string"}],
                                        "features": [{"name": "f1", "type": "double"}]})
    with pytest.raises(gm.SpecError, match="must name the parent as name:version"):
        assert spec.parent_ref


def test_a_pass_through_child_answers_like_its_parent(tmp_path: Path) -> None:
    """Property: a derived feature set that only re-declares its parent's feature returns, at every
    observation, exactly the parent's value (ties on (key, ts), create times, nulls and empty windows
    included), computed from source and materialized alike."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    (tmp_path / "data").mkdir()
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", settings={"offline_enabled": True},
                          lookback_days=2)
    _derived(repo, "child", "fs1:1", {"temporal_join_lookback": {"days": 2},
                                      "features": [{"name": "f1", "type": "double"}]})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: datetime(2024, 2, 1))
    assert store.apply(repo).ok
    hours = st.integers(min_value=0, max_value=24 * 6)
    row = st.tuples(st.sampled_from(["A", "B", None]), hours, st.integers(0, 3),
                    st.one_of(st.none(), st.floats(-5, 5, allow_nan=False)))

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rows=st.lists(row, min_size=1, max_size=25), observed=st.lists(st.tuples(st.sampled_from(["A", "B", "C"]),
                                                                                    hours), min_size=1, max_size=10))
    def check(rows: list[tuple[Any, int, int, Any]], observed: list[tuple[str, int]]) -> None:
        base = datetime(2024, 1, 1)
        pd.DataFrame({"acct": pd.array([r[0] for r in rows], dtype="string"),
                      "ts": pd.Series([base + pd.Timedelta(hours=r[1]) for r in rows]).astype("datetime64[us]"),
                      "create_timestamp": pd.Series([base + pd.Timedelta(days=10 + r[2]) for r in rows]
                                                    ).astype("datetime64[us]"),
                      "f1": pd.array([r[3] for r in rows], dtype="Float64")}
                     ).to_parquet(tmp_path / "data" / "rows.parquet")
        observations = pd.DataFrame({"acct": [o[0] for o in observed], "ts": pd.Series(
            [base + pd.Timedelta(hours=o[1]) for o in observed]).astype("datetime64[us]")})
        got = store.get_offline_features(["fs1:1:f1", "child:1:f1"], observations, "ts", full_feature_names=True,
                                         from_source=True).to_pandas()
        parent, child = got["fs1__1__f1"], got["child__1__f1"]
        assert parent.isna().tolist() == child.isna().tolist()
        assert parent.dropna().tolist() == child.dropna().tolist()
        for name in ("fs1", "child"):
            [job] = store.backfill(name, 1, start="2023-12-25", end="2024-01-08")
            assert job.status.value == "Completed", job.error
        stored = store.get_offline_features(["fs1:1:f1", "child:1:f1"], observations, "ts", full_feature_names=True,
                                            materialized_only=True).to_pandas()
        pd.testing.assert_frame_equal(stored, got)

    check()
