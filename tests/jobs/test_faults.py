"""Faults during materialization, with real components: a private Redis server stopped before and during
an online backfill, a process killed while it writes the Delta offline store, and bad source files.

Each fault must end in a Failed (or never-committed) job whose window is not Complete, a clear error,
untouched data elsewhere, and a retry that repairs everything once the cause is gone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from redis_servers import RedisServer
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.jobs import DataStatus

NOW = datetime(2024, 1, 10)


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _day(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour)


# Scenario source S1 plus C, a key that only exists on 01-02.
ROWS = pd.DataFrame({"acct": ["A", "A", "A", "B", "C"],
                     "ts": _ts("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-01 12:00", "2024-01-02 06:00"),
                     "f1": [1.0, 2.0, 3.0, 10.0, 7.0]})


def _store(root: Path, files: dict[str, pd.DataFrame], *, source: str = "rows.parquet", offline: bool = False,
           online: bool = False, online_store: str | None = None) -> gm.FeatureStore:
    """A store with ``fs1`` (index acct, feature f1: double, no lookback) reading ``data/<source>``."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, frame in files.items():
        frame.to_parquet(data / name, index=False)
    repo = write_fs1_repo(root, source=data / source, settings={"offline_enabled": offline, "online_enabled": online})
    store = gm.FeatureStore.init(root / "store", online_store=online_store, online_prefix="faults",
                                 clock=lambda: NOW)
    plan = store.apply(repo)
    assert plan.ok, str(plan)
    return store


def _intervals(store: gm.FeatureStore, kind: str) -> list[tuple[datetime, datetime, str]]:
    return [(i.start, i.end, i.status.value) for i in store.data_intervals("fs1", 1)[kind]]


def _online(store: gm.FeatureStore, *keys: str) -> list[float | None]:
    return store.get_online_features(["fs1:1:f1"], {"acct": list(keys)}).to_dict()["f1"]


def _offline_rows(store: gm.FeatureStore) -> list[tuple[str, datetime, float]]:
    table = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    return [(r["acct"], r["ts"].replace(tzinfo=None), r["f1"]) for r in store.offline_store.read(table).to_pylist()]


# -- Redis stopped -----------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def _says_redis_is_unreachable(error: str | None, server: RedisServer) -> None:
    assert error, "a failed job must record its error"
    assert "Redis" in error, error
    assert f"127.0.0.1:{server.port}" in error, error


def test_redis_down_when_the_job_runs(tmp_path: Path, redis_server: RedisServer) -> None:
    """Both stores enabled: the job fails as a whole, both windows are Incomplete; the retry repairs both."""
    store = _store(tmp_path, {"rows.parquet": ROWS}, offline=True, online=True, online_store=redis_server.url)
    redis_server.kill()
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert job.status.value == "Failed"
    _says_redis_is_unreachable(job.error, redis_server)
    window = (_day(1), _day(4))
    assert _intervals(store, "online") == [(*window, "Incomplete")]
    assert _intervals(store, "offline") == [(*window, "Incomplete")]
    with pytest.raises(gm.GristmillError, match="Redis"):
        _online(store, "A")

    redis_server.start()
    [retry] = store.backfill("fs1", 1, job_id=job.id)
    assert retry.status.value == "Completed", retry.error
    assert (retry.start, retry.end) == window and retry.id != job.id
    assert _intervals(store, "online") == [(*window, "Complete")]
    assert _intervals(store, "offline") == [(*window, "Complete")]
    assert _online(store, "A", "B", "C", "D") == [3.0, 10.0, 7.0, None]
    observations = pd.DataFrame({"acct": ["A", "B", "C"], "ts": _ts("2024-01-02 12:00", "2024-01-02", "2024-01-03")})
    got = store.get_offline_features(["fs1:1:f1"], observations, "ts", materialized_only=True).to_pandas()
    assert got["f1"].tolist() == [2.0, 10.0, 7.0]
    assert store.get_job(job.id).status.value == "Failed"


def test_redis_killed_between_the_jobs_of_a_backfill(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two windows; Redis dies after the first job: the first stays Complete, the second fails, and
    retrying it after Redis returns brings every key to its newest value."""
    store = _store(tmp_path, {"rows.parquet": ROWS}, online=True, online_store=redis_server.url)
    store.materializer.records.set_status("fs1", "1", "online", _day(2), _day(3), DataStatus.INCOMPLETE)

    def on_job(job: object, index: int, total: int) -> None:
        if index == 1 and total == 2:  # called before the second job starts
            redis_server.kill()

    first, second = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-03", on_job=on_job)
    assert (first.start, first.end, first.status.value) == (_day(1), _day(2), "Completed")
    assert (second.start, second.end, second.status.value) == (_day(2), _day(3), "Failed")
    _says_redis_is_unreachable(second.error, redis_server)
    assert _intervals(store, "online") == [(_day(1), _day(2), "Complete"), (_day(2), _day(3), "Incomplete")]

    redis_server.start()
    assert _online(store, "A", "B", "C") == [1.0, 10.0, None]  # the first window survived the restart
    [retry] = store.backfill("fs1", 1, job_id=second.id)
    assert retry.status.value == "Completed", retry.error
    assert (retry.start, retry.end) == (_day(2), _day(3))
    assert _intervals(store, "online") == [(_day(1), _day(3), "Complete")]
    assert _online(store, "A", "B", "C") == [2.0, 10.0, 7.0]


def test_redis_killed_while_a_job_writes(tmp_path: Path, redis_server: RedisServer) -> None:
    """Redis dies in the middle of one job's write (some keys written, most not): the job fails, and the
    retry writes every key with its value."""
    n = 150_000
    rows = pd.DataFrame({"acct": [f"K{i}" for i in range(n)],
                         "ts": (pd.Timestamp("2024-01-02") + pd.to_timedelta(np.arange(n) % 86_400, unit="s"))
                         .astype("datetime64[us]"),
                         "f1": np.arange(n, dtype=float)})
    store = _store(tmp_path, {"rows.parquet": rows}, online=True, online_store=redis_server.url)
    killed_at: list[int] = []

    def kill_once_writing() -> None:
        client = redis_server.client()
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                size = int(client.dbsize())
                if size:
                    redis_server.kill()
                    killed_at.append(size)
                    return
                time.sleep(0.002)
        finally:
            client.close()

    killer = threading.Thread(target=kill_once_writing, daemon=True)
    killer.start()
    [job] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-03")
    killer.join(timeout=60)
    assert killed_at, "the job finished without writing a key while it was watched"
    assert job.status.value == "Failed", "Redis was killed after the whole window was written"
    _says_redis_is_unreachable(job.error, redis_server)
    assert _intervals(store, "online") == [(_day(2), _day(3), "Incomplete")]

    redis_server.start()
    partial = redis_server.dbsize()
    assert 0 < partial < n, f"{partial} of {n} keys: the kill should land in the middle of the write"
    [retry] = store.backfill("fs1", 1, job_id=job.id)
    assert retry.status.value == "Completed", retry.error
    assert retry.rows_written == n
    assert redis_server.dbsize() == n
    assert _intervals(store, "online") == [(_day(2), _day(3), "Complete")]
    sample = sorted({0, 1, n // 2, n - 1, *np.random.default_rng(3).integers(0, n, 2000).tolist()})
    assert _online(store, *(f"K{i}" for i in sample)) == [float(i) for i in sample]


# -- a process killed while it writes the offline store ----------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime
    import gristmill as gm
    store = gm.FeatureStore(sys.argv[1], clock=lambda: datetime(2024, 1, 10))
    jobs = store.backfill("fs1", 1, start=sys.argv[2], end=sys.argv[3])
    print("done", [job.status.value for job in jobs], flush=True)
""")


def test_process_killed_during_an_offline_write_leaves_the_table_as_before(tmp_path: Path) -> None:
    """A backfill of a window spanning ~2000 day partitions is killed after its first data file is on disk
    but before its commit: the table and retrieval answers are those from before."""
    small = pd.DataFrame({"acct": ["B", "A", "A", "A", "A"],
                          "ts": _ts("2019-06-01", "2024-01-01 10:00", "2024-01-02 10:00", "2024-01-03 10:00",
                                    "2024-01-05 10:00"),
                          "f1": [9.0, 1.0, 2.0, 3.0, 5.0]})
    store = _store(tmp_path, {"rows.parquet": small}, offline=True)
    window = ("2018-07-01", "2024-01-04")
    [whole] = store.backfill("fs1", 1, start=window[0], end="2024-01-10")
    assert whole.status.value == "Completed", whole.error
    before = _offline_rows(store)
    observations = pd.DataFrame({"acct": ["B", "A", "A", "A"],
                                 "ts": _ts("2019-06-02", "2024-01-02 12:00", "2024-01-03 12:00", "2024-01-06")})
    answers = store.get_offline_features(["fs1:1:f1"], observations, "ts").to_pandas()
    assert answers["f1"].tolist() == [9.0, 2.0, 3.0, 5.0]

    # The source grows by 100k rows of other keys spread over ~2000 days (one Delta partition per day),
    # so the rewrite of the window writes ~2000 files before it commits.
    days = 2000
    spread = pd.to_timedelta(np.arange(days * 50) * (86_400 * days // (days * 50)), unit="s")
    big = pd.DataFrame({"acct": [f"K{i % 1000}" for i in range(days * 50)],
                        "ts": (pd.Timestamp("2018-07-10") + spread).astype("datetime64[us]"),
                        "f1": np.arange(days * 50, dtype=float)})
    big = big[big["ts"] < pd.Timestamp("2024-01-04")]
    pd.concat([small, big]).to_parquet(tmp_path / "data" / "rows.parquet", index=False)

    table_dir = Path(store.offline_store.table_uri(store.materializer.offline_table(store.get_feature_set("fs1", 1))))
    log_dir = table_dir / "_delta_log"

    def data_files() -> set[Path]:
        return {p for p in table_dir.rglob("*") if p.is_file() and log_dir not in p.parents}

    committed = sorted(p.name for p in log_dir.glob("*.json"))
    existing = data_files()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), *window],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    new_files: set[Path] = set()
    while writer.poll() is None and time.monotonic() < deadline and not new_files:
        new_files = data_files() - existing
        time.sleep(0.001)
    still_running = writer.poll() is None
    writer.kill()
    out, err = writer.communicate(timeout=30)
    assert still_running and new_files, f"the writer was not caught writing:\n{out}\n{err}"
    assert "done" not in out

    assert sorted(p.name for p in log_dir.glob("*.json")) == committed, "the killed writer committed"
    assert data_files() - existing, "the killed writer left no uncommitted files: it was not mid-write"
    assert _offline_rows(store) == before
    reopened = gm.FeatureStore(store.path, clock=lambda: NOW)
    again = reopened.get_offline_features(["fs1:1:f1"], observations, "ts").to_pandas()
    pd.testing.assert_frame_equal(again, answers)
    # [01-04, 01-10) was outside the killed window: still Complete, read from the materialized rows
    tail = reopened.get_offline_features(["fs1:1:f1"], observations.tail(1), "ts", materialized_only=True)
    assert tail.to_pandas()["f1"].tolist() == [5.0]
    assert _intervals(reopened, "offline")[-1] == (_day(4), _day(10), "Complete")
    assert reopened.list_jobs(feature_set="fs1")[0].status.value != "Completed"
    reopened.close()


# -- bad source files --------------------------------------------------------------------------------
GOOD_DAY_1 = pd.DataFrame({"acct": ["A", "B"], "ts": _ts("2024-01-01 10:00", "2024-01-01 12:00"), "f1": [1.0, 10.0]})
GOOD_DAY_2 = pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-02 10:00"), "f1": [2.0]})
BAD_DAY_2 = {
    "wrong type": pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-02 10:00"), "f1": ["two"]}),
    "missing column": pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-02 10:00"), "f1_renamed": [2.0]}),
}


@pytest.mark.parametrize("layout", ["one file", "one of several files"])
@pytest.mark.parametrize("fault", list(BAD_DAY_2))
def test_bad_source_file_fails_the_job_naming_file_and_column(tmp_path: Path, fault: str, layout: str) -> None:
    if layout == "one file":
        both_days = pd.concat([GOOD_DAY_1, GOOD_DAY_2])
        store = _store(tmp_path, {"rows.parquet": both_days}, offline=True)
        bad_file = tmp_path / "data" / "rows.parquet"
        bad = (both_days.astype({"f1": str}) if fault == "wrong type"
               else both_days.rename(columns={"f1": "f1_renamed"}))
    else:
        store = _store(tmp_path, {"part-0.parquet": GOOD_DAY_1, "part-1.parquet": GOOD_DAY_2}, source="*.parquet",
                       offline=True)
        bad_file = tmp_path / "data" / "part-1.parquet"
        bad = BAD_DAY_2[fault]
    [good] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")
    assert good.status.value == "Completed", good.error
    before = _offline_rows(store)
    assert before == [("A", _day(1, 10), 1.0), ("B", _day(1, 12), 10.0)]

    bad.to_parquet(bad_file, index=False)
    [job] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-03")
    assert job.status.value == "Failed", f"{fault} in {bad_file.name} was materialized"
    assert "f1" in (job.error or ""), job.error
    assert bad_file.name in (job.error or ""), f"the error does not name the file {bad_file.name}: {job.error}"
    assert _offline_rows(store) == before
    assert _intervals(store, "offline") == [(_day(1), _day(2), "Complete"), (_day(2), _day(3), "Incomplete")]
