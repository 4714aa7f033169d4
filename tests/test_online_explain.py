"""Online lookups that explain themselves: what a backfill put online (keys written, keys skipped as already
expired) in the job records, the CLI, the REST job JSON and the connected client; lookups "as of" a time
(``now=``, ``online get --as-of``) on SQLite and Redis; notes on why keys have no value."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from cli_support import assert_ok, assert_user_error, gristmill
from repo_support import write_fs1_repo
from test_server import _serve

import gristmill as gm
from gristmill.demo import generate_data, write_feature_repo
from gristmill.errors import RetrievalError
from gristmill.registry.materialization import OnlineOutcome

REDIS_URL = "redis://127.0.0.1:6379/0"

# A's newest event (01-09 12:00) lives until 01-11 12:00 (lookback 2 days); B's (01-07) expired on 01-09.
ROWS = pd.DataFrame({"acct": ["A", "A", "B"],
                     "ts": pd.Series([datetime(2024, 1, 7), datetime(2024, 1, 9, 12), datetime(2024, 1, 7)]
                                     ).astype("datetime64[us]"),
                     "f1": [3.0, 5.0, 9.0]})
CLOCK = datetime(2024, 1, 10)
A_EVENT, A_EXPIRES = datetime(2024, 1, 9, 12), datetime(2024, 1, 11, 12)

MakeStore = Callable[..., gm.FeatureStore]


def fs1_store(tmp_path: Path, *, offline: bool = False, online: bool = True, clock: datetime = CLOCK,
              online_store: str | None = None, online_prefix: str | None = None) -> gm.FeatureStore:
    """A store on ``ROWS`` (fs1:1, lookback 2 days) with a fixed clock and the repo applied."""
    (tmp_path / "data").mkdir(exist_ok=True)
    ROWS.to_parquet(tmp_path / "data" / "rows.parquet")
    repo = write_fs1_repo(tmp_path, source=tmp_path / "data" / "rows.parquet", lookback_days=2,
                          settings={"offline_enabled": offline, "online_enabled": online})
    store = gm.FeatureStore.init(tmp_path / "store", online_store=online_store, online_prefix=online_prefix,
                                 clock=lambda: clock)
    assert store.apply(repo).ok
    return store


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A store on ``ROWS`` (fs1:1, lookback 2 days) with a fixed clock, its online store SQLite or Redis."""
    made: list[gm.FeatureStore] = []

    def make(*, clock: datetime = CLOCK, offline: bool = False) -> gm.FeatureStore:
        store = fs1_store(tmp_path, offline=offline, clock=clock,
                          online_store=REDIS_URL if request.param == "redis" else None,
                          online_prefix=f"gmtest-{uuid.uuid4().hex[:10]}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.online_store.drop(store.materializer.online_table(store.get_feature_set("fs1", 1)))
        store.close()


def backfill(store: gm.FeatureStore) -> gm.FeatureStore:
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.status.value == "Completed", job.error
    return store


# --- 1. what a backfill put online ------------------------------------------------------------------------


@pytest.mark.parametrize("offline", [False, True], ids=["online-only", "offline+online"])
def test_backfill_records_online_keys_written_and_expired(make_store: MakeStore, offline: bool) -> None:
    store = make_store(offline=offline)
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    expected = OnlineOutcome(keys_written=1, keys_expired=1, newest_event_time=A_EVENT, expires_at=A_EXPIRES)
    assert job.online == expected
    assert store.get_job(job.id).online == expected           # as recorded in the registry
    assert not expected.all_expired


def test_backfill_of_an_expired_window_records_that_every_key_expired(make_store: MakeStore) -> None:
    store = make_store(clock=datetime(2024, 2, 1))
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.online == OnlineOutcome(keys_written=0, keys_expired=2, newest_event_time=A_EVENT,
                                       expires_at=A_EXPIRES)
    assert job.online.all_expired


def test_offline_only_job_has_no_online_outcome(tmp_path: Path) -> None:
    store = fs1_store(tmp_path, offline=True, online=False)
    [job] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
    assert job.online is None and store.get_job(job.id).online is None


def test_registry_from_before_the_online_columns_gets_them_on_open(tmp_path: Path) -> None:
    store = fs1_store(tmp_path, offline=False, online=True)
    [old] = store.backfill("fs1", 1, start="2024-01-01", end="2024-01-05")
    with store.registry.engine.begin() as conn:          # the jobs table as an earlier release created it
        for column in ("online_keys_written", "online_keys_expired", "newest_event_time", "online_expires_at"):
            conn.execute(sa.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
    store.close()
    reopened = gm.FeatureStore(tmp_path / "store", clock=lambda: CLOCK)
    assert reopened.get_job(old.id).online is None
    [job] = reopened.backfill("fs1", 1, start="2024-01-05", end="2024-01-10")
    assert reopened.get_job(job.id).online == OnlineOutcome(1, 1, A_EVENT, A_EXPIRES)
    reopened.close()


@pytest.fixture(scope="module")
def expired_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    """The demo's feature sets on data that ended 2025-04-01 (long expired), online materialization on;
    returns the store folder and the newest transaction time."""
    root = tmp_path_factory.mktemp("expired")
    data = generate_data(root / "data", rows=3000)
    store = gm.FeatureStore.init(root / "store", name="demo")
    store.apply(write_feature_repo(root / "repo"))
    store.update_feature_set("transactions", 1, materialization_settings={"offline_enabled": True,
                                                                          "online_enabled": True})
    store.close()
    newest = pd.read_parquet(data["transactions"]).timestamp.max().to_pydatetime()
    return root / "store", newest


def test_cli_backfill_reports_online_keys_and_says_why_none_went_online(expired_demo: tuple[Path, datetime]
                                                                        ) -> None:
    folder, newest = expired_demo
    result = gristmill("backfill", "transactions:1", "--start", "2024-12-01", "--end", "2025-04-01", "--store", folder)
    assert_ok(result)
    skipped = int(result.stdout.split("online: 0 key(s) written, ")[1].split(" skipped as already expired")[0]
                  .replace(",", ""))
    assert skipped > 0
    expires = newest + timedelta(days=30)
    assert (f"all had already expired. Online values expire at event time + temporal_join_lookback (30 days); the "
            f"newest event in [2024-12-01 00:00, 2025-04-01 00:00) was {newest:%Y-%m-%d %H:%M:%S}, so it expired "
            f"at {expires:%Y-%m-%d %H:%M:%S} (UTC)") in result.stdout

    listed = gristmill("jobs", "--json", "--store", folder)
    assert_ok(listed)
    [job] = json.loads(listed.stdout)
    assert (job["online_keys_written"], job["online_keys_expired"]) == (0, skipped)
    table = gristmill("jobs", "--store", folder)
    assert_ok(table)
    assert f"0 ({skipped:,} expired)" in table.stdout and "wrote none of its" in table.stdout

    looked = gristmill("online", "get", "--features", "transactions:1:amount_7d_sum", "--key", "account_id=A00001",
                       "--store", folder)
    assert_ok(looked)
    assert "None" in looked.stdout
    assert (f"note: transactions:1: 1 key(s) (e.g. A00001) were never materialized online: every online backfill "
            f"of transactions:1 skipped its keys as already expired (values expire at event time + "
            f"temporal_join_lookback, 30 days): the newest event, {newest:%Y-%m-%d %H:%M:%S}, expired at "
            f"{expires:%Y-%m-%d %H:%M:%S}") in looked.stderr


# --- 2. lookups as of a time --------------------------------------------------------------------------------


def test_lookup_as_of_a_time_applies_expiry_then(make_store: MakeStore) -> None:
    store = backfill(make_store())
    features, keys = ["fs1:1:f1"], {"acct": ["A", "B", "C"]}
    assert store.get_online_features(features, keys).to_dict()["f1"] == [5.0, None, None]
    assert store.get_online_features(features, keys, now="2024-01-10T00:00:00").to_dict()["f1"] == [5.0, None, None]
    # after A's expiry (event + lookback): answerable, a null
    assert store.get_online_features(features, keys, now=A_EXPIRES).to_dict()["f1"] == [None, None, None]
    assert store.get_online_features(features, keys, now=A_EXPIRES - timedelta(microseconds=1)
                                     ).to_dict()["f1"] == [5.0, None, None]
    # on A's event time: its value; before it: the stored row is newer, its value then is not stored
    assert store.get_online_features(features, {"acct": ["A"]}, now=A_EVENT).to_dict()["f1"] == [5.0]
    with pytest.raises(RetrievalError, match=r"fs1:1: cannot answer as of 2024-01-09 11:00:00: 1 key\(s\) \(e.g. A\) "
                                             r"hold a value from 2024-01-09 12:00:00"):
        store.get_online_features(features, keys, now=datetime(2024, 1, 9, 11))
    # a key without a value does not stop the others
    assert store.get_online_features(features, {"acct": ["B", "C"]}, now=datetime(2024, 1, 9)).to_dict()["f1"] == [
        None, None]


def test_redis_cannot_bring_back_a_value_it_has_expired(make_store: MakeStore, request: pytest.FixtureRequest
                                                        ) -> None:
    """The job's clock is 0.3 s before A's expiry: Redis deletes A 0.3 s later (on its own clock). As of a time
    before the expiry SQLite still answers from the row it keeps; Redis answers null, and the explanation
    says why."""
    store = backfill(make_store(clock=A_EXPIRES - timedelta(milliseconds=300)))
    time.sleep(0.8)
    before_expiry = datetime(2024, 1, 10, 12)
    result = store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}, now=before_expiry, explain=True)
    if request.node.callspec.params["make_store"] == "sqlite":
        assert store.online_store.keeps_expired_rows
        assert result.to_dict()["f1"] == [5.0] and result.notes == []
    else:
        assert not store.online_store.keeps_expired_rows
        assert result.to_dict()["f1"] == [None]
        [note] = result.notes
        assert note.startswith("fs1:1: 1 key(s) (e.g. A) are not in the online store: no materialized window has "
                               "rows for them, or their values expired (event time + temporal_join_lookback, "
                               "2 days) and Redis deleted them; the newest event materialized, 2024-01-09 12:00:00, "
                               "expires at 2024-01-11 12:00:00"), note


def test_explain_says_why_keys_have_no_value(make_store: MakeStore, request: pytest.FixtureRequest) -> None:
    store = make_store()
    never = store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}, explain=True)
    assert never.notes == ["fs1:1: 1 key(s) (e.g. A) were never materialized: no online backfill of fs1:1 has "
                           "completed (gristmill backfill fs1:1 --start ... --end ...)"]
    backfill(store)
    fine = store.get_online_features(["fs1:1:f1"], {"acct": ["A"]}, explain=True)
    assert fine.notes == [] and fine.to_dict()["f1"] == [5.0]
    later = store.get_online_features(["fs1:1:f1"], {"acct": ["A", "C"]}, now=datetime(2024, 1, 12), explain=True)
    [note] = later.notes
    if request.node.callspec.params["make_store"] == "sqlite":       # the expired row is still there
        assert note == ("fs1:1: 1 key(s) have expired values (online values expire at event time + "
                        "temporal_join_lookback, 2 days): the newest, A, is from 2024-01-09 12:00:00 and expired at "
                        "2024-01-11 12:00:00 (as of 2024-01-12 00:00:00 UTC); 1 key(s) (e.g. C) are not in the "
                        "online store: the 1 completed online backfill job(s) of fs1:1 wrote no value for them: "
                        "they have no rows in the materialized windows, or their newest row had already expired "
                        "when it was materialized (the jobs skipped 1 such key(s); values expire at event time + "
                        "temporal_join_lookback, 2 days)")
    else:                                         # Redis still holds A (its clock is not the store's): A expired
        assert note.startswith("fs1:1: 1 key(s) have expired values"), note
        assert "1 key(s) (e.g. C) are not in the online store" in note
    # the default lookup reads no more than before: no notes
    assert store.get_online_features(["fs1:1:f1"], {"acct": ["C"]}).notes == []


def test_cli_online_get_as_of(tmp_path: Path) -> None:
    store = fs1_store(tmp_path, offline=False, online=True)
    backfill(store).close()
    folder = tmp_path / "store"
    base = ["online", "get", "--features", "fs1:1:f1", "--key", "acct=A,C", "--store", folder]
    as_of = gristmill(*base, "--as-of", "2024-01-10", "--json")
    assert_ok(as_of)
    assert json.loads(as_of.stdout) == [{"acct": "A", "f1": 5.0}, {"acct": "C", "f1": None}]
    assert "1 key(s) (e.g. C) are not in the online store" in as_of.stderr
    now = gristmill(*base)                       # the real clock: long after A expired
    assert_ok(now)
    assert ("note: fs1:1: 1 key(s) have expired values (online values expire at event time + temporal_join_lookback, "
            "2 days): the newest, A, is from 2024-01-09 12:00:00 and expired at 2024-01-11 12:00:00") in now.stderr
    assert_user_error(gristmill(*base, "--as-of", "2024-01-09"), "fs1:1: cannot answer as of 2024-01-09 00:00:00",
                      "keeps only the newest value per key", "offline retrieval")
    assert_user_error(gristmill(*base, "--as-of", "tomorrow"), "--as-of: 'tomorrow' is not an ISO date")


# --- the REST server and the connected client ---------------------------------------------------------------


def test_server_and_client_carry_online_outcome_as_of_and_notes(tmp_path: Path) -> None:
    store = fs1_store(tmp_path, offline=False, online=True)
    for url in _serve(store, auth=False):
        remote = gm.FeatureStore.connect(url)
        [job] = remote.backfill("fs1", 1, start="2024-01-01", end="2024-01-10")
        assert job.online == OnlineOutcome(1, 1, A_EVENT, A_EXPIRES)
        assert remote.get_job(job.id).online == job.online
        raw = httpx.get(f"{url}/v1/jobs/{job.id}").json()
        assert raw["online"] == {"keys_written": 1, "keys_expired": 1, "newest_event_time": "2024-01-09T12:00:00",
                                 "expires_at": "2024-01-11T12:00:00"}
        assert remote.get_online_features(["fs1:1:f1"], {"acct": ["A"]}).to_dict()["f1"] == [5.0]
        later = remote.get_online_features(["fs1:1:f1"], {"acct": ["A"]}, now=A_EXPIRES, explain=True)
        assert later.to_dict()["f1"] == [None] and "expired at 2024-01-11 12:00:00" in later.notes[0]
        with pytest.raises(gm.GristmillError, match=r"fs1:1: cannot answer as of 2024-01-09 00:00:00.*HTTP 400"):
            remote.get_online_features(["fs1:1:f1"], {"acct": ["A"]}, now="2024-01-09")
        remote.close()
    store.close()
