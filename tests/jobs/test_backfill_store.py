"""Backfill through the FeatureStore: jobs and data intervals (scenario 15), window replacement
(scenario 16), failures leaving nothing half-written, retries, enabling and disabling stores."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from repo_support import write_fs1_repo

import gristmill as gm
from gristmill.jobs import BackfillError, DataStatus


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _store(tmp_path: Path, rows: pd.DataFrame, *, offline: bool = True, online: bool = False) -> gm.FeatureStore:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(data / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=data / "rows.parquet", lookback_days=2,
                          settings={"offline_enabled": offline, "online_enabled": online})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: datetime(2024, 1, 10))
    plan = store.apply(repo)
    assert plan.ok, str(plan)
    return store


def _stored(store: gm.FeatureStore) -> list[tuple[str, float]]:
    table = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    return [(r["ts"].strftime("%m-%d %H:%M"), r["f1"]) for r in store.offline_store.read(table).to_pylist()]


ROWS_16 = pd.DataFrame({"acct": ["A"] * 3, "ts": _ts("2024-01-01 10:00", "2024-01-02 10:00", "2024-01-03 10:00"),
                        "f1": [1.0, 2.0, 3.0]})


def test_scenario_16_rematerialization_replaces_the_window(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    jobs = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert [(j.status.value, j.rows_read, j.rows_written) for j in jobs] == [("Completed", 3, 3)]
    assert jobs[0].bytes_written > 0 and jobs[0].cpu_seconds > 0
    pd.DataFrame({"acct": ["A"] * 3, "ts": _ts("2024-01-01 10:00", "2024-01-02 12:00", "2024-01-03 10:00"),
                  "f1": [1.0, 22.0, 33.0]}).to_parquet(tmp_path / "data" / "rows.parquet")
    store.backfill("fs1", 1, start="2024-01-02", end="2024-01-03")
    assert _stored(store) == [("01-01 10:00", 1.0), ("01-02 12:00", 22.0), ("01-03 10:00", 3.0)]
    observations = pd.DataFrame({"acct": ["A", "A"], "ts": _ts("2024-01-02 11:00", "2024-01-03 12:00")})
    got = store.get_offline_features(["fs1:1:f1"], observations, "ts").to_pandas()
    assert got["f1"].tolist() == [1.0, 3.0]  # 3.0: read from the materialized window, not the changed source
    # from source the changed row 01-03 10:00 = 33 is visible: the materialized window was not refreshed
    fresh = store.get_offline_features(["fs1:1:f1"], observations, "ts", from_source=True).to_pandas()
    assert fresh["f1"].tolist() == [1.0, 33.0]


def test_scenario_15_backfill_by_data_status(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    records = store.materializer.records
    day = [datetime(2025, 4, d, 4) for d in range(1, 7)]
    records.set_status("fs1", "1", "offline", day[1], day[2], DataStatus.INCOMPLETE)
    records.set_status("fs1", "1", "offline", day[3], day[4], DataStatus.COMPLETE)
    jobs = store.backfill("fs1", 1, start="2025-04-02T12:00", end="2025-04-04T12:00",
                          data_status=["Complete", "Incomplete"], allow_future=True)   # the store's clock: 2024
    assert [(j.start, j.end) for j in jobs] == [(datetime(2025, 4, 2, 12), day[2]), (day[3], datetime(2025, 4, 4, 12))]
    timeline = [(i.start, i.end, i.status.value) for i in store.data_intervals("fs1", 1)["offline"]]
    noon = datetime(2025, 4, 2, 12)
    assert timeline == [(day[1], noon, "Incomplete"), (noon, day[2], "Complete"), (day[2], day[3], "None"),
                        (day[3], day[4], "Complete")]
    no_window = store.backfill("fs1", 1, data_status=["Incomplete"])
    assert [(j.start, j.end) for j in no_window] == [(day[1], datetime(2025, 4, 2, 12))]


def test_first_backfill_needs_both_ends_and_an_enabled_store(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    with pytest.raises(BackfillError, match="start"):
        store.backfill("fs1", 1, start="2024-01-01")
    disabled = _store(tmp_path / "other", ROWS_16, offline=False)
    with pytest.raises(BackfillError, match="offline_enabled"):
        disabled.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")


def test_failing_job_is_recorded_and_leaves_the_window_incomplete_and_data_untouched(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    before = _stored(store)
    ROWS_16.rename(columns={"f1": "f_renamed"}).to_parquet(tmp_path / "data" / "rows.parquet")
    [job] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-03")
    assert job.status.value == "Failed"
    assert "f1" in (job.error or "") and "missing" in (job.error or "")
    assert _stored(store) == before
    statuses = [(i.start, i.status.value) for i in store.data_intervals("fs1", 1)["offline"]]
    assert (datetime(2024, 1, 2), "Incomplete") in statuses
    ROWS_16.to_parquet(tmp_path / "data" / "rows.parquet")
    [retry] = store.backfill("fs1", 1, job_id=job.id)
    assert retry.status.value == "Completed" and (retry.start, retry.end) == (job.start, job.end)
    assert all(i.status == DataStatus.COMPLETE for i in store.data_intervals("fs1", 1)["offline"])
    assert store.get_job(job.id).status.value == "Failed"
    assert store.list_jobs(feature_set="fs1")[0].id == retry.id


def test_missing_source_file_fails_the_job_naming_the_path(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    (tmp_path / "data" / "rows.parquet").unlink()
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")
    assert job.status.value == "Failed" and "rows.parquet" in (job.error or "")


def test_cost_is_reported_per_job_feature_set_and_store(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")
    store.backfill("fs1", 1, start="2024-01-02", end="2024-01-04")
    by_job = store.cost(by="job")
    assert len(by_job) == 2 and sum(r.rows_written for r in by_job) == 3
    [by_set] = store.cost(by="feature_set")
    assert by_set.jobs == 2 and by_set.rows_written == 3 and by_set.bytes_written > 0
    assert [r.store for r in store.cost(by="store")] == ["offline"]


def test_disabling_resets_intervals_and_reenabling_starts_a_new_materialization_version(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    first = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": False})
    assert store.data_intervals("fs1", 1)["offline"] == []
    store.update_feature_set("fs1", 1, materialization_settings={"offline_enabled": True})
    second = store.materializer.offline_table(store.get_feature_set("fs1", "1"))
    assert second.materialization_version == first.materialization_version + 1
    assert store.offline_store.read(second).num_rows == 0
    observations = pd.DataFrame({"acct": ["A"], "ts": _ts("2024-01-03 12:00")})
    with pytest.raises(gm.RetrievalError, match="no Complete offline data"):
        store.get_offline_features(["fs1:1:f1"], observations, "ts", materialized_only=True)


def test_a_job_left_running_can_be_cancelled_and_retried(tmp_path: Path) -> None:
    store = _store(tmp_path, ROWS_16)
    records = store.materializer.records
    orphan = records.create_job("fs1", "1", start=datetime(2024, 1, 1), end=datetime(2024, 1, 4), stores=["offline"])
    records.start_job(orphan.id)  # as if its process died here
    assert store.backfill("fs1", 1, data_status=["Pending"]) == []  # Pending windows are skipped
    cancelled = store.cancel_job(orphan.id)
    assert cancelled.status.value == "Cancelled"
    with pytest.raises(BackfillError, match="already Cancelled"):
        store.cancel_job(orphan.id)
    [retry] = store.backfill("fs1", 1, job_id=orphan.id)
    assert retry.status.value == "Completed" and retry.rows_written == 3


ROWS_TYPES = pd.DataFrame({"acct": ["A", "A", "B", "A"],
                           "ts": _ts("2024-01-01 10:00", "2024-01-02 10:00", "2024-01-02 12:00", "2024-01-04 09:00"),
                           "f1": [1.0, 2.0, 10.0, 4.0]})


def _source_of(kind: str, root: Path) -> dict[str, Any]:
    """The same rows as a csv, delta, custom or parquet source."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        ROWS_TYPES.to_csv(root / "rows.csv", index=False)
        return {"type": "csv", "path": str(root / "rows.csv")}
    if kind == "delta":
        from deltalake import write_deltalake

        write_deltalake(str(root / "table"), ROWS_TYPES, partition_by=["acct"])
        return {"type": "delta", "path": str(root / "table")}
    if kind == "custom":
        ROWS_TYPES.to_parquet(root / "rows.parquet")
        code = root.parent / "repo" / "fs" / "spec" / "code"        # code lives in the spec folder
        code.mkdir(parents=True)
        (code / "reader.py").write_text(
            "import pandas as pd\n"
            "class Reader:\n"
            "    def process(self, start_time, end_time, *, path):\n"
            "        rows = pd.read_parquet(path)\n"
            "        if start_time is not None:\n"
            "            rows = rows[rows.ts >= start_time]\n"
            "        return rows[rows.ts < end_time] if end_time is not None else rows\n")
        return {"type": "custom", "source_process_code": {"path": "code", "process_class": "reader.Reader"},
                "kwargs": {"path": str(root / "rows.parquet")}}
    ROWS_TYPES.to_parquet(root / "rows.parquet")
    return {"type": "parquet", "path": str(root / "rows.parquet")}


@pytest.mark.parametrize("kind", ["parquet", "csv", "delta", "custom"])
def test_backfill_from_every_source_type(tmp_path: Path, kind: str) -> None:
    """Each source type materializes offline and online, and retrieval from the materialized data equals
    retrieval computed from source."""
    repo = write_fs1_repo(tmp_path, source=_source_of(kind, tmp_path / "data"), lookback_days=2,
                          settings={"offline_enabled": True, "online_enabled": True})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: datetime(2024, 1, 5))
    assert store.apply(repo).ok
    [job] = store.backfill("fs1", 1, start="2023-12-25", end="2024-01-05")
    assert (job.status.value, job.rows_read) == ("Completed", 4), job.error
    observations = pd.DataFrame({"acct": ["A", "A", "B", "B"], "ts": _ts("2024-01-01 11:00", "2024-01-04 10:00",
                                                                         "2024-01-02 12:00", "2024-01-04 13:00")})
    stored = store.get_offline_features(["fs1:1:f1"], observations, "ts", materialized_only=True).to_pandas()
    computed = store.get_offline_features(["fs1:1:f1"], observations, "ts", from_source=True).to_pandas()
    pd.testing.assert_frame_equal(stored, computed)
    assert stored["f1"].tolist()[:3] == [1.0, 4.0, 10.0] and pd.isna(stored["f1"].iloc[3])
    # B's newest row (01-02 12:00) expired at 01-04 12:00, before now (01-05)
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["A", "B"]}).to_dict()["f1"] == [4.0, None]


def test_code_outside_the_spec_folder_is_a_clear_error(tmp_path: Path) -> None:
    code = tmp_path / "shared"
    code.mkdir()
    (code / "reader.py").write_text("class Reader:\n    def process(self, start_time, end_time):\n        pass\n")
    repo = write_fs1_repo(tmp_path, settings={"offline_enabled": True}, source={
        "type": "custom", "source_process_code": {"path": str(code), "process_class": "reader.Reader"}})
    store = gm.FeatureStore.init(tmp_path / "store")
    [item] = [i for i in store.apply(repo).items if i.kind == "feature set"]
    assert item.action == "invalid" and "is outside the spec folder" in item.detail
    assert "keep it in the spec folder" in item.detail
