"""Materialization through Spark Connect on a real standalone cluster (a master, a worker and a Connect server
started from the pyspark wheel, tests/spark_cluster.py): a backfill (offline + Redis online), retrieval from the
materialized data and a scheduled run, all with ``engine: {type: spark, remote: sc://...}``, give the same Delta
rows and online values as the DuckDB engine; killing the Connect server in the middle of a backfill fails the job,
leaves its window Incomplete and the table as it was (no stray files), and the retry completes.

Everything Spark runs in ``gristmill`` CLI subprocesses (this process may hold a classic session, and classic and
Connect sessions cannot share a process); this process reads the results with Delta and the online store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from cli_support import _command as cli_command
from cli_support import assert_ok, gristmill
from deltalake import DeltaTable
from redis_servers import REDIS_URL
from repo_support import write_fs1_repo
from spark_cluster import SparkCluster

import gristmill as gm

NOW = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
START = (NOW - timedelta(days=6)).replace(hour=0)
END = (NOW - timedelta(days=1)).replace(hour=0)


def _source(rows: int = 4_000, seed: int = 5) -> pd.DataFrame:
    """Rows over the last week for 200 accounts, with (key, time) ties and create_timestamps."""
    generator = np.random.default_rng(seed)
    seconds = int((NOW - timedelta(hours=3) - START).total_seconds())      # create times stay before NOW
    ts = START + pd.to_timedelta(generator.integers(0, seconds, rows) // 60 * 60, unit="s")
    frame = pd.DataFrame({"acct": [f"a{i}" for i in generator.integers(0, 200, rows)],
                          "ts": pd.Series(ts).astype("datetime64[us]"),
                          "create_timestamp": pd.Series(ts + pd.to_timedelta(generator.integers(0, 3, rows),
                                                                             unit="h")).astype("datetime64[us]"),
                          "f1": generator.normal(size=rows)})
    frame.loc[frame.index[::7], "create_timestamp"] = pd.NaT
    return frame


def _stores(root: Path, remote: str) -> dict[str, Path]:
    """The same repo applied to a DuckDB store and to a store on the cluster (both Redis online, own prefix)."""
    data = root / "data"
    data.mkdir(parents=True)
    _source().to_parquet(data / "rows.parquet")
    repo = write_fs1_repo(root, source=data / "rows.parquet", lookback_days=3, settings={
        "offline_enabled": True, "online_enabled": True,
        "schedule": {"type": "recurrence", "frequency": "day", "interval": 1}})
    stores = {}
    for engine in ("duckdb", "connect"):
        folder = root / engine
        gm.FeatureStore.init(folder, online_store=REDIS_URL, online_prefix=f"gmcluster-{uuid.uuid4().hex[:10]}")
        if engine == "connect":
            config_file = folder / "featurestore.yaml"
            config = yaml.safe_load(config_file.read_text())
            config["engine"] = {"type": "spark", "remote": remote}
            config_file.write_text(yaml.safe_dump(config))
        # (the spec check's sample job on a cold cluster can pass its 30 s limit on a loaded 2-core machine;
        # the check itself is tested on Spark elsewhere)
        skip = ["--skip-source-check"] if engine == "connect" else []
        assert_ok(gristmill("apply", repo, "--store", folder, *skip))
        stores[engine] = folder
    return stores


def _offline(store: Path) -> pd.DataFrame:
    table = next(p.parent for p in (store / "offline").rglob("_delta_log"))
    frame = DeltaTable(str(table)).to_pandas().drop(columns=["_event_day"], errors="ignore")
    # a row without a create_timestamp gets its job's time: the same rows, stamped at different moments
    stamped = frame["create_timestamp"] >= pd.Timestamp(NOW - timedelta(minutes=30), tz="UTC")
    frame["create_timestamp"] = frame["create_timestamp"].where(~stamped, pd.Timestamp(NOW, tz="UTC"))
    return frame.sort_values(["acct", "ts"]).reset_index(drop=True)


def _online(store: Path) -> dict[str, Any]:
    opened = gm.FeatureStore(store)
    try:
        return opened.get_online_features(["fs1:1:f1"], {"acct": [f"a{i}" for i in range(200)]}).to_dict()
    finally:
        opened.close()


def _jobs(store: Path) -> list[dict[str, Any]]:
    done = gristmill("jobs", "--json", "--store", store)
    assert_ok(done)
    return list(json.loads(done.stdout))


def _stray_files(store: Path) -> list[Path]:
    """Parquet files under the table that its Delta log does not list, outside replaced day folders."""
    table = next(p.parent for p in (store / "offline").rglob("_delta_log"))
    live = {Path(uri.removeprefix("file://")).resolve() for uri in DeltaTable(str(table)).file_uris()}
    return [p for p in table.rglob("*.parquet") if p.resolve() not in live and "_delta_log" not in str(p)
            and ("_gm_staging" in str(p) or not p.name.startswith("part-"))]


RETRIEVE = """
import json, sys
import pandas as pd
import gristmill as gm
store = gm.FeatureStore(sys.argv[1])
observations = pd.read_parquet(sys.argv[2])
frame = store.get_offline_features(["fs1:1:f1"], observations, "ts", materialized_only=True).to_pandas()
print(json.dumps({"engine": store.engine.name, "connect": type(store.engine.spark).__module__,
                  "f1": [None if pd.isna(v) else float(v) for v in frame["f1"]]}))
"""


def test_backfill_retrieval_and_schedule_through_spark_connect_equal_duckdb(spark_cluster: SparkCluster,
                                                                            tmp_path: Path) -> None:
    stores = _stores(tmp_path, spark_cluster.remote)
    for engine, store in stores.items():
        done = gristmill("backfill", "fs1:1", "--start", START.isoformat(), "--end", END.isoformat(),
                         "--store", store)
        assert_ok(done)
        assert "1 of 1 job(s) completed" in done.stdout, (engine, done.stdout, done.stderr)
    duck, connect = (_jobs(stores[e]) for e in ("duckdb", "connect"))
    assert [(j["status"], j["rows_read"], j["rows_written"]) for j in connect] == \
           [(j["status"], j["rows_read"], j["rows_written"]) for j in duck]
    pd.testing.assert_frame_equal(_offline(stores["connect"]), _offline(stores["duckdb"]))
    assert _online(stores["connect"]) == _online(stores["duckdb"])
    assert sum(v is not None for v in _online(stores["connect"])["f1"]) > 50
    assert _stray_files(stores["connect"]) == []

    # retrieval from the materialized data, through Connect
    observations = pd.DataFrame({"acct": [f"a{i}" for i in range(0, 200, 3)],
                                 "ts": pd.Series([END - timedelta(hours=5)] * 67).astype("datetime64[us]")})
    observations.to_parquet(tmp_path / "observations.parquet")
    script = tmp_path / "retrieve.py"
    script.write_text(RETRIEVE)
    ran = subprocess.run([sys.executable, str(script), str(stores["connect"]), str(tmp_path / "observations.parquet")],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    answer = json.loads(ran.stdout.strip().splitlines()[-1])
    assert answer["engine"] == "spark" and answer["connect"].startswith("pyspark.sql.connect")
    expected = gm.FeatureStore(stores["duckdb"]).get_offline_features(
        ["fs1:1:f1"], observations, "ts", materialized_only=True).to_pandas()
    assert answer["f1"] == [None if pd.isna(v) else float(v) for v in expected["f1"]]

    # a scheduled run (the daily run due now) through Connect and on DuckDB
    for store in stores.values():
        assert_ok(gristmill("scheduler", "--once", "--store", store))
    scheduled = {e: [j for j in _jobs(s) if j["id"] not in {k["id"] for k in (connect if e == "connect" else duck)}]
                 for e, s in stores.items()}
    assert [j["status"] for j in scheduled["connect"]] == ["Completed"], scheduled
    assert [(j["rows_read"], j["rows_written"]) for j in scheduled["connect"]] == \
           [(j["rows_read"], j["rows_written"]) for j in scheduled["duckdb"]]
    pd.testing.assert_frame_equal(_offline(stores["connect"]), _offline(stores["duckdb"]))
    assert _online(stores["connect"]) == _online(stores["duckdb"])


def _frames_equal(left: pd.DataFrame, right: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(left, right)
    except AssertionError:
        return False
    return True


def test_connect_server_killed_mid_backfill_fails_the_job_and_the_retry_matches_duckdb(
        spark_cluster: SparkCluster, tmp_path: Path) -> None:
    stores = _stores(tmp_path, spark_cluster.remote)
    for store in stores.values():                 # a first window, Complete on both
        assert_ok(gristmill("backfill", "fs1:1", "--start", START.isoformat(),
                            "--end", (START + timedelta(days=2)).isoformat(), "--store", store))
    before = _offline(stores["connect"])
    pd.testing.assert_frame_equal(before, _offline(stores["duckdb"]))
    # the second window on the cluster, killed while it runs
    command = [*cli_command(), "backfill", "fs1:1", "--start", (START + timedelta(days=2)).isoformat(),
               "--end", END.isoformat(), "--store", str(stores["connect"])]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(j["status"] == "Running" for j in _jobs(stores["connect"])):
        time.sleep(0.2)
    time.sleep(2.0)                               # into the Spark work
    spark_cluster.kill_connect_server()
    try:
        out, err = running.communicate(timeout=240)
    finally:
        spark_cluster.restart_connect_server()
    jobs = _jobs(stores["connect"])
    failed = [j for j in jobs if j["status"] == "Failed"]
    assert len(failed) == 1, (jobs, out, err[-2000:])
    assert "Spark Connect server" in failed[0]["error"] and "Traceback" not in failed[0]["error"], failed[0]
    intervals = json.loads(gristmill("status", "fs1:1", "--json", "--store", stores["connect"]).stdout)
    assert any(i["status"] == "Incomplete" for i in intervals if i["store"] == "offline"), intervals
    assert_ok(gristmill("backfill", "fs1:1", "--start", START.isoformat(), "--end", END.isoformat(),
                        "--store", stores["duckdb"]))
    # no half window: the old window only (killed before the offline commit) or the whole new window too
    # (killed after it, e.g. while the job computed its statistics; the job still failed, the retry rewrites it)
    left = _offline(stores["connect"])
    whole = _offline(stores["duckdb"])
    assert _frames_equal(left, before) or _frames_equal(left, whole), (len(left), len(before), len(whole))
    assert _stray_files(stores["connect"]) == []
    # the retry completes and matches DuckDB's materialization of the same window
    retried = gristmill("backfill", "fs1:1", "--job-id", failed[0]["id"], "--store", stores["connect"])
    assert_ok(retried)
    pd.testing.assert_frame_equal(_offline(stores["connect"]), _offline(stores["duckdb"]))
    assert _online(stores["connect"]) == _online(stores["duckdb"])
    assert _stray_files(stores["connect"]) == []
