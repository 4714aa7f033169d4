"""The DuckDB engine's two point-in-time join orderings give identical results.

The ASOF join orders feature rows by the tie rule (event time, create_timestamp, source order) unless no two
rows share a (key, ts): materialized rows hold one row per (key, ts) by construction, and the windows computed
from source around them are counted. Here the same retrieval runs computed from source (tie-rule ordering),
from materialized data (event time alone) and partly materialized (a computed gap with and without one repeated
(key, ts)); the choice is read from the engine's log and from the query, the results compared row by row,
types included, as Arrow, pandas and Parquet.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gristmill.compute.duckdb.engine import DuckDBEngine
from gristmill.compute.engine import FeatureSetRequest, MaterializedData
from gristmill.compute.result import RetrievalResult
from gristmill.jobs.materialize import materialize_window
from gristmill.spec.featureset_spec import FeatureSetSpec
from gristmill.stores.offline.delta import DeltaOfflineStore, OfflineTable

BASE = datetime(2024, 1, 1)
SPLIT = BASE + timedelta(hours=12)        # materialized before, computed from source after (partly materialized)
TIE_STRUCT = "'infinity'::TIMESTAMP"      # the tie-rule bound of the ASOF condition (pit.LATEST_BOUND)


def at(hours: float) -> datetime:
    return BASE + timedelta(hours=hours)


def source_rows(*, has_create: bool, repeat_after_split: bool) -> pa.Table:
    """Rows of a composite key (k1, k2) with a null key part, a null feature and rows on exact hours; with
    ``repeat_after_split`` one (key, ts) after SPLIT appears twice (the later copy wins the tie rule)."""
    rows: list[tuple[Any, ...]] = [
        ("a", "x", 0, 1.0, 10), ("a", "x", 6, None, 11), ("a", "y", 6, 3.0, 12), ("b", "x", 3, 4.0, 13),
        (None, "x", 6, 5.0, 14), ("a", "x", 15, 6.0, 15), ("b", "x", 18, 7.0, 16), ("a", "y", 21, 8.0, 17),
    ]
    if repeat_after_split:
        rows.append(("b", "x", 18, 9.0, 18))
    columns: dict[str, Any] = {
        "k1": pa.array([r[0] for r in rows], pa.string()),
        "k2": pa.array([r[1] for r in rows], pa.string()),
        "ts": pa.array([at(r[2]) for r in rows], pa.timestamp("us")),
    }
    if has_create:
        columns["create_timestamp"] = pa.array([at(r[2] + 1) for r in rows], pa.timestamp("us"))
    columns["f1"] = pa.array([r[3] for r in rows], pa.float64())
    columns["f2"] = pa.array([r[4] for r in rows], pa.int64())
    return pa.table(columns)


def observations() -> pa.Table:
    keys = [("a", "x"), ("a", "y"), ("b", "x"), (None, "x"), ("a", None), ("zz", "x")]
    times = [0, 2, 6, 7, 14, 15, 18, 19, 21, 30]
    rows = [(k1, k2, at(t)) for k1, k2 in keys for t in times]
    return pa.table({"obs_id": pa.array(range(len(rows)), pa.int64()),
                     "k1": pa.array([r[0] for r in rows], pa.string()),
                     "k2": pa.array([r[1] for r in rows], pa.string()),
                     "obs_ts": pa.array([r[2] for r in rows], pa.timestamp("us"))})


def request(folder: Path, table: pa.Table, *, delay: int, lookback: int | None) -> FeatureSetRequest:
    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "part-0.parquet")
    spec = FeatureSetSpec.from_dict({
        "source": {"type": "parquet", "path": "data", "timestamp_column": {"name": "ts"},
                   "source_delay": {"hours": delay}},
        "index_columns": [{"name": "k1", "type": "string"}, {"name": "k2", "type": "string"}],
        "temporal_join_lookback": None if lookback is None else {"hours": lookback},
        "features": [{"name": "f1", "type": "double"}, {"name": "f2", "type": "long"}],
    }, folder=folder)
    return FeatureSetRequest("fs:1", spec, (("f1", "f1"), ("f2", "f2")))


def materialized(request: FeatureSetRequest, folder: Path, *, until: datetime | None) -> FeatureSetRequest:
    """``request`` read from a Delta offline store materialized up to ``until`` (None: all time, strictly)."""
    spec = request.spec
    store = DeltaOfflineStore(str(folder / "offline"))
    table = OfflineTable("fs", "1", 1, tuple(spec.index_column_names), spec.timestamp_column,
                         tuple(spec.feature_names))
    window = (datetime(1970, 1, 1), until or datetime(2100, 1, 1))
    materialize_window(DuckDBEngine(), spec, *window, now=datetime(2099, 1, 1), label="fs:1", offline=(store, table))
    return replace(request, materialized=MaterializedData(store, table, (window,), strict=until is None))


def retrieve(request: FeatureSetRequest, observed: pa.Table | Path, caplog: pytest.LogCaptureFixture
             ) -> tuple[RetrievalResult, list[str]]:
    """The retrieval and the join ordering the engine logged for it (none logged: computed from source)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gristmill.compute"):
        result = DuckDBEngine().retrieve([request], observed, "obs_ts")
    logged = [r.getMessage() for r in caplog.records if "joining" in r.getMessage()]
    return result, logged


def outputs(result: RetrievalResult, folder: Path, name: str) -> tuple[pa.Table, pd.DataFrame, pa.Table]:
    path = result.to_parquet(folder / f"{name}.parquet")
    return result.to_arrow(), result.to_pandas(), pq.read_table(path)


@pytest.mark.parametrize("has_create", [True, False])
@pytest.mark.parametrize(("delay", "lookback"), [(0, None), (1, 6), (0, 0), (3, 12)])
@pytest.mark.parametrize("in_memory", [True, False])
def test_event_time_join_equals_tie_rule_join(tmp_path: Path, caplog: pytest.LogCaptureFixture, has_create: bool,
                                              delay: int, lookback: int | None, in_memory: bool) -> None:
    observed: pa.Table | Path = observations()
    if not in_memory:
        pq.write_table(observations(), tmp_path / "observations.parquet")
        observed = tmp_path / "observations.parquet"
    computed = request(tmp_path / "computed", source_rows(has_create=has_create, repeat_after_split=True),
                       delay=delay, lookback=lookback)
    tie_rule, logged = retrieve(computed, observed, caplog)
    assert not logged and TIE_STRUCT in tie_rule.sql      # computed from source: never counted, tie rule
    stored = materialized(computed, tmp_path / "computed", until=None)
    plain, logged = retrieve(stored, observed, caplog)
    assert logged == ["fs:1: no two rows share a (key, time); joining on the event time alone"]
    assert TIE_STRUCT not in plain.sql

    expected = outputs(tie_rule, tmp_path, "tie_rule")
    got = outputs(plain, tmp_path, "plain")
    assert got[0].schema == expected[0].schema and got[0].equals(expected[0])
    pd.testing.assert_frame_equal(got[1], expected[1], check_exact=True)
    assert got[2].schema == expected[2].schema and got[2].equals(expected[2])
    # the repeated (key, ts) after SPLIT went to the tie rule's winner (its later copy) on both paths
    winner = [row for row in got[0].to_pylist() if (row["k1"], row["k2"], row["obs_ts"]) == ("b", "x", at(19))]
    assert [row["f2"] for row in winner] == ([18] if lookback != 0 and delay <= 1 else [None])


@pytest.mark.parametrize("has_create", [True, False])
def test_computed_gap_is_counted_one_repeat_keeps_the_tie_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               has_create: bool) -> None:
    """Partly materialized: the gap after SPLIT is computed from source and counted; no repeated (key, ts) there
    means the plain join, a single one the tie-rule join — the answers equal the all-computed ones either way."""
    for repeat in (False, True):
        folder = tmp_path / f"repeat-{repeat}"
        computed = request(folder, source_rows(has_create=has_create, repeat_after_split=repeat), delay=0,
                           lookback=None)
        tie_rule, _ = retrieve(computed, observations(), caplog)
        partly, logged = retrieve(materialized(computed, folder, until=SPLIT), observations(), caplog)
        if repeat:
            assert logged == ["fs:1: 1 (key, time) pairs computed from source occur more than once; "
                              "joining by the tie rule"]
            assert TIE_STRUCT in partly.sql
        else:
            assert logged == ["fs:1: no two rows share a (key, time); joining on the event time alone"]
            assert TIE_STRUCT not in partly.sql
        assert partly.to_arrow().equals(tie_rule.to_arrow())
        pd.testing.assert_frame_equal(partly.to_pandas(), tie_rule.to_pandas(), check_exact=True)


def test_several_feature_sets_choose_their_ordering_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One retrieval of a materialized feature set (event time alone) and a computed one (tie rule)."""
    first = request(tmp_path / "one", source_rows(has_create=True, repeat_after_split=True), delay=0, lookback=6)
    second = request(tmp_path / "two", source_rows(has_create=False, repeat_after_split=True), delay=1, lookback=None)
    second = replace(second, label="other:1", outputs=(("f1", "g1"), ("f2", "g2")))
    stored = materialized(first, tmp_path / "one", until=None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gristmill.compute"):
        mixed = DuckDBEngine().retrieve([stored, second], observations(), "obs_ts")
    assert [r.getMessage() for r in caplog.records if "joining" in r.getMessage()] == [
        "fs:1: no two rows share a (key, time); joining on the event time alone"]
    assert mixed.sql.count(TIE_STRUCT) == 1                 # only the computed feature set's ASOF condition
    both_computed = DuckDBEngine().retrieve([first, second], observations(), "obs_ts")
    assert mixed.to_arrow().equals(both_computed.to_arrow())
