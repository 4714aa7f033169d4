"""One conformance suite for every online store (SPEC §3 "Materialization", scenario 18).

Each test runs against the in-memory reference, SQLite (a file in ``tmp_path``) and Redis (the server at
``GRISTMILL_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``, under a fresh key prefix that is
deleted afterwards), a private Redis Cluster, and both Redis stores again with their reads run on an event
loop as the server's online route runs them. A store that cannot meet a test gets an explicit marker here,
not a silent skip.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from redis_servers import REDIS_URL

from gristmill import loop_bridge
from gristmill.errors import GristmillError, RetrievalError
from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import CREATE_TIMESTAMP, EVENT_TIMESTAMP, OnlineStore, OnlineTable
from gristmill.stores.online.encoding import (
    CODECS,
    OnlineStoreError,
    encode_key,
    encode_key_column,
    normalize_key,
)
from gristmill.stores.online.memory import InMemoryOnlineStore
from gristmill.stores.online.sqlite import SQLiteOnlineStore

S, L, D = FeatureType.STRING, FeatureType.LONG, FeatureType.DOUBLE


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NOW = utc("2024-01-10")


def online_table(feature_set: str = "fs1", *, keys: tuple[tuple[str, FeatureType], ...] = (("acct", S),),
                 features: tuple[tuple[str, FeatureType], ...] = (("amount", D),),
                 ttl: timedelta | None = timedelta(days=2), materialization_version: int = 1) -> OnlineTable:
    return OnlineTable(store="test", feature_set=feature_set, version="1",
                       materialization_version=materialization_version, keys=keys, features=features, ttl=ttl)


FS1 = online_table()


def rows(table: OnlineTable, *records: tuple[Any, ...], created: str | list[str] = "2024-01-10") -> pa.Table:
    """Rows ``(key parts..., event time, features...)``; ``created`` is one create time or one per row."""
    nkeys = len(table.keys)
    created_list = created if isinstance(created, list) else [created] * len(records)
    columns: dict[str, pa.Array] = {}
    for i, (name, kind) in enumerate(table.keys):
        columns[name] = pa.array([r[i] for r in records], CODECS[kind].arrow_type)
    columns[EVENT_TIMESTAMP] = pa.array([utc(r[nkeys]) for r in records], pa.timestamp("us", tz="UTC"))
    columns[CREATE_TIMESTAMP] = pa.array([utc(c) for c in created_list], pa.timestamp("us", tz="UTC"))
    for i, (name, kind) in enumerate(table.features):
        columns[name] = pa.array([r[nkeys + 1 + i] for r in records], CODECS[kind].arrow_type)
    return pa.table(columns)


def amounts(store: OnlineStore, keys: list[str], *, now: datetime = NOW, table: OnlineTable = FS1) -> list[Any]:
    return [None if hit is None else hit["amount"] for hit in store.read(table, [(k,) for k in keys], now=now)]


# --- the stores ------------------------------------------------------------------------------------------


def _redis_store(url: str = REDIS_URL) -> Iterator[OnlineStore]:
    import redis

    from gristmill.stores.online.redis import RedisOnlineStore

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        # Not a skip: CI and dev machines run Redis (.ci/run starts it); a missing server must fail loudly.
        pytest.fail(f"no Redis server at {url}; start it (see .ci/run)")
    prefix = f"gristmill-test-{uuid.uuid4().hex[:12]}"
    store = RedisOnlineStore(url, prefix=prefix)
    try:
        yield store
    finally:
        for node in store._route().nodes():
            names = list(node.client.scan_iter(match=f"{prefix}:*", count=1000))
            for name in names:
                node.client.unlink(name)
        store.close()


class OnLoop:
    """A store whose lookups run on an event loop, as the server's online route runs them
    (``gristmill.loop_bridge``): reads wait for Redis on the loop's pipelined connection, and a read that
    would block (the first, which asks the server whether it is a cluster) runs directly, as the route
    then runs it on a thread."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.loops: list[asyncio.AbstractEventLoop] = []      # one per thread that reads
        self._local = threading.local()
        self.on_loop = self.off_loop = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
            self.loops.append(loop)
        return loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _run(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            answer = self.loop.run_until_complete(loop_bridge.run_on_loop(lambda: method(*args, **kwargs)))
        except loop_bridge.WouldBlock:
            self.off_loop += 1
            return method(*args, **kwargs)
        self.on_loop += 1
        return answer

    def read(self, table: OnlineTable, keys: Any, *, now: datetime) -> Any:
        return self._run(self.store.read, table, keys, now=now)

    def read_stored(self, table: OnlineTable, keys: Any) -> Any:
        return self._run(self.store.read_stored, table, keys)

    def close(self) -> None:
        async def closed() -> None:
            self.store.close_loop_channels()

        for loop in self.loops:
            loop.run_until_complete(closed())
            loop.close()
        self.loops.clear()
        assert self.off_loop <= 1, f"{self.off_loop} reads could not run on a loop"


def _on_loop(stores: Iterator[OnlineStore]) -> Iterator[OnlineStore]:
    store = next(stores)
    wrapped = OnLoop(store)
    try:
        yield wrapped                                            # type: ignore[misc]
    finally:
        if wrapped.loops:
            wrapped.close()
        next(stores, None)


STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Iterator[OnlineStore]]] = {
    "memory": lambda request, tmp_path: iter([InMemoryOnlineStore()]),
    "sqlite": lambda request, tmp_path: iter([SQLiteOnlineStore(tmp_path / "online.db")]),
    "redis": lambda request, tmp_path: _redis_store(),
    # a private three-primary cluster (tests/redis_servers.py): keys spread over nodes by hash slot
    "redis-cluster": lambda request, tmp_path: _redis_store(request.getfixturevalue("redis_cluster").url),
    # the same stores read as the server reads them: on its event loop
    "redis-on-loop": lambda request, tmp_path: _on_loop(_redis_store()),
    "redis-cluster-on-loop": lambda request, tmp_path: _on_loop(
        _redis_store(request.getfixturevalue("redis_cluster").url)),
}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    made = STORES[request.param](request, tmp_path)
    instance = next(made)
    yield instance
    instance.close()
    next(made, None)                    # run the generator's cleanup


# --- scenario 18 and the write rules ---------------------------------------------------------------------


def test_scenario_18(store: OnlineStore) -> None:
    written = store.write(FS1, rows(FS1, ("A", "2024-01-07", 3.0), ("A", "2024-01-09 12:00", 5.0),
                                    ("B", "2024-01-07", 9.0)), now=NOW)
    assert written == 1                                            # B expired, A's older row superseded
    assert amounts(store, ["A", "B", "C"]) == [5.0, None, None]
    assert amounts(store, ["B"], now=utc("2024-01-07 12:00")) == [None]     # B was never written
    assert store.write(FS1, rows(FS1, ("A", "2024-01-08", 4.0)), now=NOW) == 0
    assert amounts(store, ["A"]) == [5.0]
    assert amounts(store, ["A"], now=utc("2024-01-11 11:59:59")) == [5.0]
    assert amounts(store, ["A"], now=utc("2024-01-11 12:00")) == [None]
    assert amounts(store, ["A", "A"], now=utc("2024-01-11 12:00")) == [None, None]
    assert amounts(store, ["A"], now=utc("2024-01-12")) == [None]


def test_an_older_row_written_later_changes_nothing_even_when_it_is_not_expired(store: OnlineStore) -> None:
    store.write(FS1, rows(FS1, ("A", "2024-01-09 12:00", 5.0)), now=NOW)
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09 11:00", 4.0)), now=NOW) == 0
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09 13:00", 6.0)), now=NOW) == 1
    assert amounts(store, ["A"]) == [6.0]


def test_long_values_round_trip(store: OnlineStore) -> None:
    table = online_table(features=(("amount", L),))
    store.write(table, rows(table, ("A", "2024-01-09", 3_000_000_000), ("B", "2024-01-09", 2**63 - 1),
                            ("C", "2024-01-09", -(2**63 - 1))), now=NOW)
    assert amounts(store, ["A", "B", "C"], table=table) == [3_000_000_000, 2**63 - 1, -(2**63 - 1)]


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("2024-01-05", "2024-01-06", 2.0),       # greater create_timestamp wins
    ("2024-01-06", "2024-01-05", 1.0),       # smaller create_timestamp loses
    ("2024-01-06", "2024-01-06", 2.0),       # equal both: the later write wins
])
def test_equal_event_time_goes_to_the_greater_create_timestamp(store: OnlineStore, first: str, second: str,
                                                               expected: float) -> None:
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 1.0), created=first), now=NOW)
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 2.0), created=second), now=NOW)
    assert amounts(store, ["A"]) == [expected]


@pytest.mark.parametrize(("batch", "created", "expected"), [
    ([("A", "2024-01-09 10:00", 1.0), ("A", "2024-01-09 12:00", 2.0), ("A", "2024-01-09 11:00", 3.0)],
     "2024-01-10", 2.0),
    ([("A", "2024-01-09", 1.0), ("A", "2024-01-09", 2.0)], ["2024-01-06", "2024-01-05"], 1.0),
    ([("A", "2024-01-09", 1.0), ("A", "2024-01-09", 2.0)], ["2024-01-05", "2024-01-06"], 2.0),
    ([("A", "2024-01-09", 1.0), ("A", "2024-01-09", 2.0)], "2024-01-05", 2.0),   # equal both: the later row
])
def test_several_rows_of_one_key_in_a_batch_keep_the_newest(store: OnlineStore, batch: list[tuple[Any, ...]],
                                                            created: str | list[str], expected: float) -> None:
    assert store.write(FS1, rows(FS1, *batch, created=created), now=NOW) == 1
    assert amounts(store, ["A"]) == [expected]


def test_rows_without_create_timestamp_lose_ties_to_rows_with_one(store: OnlineStore) -> None:
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 1.0), created="2024-01-01"), now=NOW)
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 2.0)).drop_columns([CREATE_TIMESTAMP]), now=NOW)
    assert amounts(store, ["A"]) == [1.0]


def test_no_ttl_never_expires(store: OnlineStore) -> None:
    table = online_table(ttl=None)
    store.write(table, rows(table, ("A", "2001-01-01", 1.0)), now=NOW)
    assert amounts(store, ["A"], table=table, now=utc("2100-01-01")) == [1.0]


def test_read_stored_gives_the_row_with_its_event_time_and_expiry(store: OnlineStore) -> None:
    store.write(FS1, rows(FS1, ("A", "2024-01-09 12:00", 5.0)), now=NOW)
    many = store.read_stored(FS1, [("A",), ("C",), (None,), ("A",)])
    assert [None if row is None else (row.event_time, row.expires_at, row.values) for row in many] == [
        (datetime(2024, 1, 9, 12), datetime(2024, 1, 11, 12), {"amount": 5.0}), None, None,
        (datetime(2024, 1, 9, 12), datetime(2024, 1, 11, 12), {"amount": 5.0})]
    [one] = store.read_stored(FS1, [("A",)])
    assert one is not None and one.values == {"amount": 5.0}
    table = online_table("forever", ttl=None)
    store.write(table, rows(table, ("A", "2001-01-01", 1.0)), now=NOW)
    [forever] = store.read_stored(table, [("A",)])
    assert forever is not None and forever.expires_at is None


def test_read_stored_keeps_expired_rows_where_the_store_keeps_them(store: OnlineStore) -> None:
    """Written 0.2 s before its expiry on the injected clock: Redis deletes the row 0.2 s later (server-side
    PXAT) and cannot show it any more; SQLite and the in-memory store keep it (readable for an earlier "now")."""
    table = online_table("short", ttl=timedelta(days=1))
    store.write(table, rows(table, ("A", "2024-01-09 12:00", 5.0)), now=utc("2024-01-10 11:59:59.8"))
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while store.read_stored(table, [("A",)])[0] is not None and datetime.now(UTC) < deadline \
            and not store.keeps_expired_rows:
        time.sleep(0.05)
    [row] = store.read_stored(table, [("A",)])
    if store.keeps_expired_rows:
        assert row is not None and row.values == {"amount": 5.0} and row.expires_at == datetime(2024, 1, 10, 12)
    else:
        assert row is None
    assert amounts(store, ["A"], table=table, now=utc("2024-01-10 12:00")) == [None]


# --- values ----------------------------------------------------------------------------------------------

ALL_TYPES = (("s", FeatureType.STRING), ("i", FeatureType.INTEGER), ("l", FeatureType.LONG),
             ("f", FeatureType.FLOAT), ("d", FeatureType.DOUBLE), ("b", FeatureType.BOOLEAN),
             ("t", FeatureType.DATETIME), ("x", FeatureType.BINARY), ("v", FeatureType.FLOAT_VECTOR))
TYPED = online_table("typed", features=ALL_TYPES)
F32_TENTH = float(np.float32(0.1))
VALUES = {
    "A": ("héllo ✓ 🎉", 2**31 - 1, 2**63 - 1, F32_TENTH, 0.1, True, utc("2024-01-09 01:02:03.456789"),
          b"\x00\xff:%", [F32_TENTH, -1.5, float("inf")]),
    "B": ("", -(2**31), -(2**63 - 1), float("-inf"), float("nan"), False, utc("1969-12-31 23:59:59.999999"),
          b"", []),
    "C": (None,) * 9,
    "D": (":a%3A", 0, 3_000_000_000, -0.0, -0.0, None, None, None, [0.0]),
    "E": ("x", None, None, 1e-45, 5e-324, None, utc("2262-04-12"), b"b", None),
}


def _same(a: Any, b: Any) -> bool:
    """Equal, with nan equal to nan and -0.0 told apart from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_every_type_round_trips_with_nulls(store: OnlineStore) -> None:
    store.write(TYPED, rows(TYPED, *((k, "2024-01-09", *v) for k, v in VALUES.items())), now=NOW)
    for found in (store.read(TYPED, [(k,)], now=NOW)[0] for k in VALUES), store.read(TYPED, [(k,) for k in VALUES],
                                                                                      now=NOW):
        for key, hit in zip(VALUES, found, strict=True):
            assert hit is not None, key
            assert list(hit) == [name for name, _ in ALL_TYPES]
            for (name, _), want in zip(ALL_TYPES, VALUES[key], strict=True):
                assert _same(hit[name], want), (key, name, hit[name], want)


def test_fixed_width_types_read_together(store: OnlineStore) -> None:
    fixed = tuple((name, kind) for name, kind in ALL_TYPES if CODECS[kind].width is not None)
    table = online_table("fixed", features=fixed)
    positions = [i for i, (_, kind) in enumerate(ALL_TYPES) if CODECS[kind].width is not None]
    values = {"A": [VALUES["A"][i] for i in positions], "B": [VALUES["B"][i] for i in positions]}
    store.write(table, rows(table, *((k, "2024-01-09", *v) for k, v in values.items())), now=NOW)
    found = store.read(table, [("A",), ("B",)], now=NOW)
    for key, hit in zip(values, found, strict=True):
        assert hit is not None
        assert all(_same(hit[name], want) for (name, _), want in zip(fixed, values[key], strict=True)), hit


def test_a_feature_that_became_null_disappears(store: OnlineStore) -> None:
    store.write(TYPED, rows(TYPED, ("A", "2024-01-09", *VALUES["A"])), now=NOW)
    store.write(TYPED, rows(TYPED, ("A", "2024-01-09 01:00", *VALUES["C"])), now=NOW)
    assert store.read(TYPED, [("A",)], now=NOW) == [dict.fromkeys((n for n, _ in ALL_TYPES), None)]


def test_float32_and_int32_inputs_are_accepted(store: OnlineStore) -> None:
    table = online_table(features=(("f", FeatureType.FLOAT), ("i", FeatureType.INTEGER)))
    data = pa.table({"acct": ["A"], EVENT_TIMESTAMP: pa.array([datetime(2024, 1, 9)], pa.timestamp("us")),
                     "f": pa.array([0.1], pa.float32()), "i": pa.array([7], pa.int32())})
    store.write(table, data, now=NOW)
    assert store.read(table, [("A",)], now=NOW) == [{"f": F32_TENTH, "i": 7}]


# --- keys ------------------------------------------------------------------------------------------------

PAIR = online_table("pair", keys=(("k1", S), ("k2", S)))


def test_composite_keys_never_collide(store: OnlineStore) -> None:
    keys = [("ab", "c"), ("a", "bc"), ("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c"), ("", "abc"), ("abc", "")]
    store.write(PAIR, rows(PAIR, *((*k, "2024-01-09", float(i)) for i, k in enumerate(keys))), now=NOW)
    assert [h["amount"] for h in store.read(PAIR, keys, now=NOW)] == [float(i) for i in range(len(keys))]
    assert [store.read(PAIR, [k], now=NOW)[0]["amount"] for k in keys] == [float(i) for i in range(len(keys))]


def test_mixed_type_composite_keys(store: OnlineStore) -> None:
    table = online_table("mixed", keys=(("user", L), ("day", FeatureType.DATETIME), ("vip", FeatureType.BOOLEAN)))
    day = utc("2024-01-01")
    data = pa.table({"user": pa.array([1, 1, 12], pa.int64()),
                     "day": pa.array([day, day, day], pa.timestamp("us", tz="UTC")),
                     "vip": [True, False, True], EVENT_TIMESTAMP: pa.array([utc("2024-01-09")] * 3),
                     "amount": [1.0, 2.0, 3.0]})
    store.write(table, data, now=NOW)
    found = store.read(table, [(1, day, False), (12, day, True), (1, day, True), (2, day, True)], now=NOW)
    assert [None if h is None else h["amount"] for h in found] == [2.0, 3.0, 1.0, None]


def test_many_keys_keep_request_order_with_unknown_and_null_keys(store: OnlineStore) -> None:
    store.write(FS1, rows(FS1, *((f"k{i}", "2024-01-09", float(i)) for i in range(50))), now=NOW)
    wanted = ["k7", "nope", "k3", None, "k7", "k49", "k0", "other"]
    found = store.read(FS1, [(k,) for k in wanted], now=NOW)
    assert [None if h is None else h["amount"] for h in found] == [7.0, None, 3.0, None, 7.0, 49.0, 0.0, None]
    assert store.read(FS1, [], now=NOW) == []
    assert store.read(FS1, [(None,)], now=NOW) == [None]


def test_a_key_of_the_wrong_type_is_a_clear_error(store: OnlineStore) -> None:
    table = online_table("ints", keys=(("user", L),))
    store.write(table, rows(table, (1, "2024-01-09", 1.0)), now=NOW)
    with pytest.raises(RetrievalError, match="not a valid long"):
        store.read(table, [("1",)], now=NOW)
    with pytest.raises(RetrievalError, match="1 part"):
        store.read(table, [(1, 2)], now=NOW)
    assert store.read(table, [(np.int64(1),)], now=NOW)[0] == {"amount": 1.0}


def test_rows_with_a_null_key_part_are_not_written(store: OnlineStore) -> None:
    assert store.write(PAIR, rows(PAIR, ("a", None, "2024-01-09", 1.0), ("a", "b", "2024-01-09", 2.0)), now=NOW) == 1
    assert [h["amount"] for h in store.read(PAIR, [("a", "b")], now=NOW)] == [2.0]


def test_a_feature_set_without_index_columns_holds_one_row(store: OnlineStore) -> None:
    table = online_table("global", keys=())
    store.write(table, rows(table, ("2024-01-09", 1.0), ("2024-01-09 06:00", 2.0)), now=NOW)
    assert store.read(table, [(), ()], now=NOW) == [{"amount": 2.0}, {"amount": 2.0}]


# --- isolation, drop, volume -----------------------------------------------------------------------------


def test_materialization_versions_and_feature_sets_are_isolated(store: OnlineStore) -> None:
    v2 = online_table(materialization_version=2)
    other = online_table("fs2")
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 1.0)), now=NOW)
    store.write(v2, rows(v2, ("A", "2024-01-09", 2.0), ("B", "2024-01-09", 2.5)), now=NOW)
    store.write(other, rows(other, ("A", "2024-01-08 12:00", 3.0)), now=NOW)  # older: must not be compared with fs1
    assert amounts(store, ["A", "B"]) == [1.0, None]
    assert amounts(store, ["A", "B"], table=v2) == [2.0, 2.5]
    assert amounts(store, ["A", "B"], table=other) == [3.0, None]


def test_drop_deletes_one_table(store: OnlineStore) -> None:
    other = online_table("fs2")
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 1.0), ("B", "2024-01-09", 2.0)), now=NOW)
    store.write(other, rows(other, ("A", "2024-01-09", 3.0)), now=NOW)
    store.drop(FS1)
    assert amounts(store, ["A", "B"]) == [None, None]
    assert amounts(store, ["A"], table=other) == [3.0]
    store.drop(FS1)                                                          # dropping twice is fine
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09", 4.0)), now=NOW) == 1
    assert amounts(store, ["A"]) == [4.0]


def test_reading_or_dropping_a_table_never_written(store: OnlineStore) -> None:
    store.drop(online_table("never"))
    assert store.read(online_table("never"), [("A",), ("B",)], now=NOW) == [None, None]
    assert store.read(online_table("never"), [("A",)], now=NOW) == [None]


def test_large_batch(store: OnlineStore) -> None:
    n = 20_000
    table = online_table("large", keys=(("id", L), ("part", S)),
                         features=(("a", D), ("b", L), ("c", S), ("v", FeatureType.FLOAT_VECTOR)))
    ids = np.arange(n)
    event = pa.array(np.datetime64("2024-01-09") + (ids % 3600).astype("timedelta64[s]"))
    data = pa.table({"id": ids, "part": pa.array([f"p{i % 7}" for i in range(n)]),
                     EVENT_TIMESTAMP: event.cast(pa.timestamp("us")), "a": ids * 0.5,
                     "b": pa.array(ids * 1_000_003, mask=ids % 10 == 0), "c": [f"c{i}" for i in range(n)],
                     "v": pa.array([[float(i), 1.0] for i in range(n)], pa.list_(pa.float32()))})
    assert store.write(table, data, now=NOW) == n
    found = store.read(table, [(int(i), f"p{i % 7}") for i in range(n)] + [(0, "p1")], now=NOW)
    assert found[-1] is None
    assert all(h is not None for h in found[:-1])
    assert [h["a"] for h in found[:-1]] == (ids * 0.5).tolist()
    assert [h["b"] for h in found[:-1]] == [None if i % 10 == 0 else i * 1_000_003 for i in range(n)]
    assert [h["c"] for h in found[:-1]] == [f"c{i}" for i in range(n)]
    assert found[12345]["v"] == [12345.0, 1.0]
    # rewriting the same rows with equal event and create times replaces them, and is counted again
    assert store.write(table, data, now=NOW) == n


def test_threads_read_while_one_writes(store: OnlineStore) -> None:
    store.write(FS1, rows(FS1, *((f"k{i}", "2024-01-09", 1.0) for i in range(100))), now=NOW)

    def read_many(_: int) -> set[Any]:
        return {h["amount"] for _ in range(20) for h in store.read(FS1, [(f"k{i}",) for i in range(100)], now=NOW)}

    with ThreadPoolExecutor(4) as pool:
        readers = pool.map(read_many, range(4))
        for hour in range(1, 6):
            store.write(FS1, rows(FS1, *((f"k{i}", f"2024-01-09 0{hour}:00", float(hour + 1)) for i in range(100))),
                        now=NOW)
        seen = set().union(*readers)
    assert seen <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert set(amounts(store, [f"k{i}" for i in range(100)])) == {6.0}


# --- encoding (store independent) ------------------------------------------------------------------------


@pytest.mark.parametrize(("kinds", "first", "second"), [
    ((S, S), ("ab", "c"), ("a", "bc")),
    ((S, S), ("a:b", "c"), ("a", "b:c")),
    ((S, S), ("a%3Ab", "c"), ("a:b", "c")),
    ((S,), ("1",), None),
    ((L,), (1,), None),
    ((FeatureType.BOOLEAN,), (True,), None),
    ((S, L), ("1", 2), None),
    ((L, S), (1, "2"), None),
    ((FeatureType.BINARY,), (b"1",), None),
])
def test_key_encodings_are_distinct(kinds: tuple[FeatureType, ...], first: tuple[Any, ...],
                                    second: tuple[Any, ...] | None) -> None:
    encoded = encode_key(kinds, normalize_key(kinds, first))
    others = {encode_key(k, normalize_key(k, v)) for k, v in [((S,), ("1",)), ((L,), (1,)),
                                                            ((FeatureType.BOOLEAN,), (True,)), ((S, L), ("1", 2)),
                                                            ((L, S), (1, "2")), ((FeatureType.BINARY,), (b"1",))]}
    assert len(others) == 6
    if second is not None:
        assert encoded != encode_key(kinds, normalize_key(kinds, second))


def test_vectorized_key_encoding_matches_the_scalar_one() -> None:
    kinds = (S, L, FeatureType.DATETIME, FeatureType.BOOLEAN, FeatureType.BINARY)
    keys = [("a:b%", -5, utc("1969-12-31 23:59:59.5"), True, b"\x00:"), ("", 2**63 - 1, utc("2024-01-01"), False, b"")]
    columns = [pa.array([k[i] for k in keys], CODECS[kind].arrow_type) for i, kind in enumerate(kinds)]
    vectorized = encode_key_column(kinds, columns, prefix="p:").to_pylist()
    assert vectorized == ["p:" + encode_key(kinds, normalize_key(kinds, k)) for k in keys]


@pytest.mark.parametrize(("kind", "value"), [
    (FeatureType.LONG, 3_000_000_000), (FeatureType.DOUBLE, -0.0), (FeatureType.BOOLEAN, True),
    (FeatureType.DATETIME, utc("2024-01-09 01:02:03.000004")), (FeatureType.STRING, "ü"),
    (FeatureType.BINARY, b"\x00"), (FeatureType.FLOAT_VECTOR, [1.5, -2.0]),
])
def test_codec_bytes_round_trip(kind: FeatureType, value: Any) -> None:
    codec = CODECS[kind]
    assert _same(codec.from_bytes(codec.to_bytes(value)), value)


# --- Redis only ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_connection_refused_is_a_clear_error() -> None:
    from gristmill.stores.online.redis import RedisOnlineStore

    url = f"redis://127.0.0.1:{_free_port()}/0"
    store = RedisOnlineStore(url, prefix="unused")
    with pytest.raises(OnlineStoreError, match=r"127\.0\.0\.1:\d+.*Is Redis running\?") as info:
        store.read(FS1, [("A",)], now=NOW)
    assert isinstance(info.value, GristmillError)
    with pytest.raises(OnlineStoreError, match="Is Redis running"):
        store.write(FS1, rows(FS1, ("A", "2024-01-09", 1.0)), now=NOW)
    with pytest.raises(OnlineStoreError, match="Is Redis running"):
        store.read(FS1, [("A",), ("B",)], now=NOW)
    with pytest.raises(OnlineStoreError, match="Is Redis running"):
        store.drop(FS1)


def test_redis_url_password_is_not_shown() -> None:
    from gristmill.stores.online.redis import RedisOnlineStore

    url = f"redis://user:secret@127.0.0.1:{_free_port()}/0"
    with pytest.raises(OnlineStoreError) as info:
        RedisOnlineStore(url).read(FS1, [("A",)], now=NOW)
    assert "secret" not in str(info.value) and "***" in str(info.value)


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A Redis online store on the standalone server and on the private cluster."""
    made = STORES[request.param](request, tmp_path)
    yield next(made)
    next(made, None)


def _client(store: Any) -> Any:
    """A plain redis-py client for ``store``'s server (a cluster client on a cluster)."""
    import redis
    from redis.cluster import RedisCluster

    return RedisCluster.from_url(store.url) if store.is_cluster else redis.Redis.from_url(store.url)


def _redis_key(store: Any, table: OnlineTable, key: tuple[Any, ...]) -> str:
    name = store._layout(table).key(key)
    assert name is not None
    return name


def test_redis_reloads_scripts_the_server_lost(redis_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server restart or SCRIPT FLUSH drops loaded scripts: the writes that met NOSCRIPT load it and go again."""
    import hashlib

    from gristmill.stores.online import redis as redis_module

    store = redis_store
    assert store.write(FS1, rows(FS1, *((f"k{i}", "2024-01-09", float(i)) for i in range(5))), now=NOW) == 5
    script = redis_module.WRITE_SCRIPT + f"-- {uuid.uuid4().hex}\n"   # one no server has seen: NOSCRIPT first
    monkeypatch.setattr(redis_module, "WRITE_SCRIPT", script)
    store.rows_per_call = 2
    store._write_sha = hashlib.sha1(script.encode()).hexdigest()
    for node in store._route().nodes():         # as if loaded before the server lost it
        node.script_loaded = True
    newer = rows(FS1, *((f"k{i}", "2024-01-09 01:00", 10.0 + i) for i in range(5)))
    assert store.write(FS1, newer, now=NOW) == 5                    # existing keys: the script's path
    assert amounts(store, ["k0", "k4", "x"]) == [10.0, 14.0, None]


@pytest.mark.parametrize("rows_per_pipeline", [20_000, 3])
def test_redis_batches_mixing_new_and_existing_keys(redis_store: Any, rows_per_pipeline: int) -> None:
    """New keys take SET NX, existing ones the compare-and-set; pipelines where most keys exist go to the
    script directly. Every path keeps the newest row and counts what it wrote."""
    store = redis_store
    store.rows_per_pipeline = rows_per_pipeline
    store.rows_per_call = 2
    assert store.write(FS1, rows(FS1, *((f"k{i}", "2024-01-09", float(i)) for i in range(0, 12, 2))), now=NOW) == 6
    batch = [(f"k{i}", "2024-01-09 06:00" if i % 4 == 0 else "2024-01-08 12:00", 100.0 + i) for i in range(12)]
    # k0, k4, k8: newer -> written; k2, k6, k10: older -> kept; k1, k3, ... k11: new -> written
    assert store.write(FS1, rows(FS1, *batch), now=NOW) == 3 + 6
    expected = [100.0 + i if i % 4 == 0 or i % 2 else float(i) for i in range(12)]
    assert amounts(store, [f"k{i}" for i in range(12)]) == expected
    assert store.write(FS1, rows(FS1, *batch), now=NOW) == 9         # the same rows again: equal wins


def test_redis_an_older_row_keeps_the_newer_rows_server_expiry(redis_store: Any) -> None:
    """The script swaps the older row in and straight back: the newer row keeps its own expiry on the server."""
    import time

    store = redis_store
    started = time.monotonic()
    store.write(FS1, rows(FS1, ("A", "2024-01-09 12:00", 5.0)), now=NOW)
    client = _client(store)
    name = _redis_key(store, FS1, ("A",))
    expiry = client.pexpiretime(name)
    assert expiry > 0
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09", 4.0)), now=NOW) == 0
    elapsed_ms = (time.monotonic() - started) * 1000
    assert amounts(store, ["A"]) == [5.0]
    # the fixed test clock (NOW) maps onto the server's clock anew at each write, so the restored expiry may
    # move by the real time between the two writes (with a real clock the mapping stays put)
    assert abs(client.pexpiretime(name) - expiry) <= elapsed_ms + 2
    client.close()


def test_redis_a_key_of_another_type_is_replaced(redis_store: Any) -> None:
    store = redis_store
    client = _client(store)
    name = _redis_key(store, FS1, ("A",))
    client.hset(name, "f", "v")                                      # e.g. an earlier layout
    assert amounts(store, ["A"]) == [None] and amounts(store, ["A", "B"]) == [None, None]
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09", 4.0)), now=NOW) == 1
    assert amounts(store, ["A"]) == [4.0]
    client.close()


def test_redis_writes_without_hiredis(redis_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the hiredis parser the replies are read through redis-py, one by one: same results."""
    from gristmill.stores.online import redis_wire

    monkeypatch.setattr(redis_wire, "hiredis_reader", lambda: None)
    store = redis_store
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09", 4.0), ("B", "2024-01-09", 1.0)), now=NOW) == 2
    assert store.write(FS1, rows(FS1, ("A", "2024-01-09 06:00", 5.0), ("B", "2024-01-08", 2.0)), now=NOW) == 1
    assert amounts(store, ["A", "B"]) == [5.0, 1.0]


def test_redis_lookups_reconnect_once_when_their_connection_died(redis_store: Any) -> None:
    """A lookup connection closed by the server (restart, timeout, CLIENT KILL) is replaced transparently."""
    store = redis_store
    store.write(FS1, rows(FS1, ("A", "2024-01-09", 4.0), ("B", "2024-01-09", 1.0)), now=NOW)
    assert amounts(store, ["A"]) == [4.0]
    (channel,) = store._local.channels.values()
    host, port = channel.connection._sock.getsockname()[:2]
    peer = channel.connection._sock.getpeername()[1]
    import redis

    killer = redis.Redis(host="127.0.0.1", port=peer)
    assert killer.client_kill(f"{host}:{port}")
    killer.close()
    assert amounts(store, ["A"]) == [4.0]
    assert amounts(store, ["A", "B", "C"]) == [4.0, 1.0, None]


# --- Redis Cluster only -----------------------------------------------------------------------------------


def test_redis_cluster_is_detected_and_spreads_keys_over_every_node(redis_cluster: Any) -> None:
    for store in _redis_store(redis_cluster.url):
        assert store.is_cluster
        assert store.write(FS1, rows(FS1, *((f"k{i}", "2024-01-09", float(i)) for i in range(300))), now=NOW) == 300
        per_node = [len(list(server.client().scan_iter(match=f"{store.prefix}:*", count=1000)))
                    for server in redis_cluster.servers]
        assert sum(per_node) == 300 and all(count > 30 for count in per_node), per_node
        assert amounts(store, [f"k{i}" for i in range(0, 300, 7)]) == [float(i) for i in range(0, 300, 7)]
        store.drop(FS1)
        assert sum(len(list(server.client().scan_iter(match=f"{store.prefix}:*"))) for server in redis_cluster.servers
                   ) == 0


def test_redis_cluster_slot_moved_after_the_store_read_the_slot_map(redis_cluster: Any) -> None:
    """A slot that moves to another node after a store cached the slot map: MOVED replies make the store
    re-read the map and send the rows again, for writes and reads alike."""

    from gristmill.stores.online.redis import RedisOnlineStore

    for store in _redis_store(redis_cluster.url):
        reader = RedisOnlineStore(redis_cluster.url, prefix=store.prefix)       # another process, say
        store.write(FS1, rows(FS1, ("warm", "2024-01-09", 0.0)), now=NOW)      # both cache the slot map now
        assert amounts(reader, ["warm"]) == [0.0]
        clients, ids, key, slot, owner = _empty_slot(redis_cluster, store, "moving")
        target = (owner + 1) % len(clients)
        for client in clients:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        assert store.write(FS1, rows(FS1, (key, "2024-01-09", 7.0)), now=NOW) == 1   # MOVED, then the target
        assert clients[target].exists(_redis_key(store, FS1, (key,))) == 1
        assert amounts(reader, [key]) == [7.0]                                    # MOVED, then the target
        assert amounts(reader, [key, "warm", "none"]) == [7.0, 0.0, None]
        reader.close()
        for client in clients:
            client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _empty_slot(redis_cluster: Any, store: Any, stem: str) -> tuple[list[Any], list[str], str, int, int]:
    """(a client per node, their ids, an entity key whose hash slot holds no key yet, that slot, the index
    of the node that owns it): such a slot can be moved as it is."""
    from redis.crc import key_slot

    clients = [server.client() for server in redis_cluster.servers]
    ids = [_text(client.execute_command("CLUSTER", "MYID")) for client in clients]
    for n in range(1000):
        key = f"{stem}{n}"
        slot = key_slot(_redis_key(store, FS1, (key,)).encode())
        if all(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0 for client in clients):
            break
    owner = ids.index(next(_text(primary[2]) for start, end, primary, *_ in
                           clients[0].execute_command("CLUSTER", "SLOTS") if start <= slot <= end))
    return clients, ids, key, slot, owner


def test_redis_cluster_follows_ask_while_a_slot_migrates(redis_cluster: Any) -> None:
    """A slot half-way through a migration (MIGRATING on its owner, IMPORTING on the target): keys that are
    not on the owner any more answer ASK, and the store writes and reads them on the target with ASKING."""

    for store in _redis_store(redis_cluster.url):
        store.write(FS1, rows(FS1, ("warm", "2024-01-09", 0.0)), now=NOW)
        clients, ids, key, slot, owner = _empty_slot(redis_cluster, store, "migrating")
        target = (owner + 1) % len(clients)
        clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
        clients[owner].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        try:
            batch = rows(FS1, (key, "2024-01-09", 7.0), ("other", "2024-01-09", 1.0))
            assert store.write(FS1, batch, now=NOW) == 2
            asking = clients[target].pipeline(transaction=False)     # the target answers MOVED without ASKING
            asking.execute_command("ASKING")
            asking.exists(_redis_key(store, FS1, (key,)))
            assert asking.execute()[1] == 1                              # written where ASK said
            assert amounts(store, [key]) == [7.0] and amounts(store, [key, "other", "none"]) == [7.0, 1.0, None]
            assert store.write(FS1, rows(FS1, (key, "2024-01-08", 3.0)), now=NOW) == 0    # older: compare-and-set
            assert amounts(store, [key]) == [7.0]
        finally:
            for client in clients:                     # finish the migration: the slot goes to the target
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
                client.close()


def test_redis_cluster_redirects_without_hiredis(redis_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py's own reply reader drops MOVED/ASK from error messages: redirects are still recognised."""
    from gristmill.stores.online import redis_wire

    monkeypatch.setattr(redis_wire, "hiredis_reader", lambda: None)
    test_redis_cluster_follows_ask_while_a_slot_migrates(redis_cluster)
