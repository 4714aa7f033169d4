"""Materialization jobs on the Spark engine (a classic local session) against the DuckDB engine's: the same
backfill gives the same Delta rows (types included), the same online values (SQLite written by the driver, Redis
by the executors), the same counts and outcomes; the window is replaced atomically with no stray files; the
asset's ``spark_configuration`` is applied where Spark allows and said where not."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from redis_servers import REDIS_URL
from repo_support import write_fs1_repo
from spark_session import spark_session

import gristmill as gm

NOW = datetime(2024, 1, 4, 6)
FEATURES = [{"name": "f1", "type": "double"}, {"name": "n", "type": "integer"}, {"name": "big", "type": "long"},
            {"name": "ratio", "type": "float"}, {"name": "flag", "type": "boolean"},
            {"name": "seen", "type": "datetime"}, {"name": "label", "type": "string"}]


def _ts(*values: str | None) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _source() -> pd.DataFrame:
    """Ties on (key, time): A at 01-02 10:00 three times (create_timestamp decides; a row without one loses),
    B at 01-03 08:00 twice with equal create times (source order decides: the later row); a null key; a row
    outside the window; C's only row expires (ttl 2 days) before NOW."""
    return pd.DataFrame({
        "acct": ["A", "A", "A", "A", "B", "B", "C", None, "A"],
        "ts": _ts("2024-01-01 09:00", "2024-01-02 10:00", "2024-01-02 10:00", "2024-01-02 10:00",
                  "2024-01-03 08:00", "2024-01-03 08:00", "2024-01-01 00:30", "2024-01-02 00:00", "2024-01-09 00:00"),
        "create_timestamp": _ts("2024-01-01 10:00", "2024-01-02 11:00", "2024-01-02 12:00", None,
                                "2024-01-03 09:00", "2024-01-03 09:00", None, None, None),
        "f1": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        "n": pd.array([1, 2, 3, None, 5, 6, 7, 8, 9], "Int32"),
        "big": [2**40 + i for i in range(9)],
        "ratio": pd.array([0.5] * 9, "float32"),
        "flag": [True, False, True, None, True, False, True, True, True],
        "seen": _ts("2023-06-01 12:00", None, "2023-06-02", "2023-06-03", "2023-06-04", "2023-06-05", "2023-06-06",
                    "2023-06-07", "2023-06-08"),
        "label": ["a", "b", None, "d", "e", "f", "g", "h", "i"],
    })


def _store(root: Path, *, engine: str, online: str | None, offline: bool = True,
           settings: dict[str, Any] | None = None, source: pd.DataFrame | None = None) -> gm.FeatureStore:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (source if source is not None else _source()).to_parquet(data / "rows.parquet")
    repo = write_fs1_repo(root, source=data / "rows.parquet", lookback_days=2, features=FEATURES,
                          settings={"offline_enabled": offline, "online_enabled": online is not None,
                                    **(settings or {})})
    store = gm.FeatureStore.init(root / "store", clock=lambda: NOW,
                                 online_store=REDIS_URL if online == "redis" else None,
                                 online_prefix=f"gmtest-{uuid.uuid4().hex[:10]}" if online == "redis" else None,
                                 spark=spark_session() if engine == "spark" else None)
    assert store.job_engine.name == engine
    assert store.apply(repo).ok
    return store


def _offline(store: gm.FeatureStore) -> pd.DataFrame:
    table = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    return store.offline_store.read(table).to_pandas()


def _online(store: gm.FeatureStore) -> dict[str, list[Any]]:
    return store.get_online_features([f"fs1:1:{f['name']}" for f in FEATURES],
                                     {"acct": ["A", "B", "C", "Z"]}).to_dict()


def _job_facts(job: Any) -> tuple[Any, ...]:
    return (job.status.value, job.rows_read, job.rows_written, job.error)


@pytest.fixture(params=["sqlite", "redis"])
def online_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_backfill_offline_and_online_equals_duckdb(tmp_path: Path, online_kind: str) -> None:
    stores = {engine: _store(tmp_path / engine, engine=engine, online=online_kind) for engine in ("duckdb", "spark")}
    jobs = {engine: store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04") for engine, store in stores.items()}
    assert [_job_facts(j) for j in jobs["spark"]] == [_job_facts(j) for j in jobs["duckdb"]]
    [job] = jobs["spark"]
    assert (job.status.value, job.rows_read) == ("Completed", 5), job.error   # 8 rows in the window, 3 lost ties
    offline = {engine: _offline(store) for engine, store in stores.items()}
    pd.testing.assert_frame_equal(offline["spark"], offline["duckdb"])
    rows = offline["spark"]
    a_tie = rows[(rows["acct"] == "A") & (rows["ts"] == pd.Timestamp("2024-01-02 10:00", tz="UTC"))]
    assert a_tie["f1"].tolist() == [3.0]                 # the greatest create_timestamp
    assert rows[rows["acct"] == "B"]["f1"].tolist() == [6.0]    # equal create times: the later source row
    assert rows["acct"].isna().sum() == 1 and 9.0 not in rows["f1"].tolist()
    assert str(rows["create_timestamp"].iloc[-1]) != "NaT"    # stamped with the job's time where absent
    online = {engine: _online(store) for engine, store in stores.items()}
    assert online["spark"] == online["duckdb"]
    assert online["spark"]["f1"] == [3.0, 6.0, None, None]       # C expired at 01-03 00:30, before NOW
    assert online["spark"]["big"][:2] == [2**40 + 2, 2**40 + 5]
    records = {engine: store.materializer.records.get_job(jobs[engine][0].id) for engine, store in stores.items()}
    assert records["spark"].bytes_written > 0 and records["spark"].cpu_seconds > 0
    for store in stores.values():
        store.close()


def test_window_replacement_leaves_the_rest_and_no_stray_files(tmp_path: Path) -> None:
    store = _store(tmp_path, engine="spark", online=None)
    [first] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert first.status.value == "Completed", first.error
    changed = _source()
    changed.loc[changed["acct"] == "B", "f1"] = [50.0, 60.0]
    changed.loc[0, "f1"] = 10.0
    changed.to_parquet(tmp_path / "data" / "rows.parquet")
    [second] = store.backfill("fs1", 1, start="2024-01-03", end="2024-01-04")    # B's day only
    assert (second.status.value, second.rows_read) == ("Completed", 1), second.error
    rows = _offline(store)
    assert rows[rows["acct"] == "B"]["f1"].tolist() == [60.0]
    assert rows[rows["acct"] == "A"]["f1"].tolist() == [1.0, 3.0]       # outside the window: untouched
    table = Path(store.offline_store.table_uri(store.materializer.offline_table(store.get_feature_set("fs1", "1"))))
    from deltalake import DeltaTable

    live = {Path(uri.removeprefix("file://")).resolve() for uri in DeltaTable(str(table)).file_uris()}
    on_disk = {p.resolve() for p in table.rglob("*.parquet")}
    replaced = on_disk - live                                  # the old files of the rewritten day stay until vacuum
    assert all("_event_day=2024-01-03" in str(p) for p in replaced), replaced
    assert not (table / "_gm_staging").exists()
    assert not [p for p in table.rglob("*") if p.name.startswith(("_SUCCESS", ".part")) or "_temporary" in str(p)]
    store.close()


def test_online_only_and_online_from_offline_equal_duckdb(tmp_path: Path) -> None:
    results = {}
    for engine in ("duckdb", "spark"):
        store = _store(tmp_path / engine, engine=engine, online="sqlite", offline=False)
        [online_only] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
        first = _online(store)
        store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True,
                                                                     "online_enabled": True})
        [both] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04", stores=["offline"])
        [from_offline] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04", stores=["online"])
        records = store.materializer.records
        outcome = records.get_job(online_only.id).online
        results[engine] = (_job_facts(online_only), first, _job_facts(both), _job_facts(from_offline),
                           _online(store), outcome.keys_expired if outcome else None,
                           outcome.newest_event_time if outcome else None)
        store.close()
    assert results["spark"] == results["duckdb"]
    assert results["spark"][1]["f1"] == [3.0, 6.0, None, None]
    assert results["spark"][5] == 1 and results["spark"][6] == datetime(2024, 1, 3, 8)


def test_spark_configuration_of_the_asset_is_applied_for_the_job_or_named_as_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = {"spark_configuration": {"spark.sql.shuffle.partitions": 3, "spark.executor.memory": "2g",
                                        "spark.driver.cores": 2},
                "resource": {"instance_type": "standard_e8s_v3"}}
    store = _store(tmp_path, engine="spark", online=None, settings=settings)
    spark = spark_session()
    before = spark.conf.get("spark.sql.shuffle.partitions")
    with caplog.at_level(logging.INFO, logger="gristmill.jobs"):
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert job.status.value == "Completed", job.error
    assert "Spark settings applied for this job: spark.sql.shuffle.partitions" in caplog.text
    assert "not applied (they take effect when a session starts; set them in featurestore.yaml engine.conf): " \
           "spark.driver.cores, spark.executor.memory" in caplog.text
    assert spark.conf.get("spark.sql.shuffle.partitions") == before
    store.close()


def test_duckdb_jobs_say_spark_settings_do_not_apply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _store(tmp_path, engine="duckdb", online=None,
                   settings={"spark_configuration": {"spark.executor.memory": "2g"}})
    with caplog.at_level(logging.INFO, logger="gristmill.compute"):
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert job.status.value == "Completed", job.error
    assert "fs1:1: Spark settings not applied: the job runs on the DuckDB engine" in caplog.text
    store.close()


def test_failed_spark_job_leaves_the_window_incomplete_and_the_table_as_it_was(tmp_path: Path) -> None:
    store = _store(tmp_path, engine="spark", online="sqlite")
    [ok] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert ok.status.value == "Completed", ok.error
    before = _offline(store)
    bad = _source().assign(f1=["x"] * 9)            # a string where a double is declared
    bad.to_parquet(tmp_path / "data" / "rows.parquet")
    [failed] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-04")
    assert failed.status.value == "Failed" and "f1" in (failed.error or "") and "Traceback" not in failed.error
    pd.testing.assert_frame_equal(_offline(store), before)
    timeline = [(i.start, i.end, i.status.value) for i in store.data_intervals("fs1", 1)["offline"]]
    assert (datetime(2024, 1, 2), datetime(2024, 1, 4), "Incomplete") in timeline, timeline
    store.close()


def test_cost_counts_the_executors_cpu_from_sparks_task_metrics(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    rows = 200_000
    generator = np.random.default_rng(3)
    source = pd.DataFrame({"acct": [f"k{i % 5000}" for i in range(rows)],
                           "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(generator.integers(0, 3 * 86400, rows),
                                                                              unit="s"),
                           "f1": generator.normal(size=rows)})
    source["ts"] = source["ts"].astype("datetime64[us]")
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: NOW, spark=spark_session())
    (tmp_path / "data").mkdir()
    source.to_parquet(tmp_path / "data" / "rows.parquet")
    assert store.apply(write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", lookback_days=2,
                                      settings={"offline_enabled": True})).ok
    with caplog.at_level(logging.INFO, logger="gristmill.jobs"):
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert job.status.value == "Completed", job.error
    line = next(r.getMessage() for r in caplog.records if "Spark task metrics" in r.getMessage())
    executor_cpu = float(line.split("executor CPU ")[1].split(" s")[0])
    assert executor_cpu > 0.2, line                       # the executors did the work, not this process
    assert f"read {rows:,} records" in line, line                     # the source file, read once
    assert job.cpu_seconds >= executor_cpu
    store.close()


def test_online_outcome_times_do_not_follow_the_drivers_time_zone(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark hands timestamp metrics to Python as datetimes in the process's zone: the outcome's newest event
    time must still be UTC when the driver runs elsewhere (here New York)."""
    import time

    store = _store(tmp_path, engine="spark", online="sqlite", offline=False)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert job.status.value == "Completed", job.error
    outcome = store.materializer.records.get_job(job.id).online
    assert outcome is not None and outcome.newest_event_time == datetime(2024, 1, 3, 8)
    assert outcome.expires_at == datetime(2024, 1, 5, 8)
    store.close()


def test_spark_jobs_record_the_offline_statistics_duckdb_jobs_record(tmp_path: Path) -> None:
    """A Spark job computes the statistics of the offline window it wrote (from its files), equal to a DuckDB
    job's; the online store's are DuckDB-only for now."""
    stores = {engine: _store(tmp_path / engine, engine=engine, online="sqlite") for engine in ("duckdb", "spark")}
    for store in stores.values():
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
        assert job.status.value == "Completed", job.error
    found = {engine: store.feature_statistics("fs1", 1).windows for engine, store in stores.items()}
    [spark], [duckdb] = found["spark"], found["duckdb"]
    assert (spark.rows, spark.newest_event_time, spark.store) == (5, datetime(2024, 1, 3, 8), "offline")
    # equal up to float rounding: the engines sum in different orders, and a stddev over values near 2**40
    # loses digits to cancellation (seen: 8e-6 relative), so 1e-4
    for mine, theirs in zip(spark.features, duckdb.features, strict=True):
        close = {k: pytest.approx(getattr(theirs, k), rel=1e-4) for k in ("mean", "stddev")
                 if getattr(theirs, k) is not None}
        assert mine == replace(theirs, **close), mine.name
    assert spark.feature("label").top_values[0].count == 1 and spark.feature("f1").histogram[0].count == 1
    assert stores["spark"].materializer.statistics_records.windows(
        "fs1", "1", "online", materialization_version=1) == []
    for store in stores.values():
        store.close()
