"""Edge cases of materialization jobs on the Spark engine (a classic local session), each against the DuckDB
engine's job or the contract: every declared type, empty windows, bad ``spark_configuration`` values, jobs of
one window running at once, a move into the table that fails, secrets in errors."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from redis_servers import REDIS_URL
from repo_support import write_fs1_repo
from spark_session import spark_session

import gristmill as gm

NOW = datetime(2024, 1, 4, 6)
TYPED = [{"name": "raw", "type": "binary"}, {"name": "emb", "type": "float_vector"},
         {"name": "seen", "type": "datetime"}, {"name": "n", "type": "integer"}, {"name": "big", "type": "long"},
         {"name": "flag", "type": "boolean"}, {"name": "label", "type": "string"}]


def _ts(*values: str | None) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601")).astype("datetime64[us]")


def _typed_source() -> pa.Table:
    """Every type; unicode and empty keys; A's two rows on one day; B null-valued."""
    return pa.table({
        "acct": ["A", "A", "B", "ключ é", ""],
        "ts": pa.array(_ts("2024-01-02 01:00", "2024-01-02 02:00", "2024-01-03 00:00", "2024-01-03 05:00",
                           "2024-01-03 06:00")),
        "raw": pa.array([b"\x00\xff", b"", None, b"abc", b"z"], pa.binary()),
        "emb": pa.array([[1.0, 2.0], [3.5, -1.0], None, [0.0, 0.0], [1e-3, 2e3]], pa.list_(pa.float32())),
        "seen": pa.array(_ts("2023-06-01 12:00", None, "2023-06-02", "1970-01-01", "2999-12-31 23:59:59.999999")),
        "n": pa.array([1, 2, None, -(2**31), 2**31 - 1], pa.int32()),
        "big": pa.array([2**62, -(2**62), None, 0, 2**53 + 1], pa.int64()),
        "flag": [True, False, None, True, False],
        "label": ["a", "日本", None, "", "x y.z`"],
    })


def _store(root: Path, *, engine: str, online: str | None, offline: bool = True, source: pa.Table | None = None,
           features: list[dict[str, str]] | None = None, settings: dict[str, Any] | None = None,
           online_store: str | None = None) -> gm.FeatureStore:
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(source if source is not None else _typed_source(), data / "rows.parquet")
    repo = write_fs1_repo(root, source=data / "rows.parquet", lookback_days=2, features=features or TYPED,
                          settings={"offline_enabled": offline, "online_enabled": online is not None,
                                    **(settings or {})})
    store = gm.FeatureStore.init(root / "store", clock=lambda: NOW,
                                 online_store=(online_store or REDIS_URL) if online == "redis" else None,
                                 online_prefix=f"gmtest-{uuid.uuid4().hex[:10]}" if online == "redis" else None,
                                 spark=spark_session() if engine == "spark" else None)
    assert store.apply(repo).ok
    return store


def _offline_table(store: gm.FeatureStore) -> Any:
    return store.materializer.offline_table(store.get_feature_set("fs1", "1"))


def _online(store: gm.FeatureStore, keys: list[str]) -> dict[str, list[Any]]:
    return store.get_online_features([f"fs1:1:{f['name']}" for f in TYPED], {"acct": keys}).to_dict()


def _facts(job: Any) -> tuple[Any, ...]:
    return (job.status.value, job.rows_read, job.rows_written, job.error)


@pytest.mark.parametrize("online_kind", ["sqlite", "redis"])
def test_every_type_and_unicode_keys_equal_duckdb(tmp_path: Path, online_kind: str) -> None:
    stores = {e: _store(tmp_path / e, engine=e, online=online_kind) for e in ("duckdb", "spark")}
    jobs = {e: s.backfill("fs1", 1, start="2024-01-01", end="2024-01-04") for e, s in stores.items()}
    assert [_facts(j) for j in jobs["spark"]] == [_facts(j) for j in jobs["duckdb"]], jobs["spark"][0].error
    tables = {e: s.offline_store.read(_offline_table(s)) for e, s in stores.items()}
    assert tables["spark"].schema == tables["duckdb"].schema
    pd.testing.assert_frame_equal(tables["spark"].to_pandas(), tables["duckdb"].to_pandas())
    keys = ["A", "B", "ключ é", "", "Z"]
    online = {e: _online(s, keys) for e, s in stores.items()}
    assert online["spark"] == online["duckdb"]
    # A expired (ttl 2 days) before NOW; B's row is all nulls
    assert online["spark"]["big"] == [None, None, 0, 2**53 + 1, None]
    assert online["spark"]["raw"] == [None, None, b"abc", b"z", None]
    assert online["spark"]["emb"][3] == pytest.approx([1e-3, 2e3])
    a_last = tables["spark"].to_pandas().query("acct == 'A'").iloc[-1]
    assert a_last["raw"] == b"" and a_last["label"] == "日本"
    for store in stores.values():
        store.close()


@pytest.mark.parametrize("online_kind", [None, "sqlite", "redis"])
def test_a_window_without_rows_equals_duckdb(tmp_path: Path, online_kind: str | None) -> None:
    stores = {e: _store(tmp_path / e, engine=e, online=online_kind) for e in ("duckdb", "spark")}
    jobs = {e: s.backfill("fs1", 1, start="2023-01-01", end="2023-03-01") for e, s in stores.items()}
    assert [_facts(j) for j in jobs["spark"]] == [_facts(j) for j in jobs["duckdb"]]
    assert jobs["spark"][0].status.value == "Completed", jobs["spark"][0].error
    # then a window with rows, then the empty one again over a table that exists
    for store in stores.values():
        [ok] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
        assert ok.status.value == "Completed", ok.error
        [again] = store.backfill("fs1", 1, start="2024-01-03 12:00", end="2024-01-03 23:00")
        assert (again.status.value, again.rows_read) == ("Completed", 0), again.error
    pd.testing.assert_frame_equal(stores["spark"].offline_store.read(_offline_table(stores["spark"])).to_pandas(),
                                  stores["duckdb"].offline_store.read(_offline_table(stores["duckdb"])).to_pandas())
    for store in stores.values():
        store.close()


SIMPLE = [{"name": "f1", "type": "double"}]


def _simple_source() -> pa.Table:
    return pa.table({"acct": ["A", "B", "A"], "ts": pa.array(_ts("2024-01-01 01:00", "2024-01-02 00:00",
                                                                 "2024-01-03 00:00")),
                     "f1": [1.0, 2.0, 3.0]})


@pytest.mark.parametrize("configuration", [
    {"spark.sql.shuffle.partitions": "many"},                      # a value Spark refuses
    {"spark.sql.shuffle.partitions": 5, "spark.sql.ansi.enabled": "maybe"},   # a good one, then a bad one
    {"not.a.spark.setting": 1, "spark.sql.autoBroadcastJoinThreshold": "9" * 400},
])
def test_bad_spark_configuration_gives_a_clear_outcome_and_leaves_the_session(
        tmp_path: Path, configuration: dict[str, Any]) -> None:
    spark = spark_session()
    watched = ["spark.sql.shuffle.partitions", "spark.sql.ansi.enabled", "spark.sql.autoBroadcastJoinThreshold"]
    before = {key: spark.conf.get(key, None) for key in watched}
    store = _store(tmp_path, engine="spark", online=None, source=_simple_source(), features=SIMPLE,
                   settings={"spark_configuration": configuration})
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    assert {key: spark.conf.get(key, None) for key in watched} == before
    if job.status.value != "Completed":
        error = job.error or ""
        assert "spark_configuration" in error, error
        for internal in ("Traceback", "py4j", "java.", "org.apache", "Exception"):
            assert internal not in error, error
    store.close()


@pytest.mark.parametrize("value", [{"nested": 1}, None, [1, 2]])
def test_spark_configuration_values_that_are_not_scalars_are_refused_at_apply(tmp_path: Path, value: Any) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(_simple_source(), tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", features=SIMPLE,
                          settings={"offline_enabled": True,
                                    "spark_configuration": {"spark.sql.shuffle.partitions": value}})
    store = gm.FeatureStore.init(tmp_path / "store", clock=lambda: NOW)
    plan = store.apply(repo)
    assert not plan.ok
    text = str(plan.items)
    assert "spark_configuration" in text and "spark.sql.shuffle.partitions" in text, text
    store.close()


def test_jobs_of_one_window_at_once_keep_one_copy_and_the_session_settings(tmp_path: Path) -> None:
    """Two threads (as the server's backfill workers) run jobs of the same window with different settings."""
    from gristmill.compute.spark.jobs import materialize

    spark = spark_session()
    before = spark.conf.get("spark.sql.shuffle.partitions")
    store = _store(tmp_path, engine="spark", online=None, source=_simple_source(), features=SIMPLE)
    feature_set = store.get_feature_set("fs1", "1")
    offline = (store.offline_store, _offline_table(store))
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(partitions: int) -> None:
        try:
            barrier.wait()
            materialize(spark, feature_set.spec, datetime(2024, 1, 1), datetime(2024, 1, 4), now=NOW,
                        label="fs1:1", offline=offline,
                        spark_configuration={"spark.sql.shuffle.partitions": partitions})
        except BaseException as exc:            # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (3, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    rows = store.offline_store.read(offline[1]).to_pandas()
    assert sorted(rows["f1"].tolist()) == [1.0, 2.0, 3.0]
    table = Path(store.offline_store.table_uri(offline[1]))
    assert not (table / "_gm_staging").exists()
    assert spark.conf.get("spark.sql.shuffle.partitions") == before
    store.close()


def test_a_failed_move_into_the_table_leaves_no_files_and_a_clear_error(tmp_path: Path) -> None:
    store = _store(tmp_path, engine="spark", online=None, source=_simple_source(), features=SIMPLE)
    [ok] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-02")
    assert ok.status.value == "Completed", ok.error
    table = Path(store.offline_store.table_uri(_offline_table(store)))
    (table / "_event_day=2024-01-03").write_text("in the way")     # a file where a day folder must go
    before = {p for p in table.rglob("*") if p.is_file()}
    [failed] = store.backfill("fs1", 1, start="2024-01-02", end="2024-01-04")
    assert failed.status.value == "Failed"
    assert "Traceback" not in (failed.error or ""), failed.error
    assert {p for p in table.rglob("*") if p.is_file() and "_delta_log" not in str(p)} == \
        {p for p in before if "_delta_log" not in str(p)}
    assert not (table / "_gm_staging").exists()
    assert store.offline_store.read(_offline_table(store)).to_pandas()["f1"].tolist() == [1.0]
    store.close()


def test_a_redis_password_never_shows_in_job_errors_or_logs(tmp_path: Path) -> None:
    secret = "s3cr3t-pw-zz"
    url = REDIS_URL.replace("redis://", f"redis://user:{secret}@")
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())   # type: ignore[method-assign]
    logger = logging.getLogger("gristmill")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        store = _store(tmp_path, engine="spark", online="redis", offline=False, source=_simple_source(),
                       features=SIMPLE, online_store=url)
        [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    caplog_text = "\n".join(records)
    assert job.status.value == "Failed"                    # the shared Redis has no such user
    assert secret not in (job.error or "") and secret not in caplog_text, job.error
    assert "Traceback" not in (job.error or ""), job.error
    store.close()


def _one_row(value: float, create: str | None) -> pa.Table:
    columns: dict[str, Any] = {"acct": ["A", "B"], "ts": pa.array(_ts("2024-01-03 00:00", "2024-01-03 00:00")),
                               "f1": [value, value]}
    if create is not None:
        columns["create_timestamp"] = pa.array(_ts(create, create))
    return pa.table(columns)


def test_redis_equal_event_times_go_to_the_greater_create_time_and_expire_as_duckdbs(tmp_path: Path) -> None:
    """Re-materializing one event time: an older create time never replaces the stored row, a newer one does
    (the compare-and-set runs on the executors); the keys expire at event time + lookback, as DuckDB's do."""
    import pyarrow.parquet as pq
    import redis

    stores = {e: _store(tmp_path / e, engine=e, online="redis", offline=False, source=_one_row(2.0, "2024-01-03 02:00"),
                        features=SIMPLE) for e in ("duckdb", "spark")}
    seen: dict[str, list[Any]] = {e: [] for e in stores}
    for value, create in [(2.0, "2024-01-03 02:00"), (1.0, "2024-01-03 01:00"), (3.0, "2024-01-03 03:00"),
                          (4.0, None)]:
        for engine, store in stores.items():
            pq.write_table(_one_row(value, create), tmp_path / engine / "data" / "rows.parquet")
            [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
            assert job.status.value == "Completed", job.error
            seen[engine].append(store.get_online_features(["fs1:1:f1"], {"acct": ["A", "B"]}).to_dict()["f1"])
    assert seen["spark"] == seen["duckdb"]
    assert [values[0] for values in seen["spark"]][:3] == [2.0, 2.0, 3.0]
    client = redis.Redis.from_url(REDIS_URL)
    expiries = {}
    for engine, store in stores.items():
        prefix = store.online_store.prefix            # type: ignore[attr-defined]
        keys = sorted(client.scan_iter(match=f"{prefix}:*"))
        expiries[engine] = [client.pexpiretime(k) for k in keys]
        assert len(keys) == 2
        client.delete(*keys)
        store.close()
    # event time + 2 days is 18 h after NOW (the injected clock); on the server's clock, 18 h after the write
    server_now_ms = int(client.time()[0]) * 1000
    for engine in stores:
        assert all(abs(e - server_now_ms - 18 * 3_600_000) < 300_000 for e in expiries[engine]), expiries


def test_a_window_inside_stored_days_keeps_their_other_rows_of_every_type(tmp_path: Path) -> None:
    """Rewriting [01-02 01:30, 01-03 05:00) rewrites two stored days whole: their rows outside the window are
    read back (every type) and written again; then a window of many empty days around them."""
    import pyarrow.parquet as pq

    stores = {e: _store(tmp_path / e, engine=e, online=None) for e in ("duckdb", "spark")}
    changed = _typed_source().to_pandas()
    changed["label"] = [f"v2-{i}" for i in range(len(changed))]
    for engine, store in stores.items():
        [first] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-04")
        assert first.status.value == "Completed", first.error
        pq.write_table(pa.Table.from_pandas(changed, schema=_typed_source().schema, preserve_index=False),
                       tmp_path / engine / "data" / "rows.parquet")
        [inside] = store.backfill("fs1", 1, start="2024-01-02 01:30", end="2024-01-03 05:00")
        assert (inside.status.value, inside.rows_read) == ("Completed", 2), inside.error
        [wide] = store.backfill("fs1", 1, start="2021-01-01", end="2024-01-02 01:30", data_status=["None"])
        assert wide.status.value == "Completed", wide.error
    tables = {e: s.offline_store.read(_offline_table(s)) for e, s in stores.items()}
    assert tables["spark"].schema == tables["duckdb"].schema
    pd.testing.assert_frame_equal(tables["spark"].to_pandas(), tables["duckdb"].to_pandas())
    assert sorted(tables["spark"].column("label").to_pylist()) == ["", "a", "v2-1", "v2-2", "x y.z`"]
    for store in stores.values():
        store.close()
