"""The materialization commands of the ``gristmill`` CLI as real subprocesses: ``backfill`` (windows,
``--data-status``, a failing job with its retry hint, ``--job-id`` retries), ``jobs``, ``status``, ``cost``
and ``online get``, plus their user errors (exit code 2, one ``error:`` line, no traceback).

Commands run in three phases (each phase concurrently, since a subprocess costs about a second): the
first backfills and the state-independent errors; then the source of the failing feature set is fixed
and the follow-up backfills run; then every read-only command. The store uses the default SQLite
online store; ``fs1`` has no ``temporal_join_lookback``, so its 2024 rows never expire in real time."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cli_support import Result, assert_ok, assert_user_error, describe, run_concurrently

import gristmill as gm


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


# A 01-01..01-03 and B are in the first backfill [01-01, 01-04); A 01-05 and C in the second [01-04, 01-06).
ROWS = pd.DataFrame({"acct": ["A", "A", "A", "B", "C", "A"],
                     "ts": _ts("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-01 12:00", "2024-01-04 12:00",
                               "2024-01-05"),
                     "f1": [1.0, 2.0, 3.0, 10.0, 7.0, 5.0]})
GOOD = pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-01 06:00"), "f1": [1.5]})


def _feature_set(repo: Path, name: str, source: Path, *, offline: bool, online: bool) -> None:
    folder = repo / name
    (folder / "spec").mkdir(parents=True, exist_ok=True)
    (folder / "FeatureSet.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1", "specification": {"path": "./spec"}, "entities": ["account:1"],
        "materialization_settings": {"offline_enabled": offline, "online_enabled": online}}))
    (folder / "spec" / "FeatureSetSpec.yaml").write_text(yaml.safe_dump({
        "source": {"type": "parquet", "path": str(source), "timestamp_column": {"name": "ts"}},
        "index_columns": [{"name": "acct", "type": "string"}],
        "features": [{"name": "f1", "type": "double"}]}))


@dataclass(frozen=True)
class Session:
    store: Path
    failed_job: str
    ran: dict[str, Result]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("cli_materialization")
    data = root / "data"
    data.mkdir()
    ROWS.to_parquet(data / "rows.parquet", index=False)
    GOOD.rename(columns={"f1": "f1_renamed"}).to_parquet(data / "bad.parquet", index=False)  # fixed later
    repo = root / "repo"
    repo.mkdir()
    (repo / "account.yaml").write_text("name: account\nversion: '1'\nindex_columns: [{name: acct, type: string}]\n")
    _feature_set(repo, "fs1", data / "rows.parquet", offline=True, online=True)
    _feature_set(repo, "fsbad", data / "bad.parquet", offline=True, online=False)
    _feature_set(repo, "fsoff", data / "rows.parquet", offline=True, online=False)
    store = root / "store"
    with gm.FeatureStore.init(store) as setup:
        plan = setup.apply(repo, check_source=False)   # fsbad is registered broken on purpose: its backfill fails
        assert plan.ok, str(plan)
    s = ["--store", store]

    ran = run_concurrently({
        "backfill": ["backfill", "fs1:1", "--start", "2024-01-01", "--end", "2024-01-04", *s],
        "backfill failing": ["backfill", "fsbad:1", "--start", "2024-01-01", "--end", "2024-01-03", *s],
        "backfill unknown feature set": ["backfill", "nosuchset:1", "--start", "2024-01-01", "--end", "2024-01-02",
                                         *s],
        "backfill without version": ["backfill", "fs1", "--start", "2024-01-01", "--end", "2024-01-02", *s],
        "backfill first without end": ["backfill", "fsoff:1", "--start", "2024-01-01", *s],
        "online bad key": ["online", "get", "--features", "fs1:1:f1", "--key", "acct", *s],
        "online not enabled": ["online", "get", "--features", "fsoff:1:f1", "--key", "acct=A", *s],
    })
    failing = ran["backfill failing"]
    match = re.search(r"job (\w+) failed:", failing.stderr)
    assert match, describe(failing)
    failed_job = match.group(1)

    GOOD.to_parquet(data / "bad.parquet", index=False)  # the source is fixed: the retry can succeed
    with gm.FeatureStore(store) as check:
        [completed] = [job.id for job in check.list_jobs(feature_set="fs1")]
    ran |= run_concurrently({
        "backfill data status": ["backfill", "fs1:1", "--start", "2024-01-02", "--end", "2024-01-06",
                                 "--data-status", "None", "--data-status", "Incomplete", *s],
        "retry": ["backfill", "fsbad:1", "--job-id", failed_job, *s],
        "retry completed job": ["backfill", "fs1:1", "--job-id", completed, *s],
    })

    ran |= run_concurrently({
        "jobs json": ["jobs", "--json", *s],
        "job show": ["jobs", failed_job, *s],
        "status json": ["status", "fs1:1", "--json", *s],
        "cost job": ["cost", "--by", "job", "--json", *s],
        "cost feature set": ["cost", "--by", "feature_set", "--json", *s],
        "cost store": ["cost", "--by", "store", "--json", *s],
        "online get": ["online", "get", "--features", "fs1:1:f1", "--key", "acct=A,B,C,D", *s],
        "online get json": ["online", "get", "--features", "fs1:1:f1", "--key", "acct=A,B,C,D", "--json", *s],
    })
    return Session(store=store, failed_job=failed_job, ran=ran)


# -- backfill ---------------------------------------------------------------------------------------
def test_backfill_runs_one_job_and_prints_it(session: Session) -> None:
    result = session.ran["backfill"]
    assert_ok(result)
    assert "1 of 1 job(s) completed" in result.stdout
    assert "[2024-01-01 00:00, 2024-01-04 00:00)" in result.stdout
    assert "offline+online" in result.stdout and "Completed" in result.stdout


def test_backfill_by_data_status_only_fills_the_gap(session: Session) -> None:
    result = session.ran["backfill data status"]
    assert_ok(result)
    assert "1 of 1 job(s) completed" in result.stdout
    assert "[2024-01-04 00:00, 2024-01-06 00:00)" in result.stdout
    assert "2024-01-02 00:00" not in result.stdout  # the Complete part of the window was not selected


def test_failing_backfill_exits_1_with_the_retry_hint(session: Session) -> None:
    result = session.ran["backfill failing"]
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert "0 of 1 job(s) completed" in result.stdout
    assert f"(retry: gristmill backfill fsbad:1 --job-id {session.failed_job} --store {session.store})" in result.stderr
    assert "f1" in result.stderr


def test_retry_by_job_id_completes_the_same_window(session: Session) -> None:
    result = session.ran["retry"]
    assert_ok(result)
    assert "1 of 1 job(s) completed" in result.stdout
    assert "[2024-01-01 00:00, 2024-01-03 00:00)" in result.stdout
    with gm.FeatureStore(session.store) as store:
        assert [(i.status.value, i.start.day, i.end.day) for i in store.data_intervals("fsbad", 1)["offline"]] == [
            ("Complete", 1, 3)]


# -- jobs -------------------------------------------------------------------------------------------
def test_jobs_list_json(session: Session) -> None:
    result = session.ran["jobs json"]
    assert_ok(result)
    rows = json.loads(result.stdout)
    assert sorted((r["feature_set"], r["status"]) for r in rows) == [
        ("fs1:1", "Completed"), ("fs1:1", "Completed"), ("fsbad:1", "Completed"), ("fsbad:1", "Failed")]
    # newest first: the two jobs of the first phase come last
    assert {(r["feature_set"], r["status"]) for r in rows[2:]} == {("fs1:1", "Completed"), ("fsbad:1", "Failed")}
    failed = next(r for r in rows if r["status"] == "Failed")
    assert failed["id"] == session.failed_job and "f1" in failed["error"]
    assert {"id", "window", "stores", "rows_read", "rows_written", "bytes_written", "cpu_s"} <= set(failed)


def test_jobs_show_one(session: Session) -> None:
    shown = session.ran["job show"]
    assert_ok(shown)
    [row] = [line for line in shown.stdout.splitlines() if session.failed_job in line]
    for text in ("fsbad:1", "[2024-01-01 00:00, 2024-01-03 00:00)", "offline", "Failed"):
        assert text in row, shown.stdout


# -- status and cost --------------------------------------------------------------------------------
def test_status_json(session: Session) -> None:
    result = session.ran["status json"]
    assert_ok(result)
    window = {"start": "2024-01-01 00:00:00", "end": "2024-01-06 00:00:00", "status": "Complete"}
    assert json.loads(result.stdout) == [{"store": "offline", **window}, {"store": "online", **window}]


def test_cost_by_job_feature_set_and_store(session: Session) -> None:
    by_job = json.loads(session.ran["cost job"].stdout)
    assert len(by_job) == 4 and all(r["jobs"] == 1 for r in by_job)
    by_set = json.loads(session.ran["cost feature set"].stdout)
    assert [(r["feature_set"], r["jobs"]) for r in by_set] == [("fs1:1", 2), ("fsbad:1", 2)]
    assert sum(r["rows_written"] for r in by_set) == sum(r["rows_written"] for r in by_job) > 0
    assert all(r["bytes_written"] > 0 and r["cpu_seconds"] >= 0 for r in by_set)
    by_store = json.loads(session.ran["cost store"].stdout)
    assert [(r["store"], r["jobs"]) for r in by_store] == [("offline", 4), ("online", 2)]


# -- online get -------------------------------------------------------------------------------------
def test_online_get_json_returns_the_latest_values(session: Session) -> None:
    result = session.ran["online get json"]
    assert_ok(result)
    assert json.loads(result.stdout) == [{"acct": "A", "f1": 5.0}, {"acct": "B", "f1": 10.0},
                                         {"acct": "C", "f1": 7.0}, {"acct": "D", "f1": None}]


def test_online_get_table(session: Session) -> None:
    result = session.ran["online get"]
    assert_ok(result)
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if re.match(r"^\W+[ABCD]\s", line)}
    assert "5.0" in lines["A"] and "10.0" in lines["B"] and "7.0" in lines["C"] and "None" in lines["D"]


# -- user errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fragments"), [
    ("backfill unknown feature set", ["nosuchset"]),
    ("backfill without version", ["fs1:1", "version"]),
    ("backfill first without end", ["--start", "--end"]),
    ("retry completed job", ["Completed", "--start/--end"]),
    ("online bad key", ["--key", "name=value"]),
    ("online not enabled", ["fsoff:1", "online_enabled"]),
])
def test_user_errors(session: Session, name: str, fragments: list[str]) -> None:
    assert_user_error(session.ran[name], *fragments)
