"""Backfills stay bounded: memory follows the rows in a window, not its days; a window is checked (its
span, its end against now) before any job is made; and the jobs of a ``gristmill backfill`` killed with
``kill -9`` are failed by ``gristmill jobs --reap`` instead of staying Running with their window Pending."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cli_support import _command, _environment, assert_ok, assert_user_error, gristmill
from repo_support import SLOW_SOURCE, set_limits, write_fs1_repo

import gristmill as gm
from gristmill.jobs.backfill import BackfillError

REGISTRIES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
ROWS = pd.DataFrame({"acct": ["A", "B", "C"],
                     "ts": pd.Series([datetime(40, 3, 1), datetime(1990, 1, 9, 12), datetime(2024, 1, 8)]
                                     ).astype("datetime64[us]"),
                     "f1": [1.0, 2.0, 3.0]})


def _store(tmp_path: Path, request: pytest.FixtureRequest, registry: str, *, slow: bool = False,
           limits: dict[str, Any] | None = None, clock: Any = None) -> gm.FeatureStore:
    (tmp_path / "data").mkdir(exist_ok=True)
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    source: Any = tmp_path / "data" / "rows.parquet"
    if slow:
        source = {"type": "custom", "source_process_code": {"path": "./code", "process_class": "slow.Slow"}}
    repo = write_fs1_repo(tmp_path, source=source, settings={"offline_enabled": True})
    if slow:
        (repo / "fs" / "spec" / "code").mkdir()
        (repo / "fs" / "spec" / "code" / "slow.py").write_text(SLOW_SOURCE)
    url, schema = request.getfixturevalue("postgres_schema") if registry == "postgresql" else (None, None)
    store = gm.FeatureStore.init(tmp_path / "store", registry_url=url, registry_schema=schema)
    if limits:
        set_limits(store.path, limits)
    store = gm.FeatureStore(store.path, clock=clock)
    assert store.apply(repo, check_source=False).ok
    return store


# -- (a) memory follows the data -------------------------------------------------------------------------
MEASURE = """
import json, os, resource, sys, time
import gristmill as gm
store = gm.FeatureStore(sys.argv[1])
started = time.perf_counter()
[job] = store.backfill("fs1", 1, start=sys.argv[2], end=sys.argv[3])
seconds = time.perf_counter() - started
table = store.offline_store.read(store.materializer.offline_table(store.get_feature_set("fs1", 1)))
print(json.dumps({"status": job.status.value, "error": job.error, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "accounts": table.column("acct").to_pylist(), "rows_written": job.rows_written}), flush=True)
os._exit(0)    # the measurement is printed; skip interpreter teardown (a native thread once aborted it there)
"""


@pytest.mark.parametrize("registry", REGISTRIES)
def test_a_2000_year_window_of_three_rows_is_quick_and_small(tmp_path: Path, request: pytest.FixtureRequest,
                                                               registry: str) -> None:
    """Before: 730,000 day partitions were listed for the commit (3.6 GB, 9 s); now the days holding rows."""
    store = _store(tmp_path, request, registry, limits={"backfill_max_span_days": 1_000_000})
    # its own process, so the peak RSS is this backfill's alone
    ran = subprocess.run([sys.executable, "-c", MEASURE, str(store.path), "0020-01-01", "2025-01-01"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, ran.stderr
    outcome = json.loads(ran.stdout.splitlines()[-1])
    assert outcome["status"] == "Completed", outcome["error"]
    assert outcome["rows_written"] == 3 and sorted(outcome["accounts"]) == ["A", "B", "C"]
    assert outcome["peak_mb"] < 1000, outcome          # about 260 MB (Python, DuckDB, Arrow, deltalake loaded)
    assert outcome["seconds"] < 20, outcome            # about 0.1 s
    [interval] = store.data_intervals("fs1", 1)["offline"]
    assert (interval.start, interval.end, interval.status.value) == (datetime(20, 1, 1), datetime(2025, 1, 1),
                                                                     "Complete")


# -- (b) windows are checked -----------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "end", "allow_future", "fragment"), [
    ("2014-01-01", "2024-01-05", False, "spans 3,656 days"),                  # within 3,660 days
    ("2013-12-01", "2024-01-05", False, "at most 3,660 days (limits.backfill_max_span_days in featurestore.yaml)"),
    ("2024-01-01", "9999-12-30", False, "--end 9999-12-30 00:00:00 is after now (2024-01-10 00:00:00 UTC)"),
    ("2024-01-01", "2024-01-11", False, "--allow-future (allow_future=True)"),
    ("2024-01-01", "2024-01-11", True, None),
    ("2024-01-01", "2024-01-10", False, None),                                # up to now is fine
], ids=["span-ok", "span-too-wide", "far-future", "future", "future-allowed", "until-now"])
def test_backfill_windows_are_checked(tmp_path: Path, request: pytest.FixtureRequest, start: str, end: str,
                                      allow_future: bool, fragment: str | None) -> None:
    store = _store(tmp_path, request, "sqlite", clock=lambda: datetime(2024, 1, 10))
    if fragment is None or fragment.startswith("spans"):
        [job] = store.backfill("fs1", 1, start=start, end=end, allow_future=allow_future)
        assert job.status.value == "Completed", job.error
        return
    with pytest.raises(BackfillError) as refused:
        store.backfill("fs1", 1, start=start, end=end, allow_future=allow_future)
    assert fragment in str(refused.value)
    assert store.list_jobs() == [] and store.data_intervals("fs1", 1)["offline"] == []   # nothing was recorded


def test_the_span_limit_is_a_setting_and_the_cli_says_which(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = _store(tmp_path, request, "sqlite", limits={"backfill_max_span_days": 30})
    assert_user_error(gristmill("backfill", "fs1:1", "--start", "2023-01-01", "--end", "2023-03-01",
                                "--store", store.path),
                      "--start/--end", "spans 59 days", "at most 30 days", "limits.backfill_max_span_days")
    assert_user_error(gristmill("backfill", "fs1:1", "--start", "2030-01-01", "--end", "2030-01-02",
                                "--store", store.path), "--end 2030-01-02 00:00:00 is after now", "--allow-future")
    assert_ok(gristmill("backfill", "fs1:1", "--start", "2030-01-01", "--end", "2030-01-02", "--allow-future",
                        "--store", store.path))
    bad = store.path / "featurestore.yaml"
    bad.write_text(bad.read_text().replace("backfill_max_span_days: 30", "backfill_max_span_days: 0"))
    assert_user_error(gristmill("jobs", "--store", store.path), "featurestore.yaml", "backfill_max_span_days")


# -- item 16: jobs of a killed backfill are reaped ---------------------------------------------------------
def _wait_for(condition: Any, what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


@pytest.mark.parametrize("registry", REGISTRIES)
def test_jobs_of_a_killed_backfill_are_reaped(tmp_path: Path, request: pytest.FixtureRequest, registry: str) -> None:
    store = _store(tmp_path, request, registry, slow=True)
    backfill = subprocess.Popen([*_command(), "backfill", "fs1:1", "--start", "2024-01-01", "--end", "2024-01-03",
                                 "--store", str(store.path)], env=_environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    try:
        [job] = _wait_for(lambda: store.list_jobs(status="Running"), "the backfill's job to start")
        alive = gristmill("jobs", "--reap", "--store", store.path)          # its worker is alive: kept
        assert_ok(alive)
        assert "0 job(s) of stopped workers failed" in alive.stdout
        assert store.get_job(job.id).status.value == "Running"
    finally:
        backfill.kill()                                                      # kill -9, mid-job
        backfill.wait(timeout=30)
    assert store.get_job(job.id).status.value == "Running"                   # until someone reaps it
    assert [i.status.value for i in store.data_intervals("fs1", 1)["offline"]] == ["Pending"]
    reaped = gristmill("jobs", "--reap", "--store", store.path)
    assert_ok(reaped)
    assert "1 job(s) of stopped workers failed" in reaped.stdout and job.id in reaped.stderr
    failed = store.get_job(job.id)
    assert failed.status.value == "Failed" and "its process has exited" in (failed.error or "")
    assert f"gristmill backfill fs1:1 --job-id {job.id}" in (failed.error or "")
    assert [(i.start, i.end, i.status.value) for i in store.data_intervals("fs1", 1)["offline"]] == [
        (datetime(2024, 1, 1), datetime(2024, 1, 3), "Incomplete")]
    assert_user_error(gristmill("jobs", "--reap", "--lease", "1", "--store", store.path), "--lease 1")
