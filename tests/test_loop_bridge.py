"""The event-loop bridge of online lookups (``gristmill.loop_bridge``) and the pipelined Redis connection it
waits on (``LoopChannel``), against real Redis servers: replies reach the lookup that asked for them however
many are in flight, a Redis that stops answering fails the waiting lookups after the timeout without holding
the loop, and a dropped connection is opened again."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from redis_servers import REDIS_URL, RedisServer

from gristmill import loop_bridge
from gristmill.spec.types import FeatureType
from gristmill.stores.online.base import EVENT_TIMESTAMP, OnlineTable
from gristmill.stores.online.encoding import OnlineStoreError
from gristmill.stores.online.redis import RedisOnlineStore
from gristmill.stores.online.redis_wire import LoopChannel, bulk


def test_a_call_runs_to_its_result_awaiting_its_io() -> None:
    def work(a: int, b: int) -> tuple[int, bool]:
        assert loop_bridge.on_loop()
        slept = loop_bridge.await_io(asyncio.sleep(0.01, result=a))
        return slept + b, loop_bridge.on_loop()

    assert asyncio.run(loop_bridge.run_on_loop(work, 2, 3)) == (5, True)
    assert not loop_bridge.on_loop()
    loop_bridge.blocking_io()                               # off the loop: nothing happens


def test_errors_travel_both_ways_and_blocking_io_says_would_block() -> None:
    async def fails() -> None:
        raise KeyError("from the loop")

    def handles() -> str:
        try:
            loop_bridge.await_io(fails())
        except KeyError as exc:
            return f"caught {exc}"
        return "not raised"

    def raises() -> None:
        raise ValueError("from the call")

    def blocks() -> None:
        loop_bridge.blocking_io()
        raise AssertionError("blocking_io() returned on the loop")

    assert asyncio.run(loop_bridge.run_on_loop(handles)) == "caught 'from the loop'"
    with pytest.raises(ValueError, match="from the call"):
        asyncio.run(loop_bridge.run_on_loop(raises))
    with pytest.raises(loop_bridge.WouldBlock):
        asyncio.run(loop_bridge.run_on_loop(blocks))
    with pytest.raises(RuntimeError, match="run_on_loop"):
        loop_bridge.await_io(asyncio.get_event_loop_policy().new_event_loop().create_future())


def test_calls_interleave_on_one_loop_and_cancel_cleanly() -> None:
    order: list[str] = []

    def work(name: str, delay: float) -> str:
        order.append(f"{name} start")
        loop_bridge.await_io(asyncio.sleep(delay))
        order.append(f"{name} end")
        return name

    async def main() -> None:
        assert await asyncio.gather(loop_bridge.run_on_loop(work, "slow", 0.05),
                                    loop_bridge.run_on_loop(work, "fast", 0.0)) == ["slow", "fast"]
        assert order == ["slow start", "fast start", "fast end", "slow end"]
        task = asyncio.ensure_future(loop_bridge.run_on_loop(work, "cancelled", 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert "cancelled end" not in order


def _channel(url: str, *, timeout: float = 5.0) -> LoopChannel:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = redis.connection.parse_url(url)
        return await asyncio.open_connection(parts.get("host", "127.0.0.1"), parts.get("port", 6379))

    return LoopChannel(connect, timeout=timeout, errors=(redis.ConnectionError, redis.TimeoutError))


def _get(name: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n%s" % bulk(name)


def test_concurrent_requests_get_their_own_replies() -> None:
    prefix = f"loop-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    values = {f"{prefix}:{i}".encode(): os.urandom(random.randrange(0, 3000)) for i in range(300)}
    client.mset(values)
    names = list(values)

    async def main() -> None:
        channel = _channel(REDIS_URL)
        try:
            async def one(count: int) -> None:
                picked = random.sample(names, count)
                replies = await channel.request([_get(name) for name in picked], count)
                assert replies == [values[name] for name in picked]

            await asyncio.gather(*(one(random.randrange(1, 20)) for _ in range(500)))
            # an error reply is returned in its place, not raised; the next request still lines up
            wrong = await channel.request([b"*2\r\n$5\r\nLPUSH\r\n%s" % bulk(b"x"), _get(names[0])], 2)
            assert isinstance(wrong[0], Exception) and "wrong number of arguments" in str(wrong[0]).lower()
            assert wrong[1] == values[names[0]]
            assert channel.waiting == 0
        finally:
            channel.close()

    try:
        asyncio.run(main())
    finally:
        client.delete(*names)
        client.close()


def test_a_redis_that_stops_answering_fails_waiting_requests_after_the_timeout(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    assert server.process is not None
    try:
        client = server.client()
        client.set(b"k", b"v")
        client.close()

        async def main() -> None:
            channel = _channel(server.url, timeout=0.5)
            try:
                assert await channel.request([_get(b"k")], 1) == [b"v"]
                server.process.send_signal(signal.SIGSTOP)      # alive, but answers nothing
                ticks = 0

                async def tick() -> None:                        # the loop stays free meanwhile
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)
                        ticks += 1

                ticking = asyncio.ensure_future(tick())
                started = time.monotonic()
                results = await asyncio.gather(*(channel.request([_get(b"k")], 1) for _ in range(20)),
                                               return_exceptions=True)
                waited = time.monotonic() - started
                ticking.cancel()
                assert all(isinstance(r, redis.TimeoutError) for r in results), results
                assert 0.4 < waited < 3.0
                assert ticks >= 10
                assert channel.waiting == 0
                server.process.send_signal(signal.SIGCONT)
                assert await channel.request([_get(b"k")], 1) == [b"v"]     # a new connection
            finally:
                server.process.send_signal(signal.SIGCONT)
                channel.close()

        asyncio.run(main())
    finally:
        server.kill()


def test_a_dropped_connection_fails_its_requests_and_is_opened_again() -> None:
    prefix = f"loop-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:a", b"1")

    async def main() -> None:
        channel = _channel(REDIS_URL)
        try:
            name = f"{prefix}-conn"
            setname = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n%s" % bulk(name.encode())
            assert await channel.request([setname, _get(f"{prefix}:a".encode())], 2) == [b"OK", b"1"]
            waiting = asyncio.ensure_future(channel.request([b"*3\r\n$5\r\nBLPOP\r\n%s$1\r\n5\r\n"
                                                             % bulk(f"{prefix}:never".encode())], 1))
            await asyncio.sleep(0.1)
            killed = client.client_kill_filter(_type="normal", skipme=True, **{"_id": _client_id(client, name)})
            assert killed == 1
            with pytest.raises(redis.ConnectionError, match="closed the connection"):
                await waiting
            assert await channel.request([_get(f"{prefix}:a".encode())], 1) == [b"1"]
        finally:
            channel.close()

    try:
        asyncio.run(main())
    finally:
        client.delete(f"{prefix}:a")
        client.close()


def _client_id(client: redis.Redis, name: str) -> Any:
    return next(c["id"] for c in client.client_list() if c.get("name") == name)


def test_a_connection_that_cannot_be_opened_is_a_connection_error() -> None:
    from redis_servers import free_port

    async def main() -> None:
        channel = _channel(f"redis://127.0.0.1:{free_port()}/0", timeout=2.0)
        results = await asyncio.gather(*(channel.request([_get(b"k")], 1) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, redis.ConnectionError) and "cannot connect" in str(r) for r in results), results

    asyncio.run(main())


def test_the_store_reads_on_the_loop_with_its_url_settings(tmp_path: Path) -> None:
    """The store's loop connection authenticates and selects the URL's database, as its threads' do."""
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    try:
        admin = server.client()
        admin.config_set("requirepass", "s3cret")
        admin.close()
        table = OnlineTable(store="s", feature_set="fs", version="1", materialization_version=1,
                            keys=(("acct", FeatureType.STRING),), features=(("x", FeatureType.DOUBLE),), ttl=None)
        now = datetime(2024, 1, 10, tzinfo=UTC)
        rows = pa.table({"acct": ["A", "B"], EVENT_TIMESTAMP: pa.array([now, now], pa.timestamp("us", tz="UTC")),
                         "x": [1.5, 2.5]})
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        store = RedisOnlineStore(url, prefix="p", socket_timeout=2.0)
        assert store.write(table, rows, now=now) == 2
        assert store.read(table, [("B",)], now=now) == [{"x": 2.5}]     # off the loop: finds the server

        async def main() -> list[Any]:
            try:
                return await loop_bridge.run_on_loop(lambda: store.read(table, [("A",), ("C",), ("B",)], now=now))
            finally:
                store.close_loop_channels()

        assert asyncio.run(main()) == [{"x": 1.5}, None, {"x": 2.5}]
        elsewhere = RedisOnlineStore(f"redis://:s3cret@127.0.0.1:{server.port}/0", prefix="p", socket_timeout=2.0)
        assert elsewhere.read(table, [("A",)], now=now) == [None]        # database 0 holds nothing
        elsewhere.close()
        store.close()
    finally:
        server.kill()


def test_a_timed_cache_reloads_past_half_its_time_on_the_loop_and_never_serves_older_values() -> None:
    import threading

    cache: loop_bridge.TimedCache[str, int] = loop_bridge.TimedCache(1.0)
    loads: list[str] = []
    release = threading.Event()

    def load(value: int, *, wait: bool = False) -> Any:
        def run() -> int:
            loads.append(threading.current_thread().name)
            if wait:
                assert release.wait(10)
            return value
        return run

    def on_loop(value: int, **options: bool) -> int:
        return asyncio.run(loop_bridge.run_on_loop(cache.get, "k", load(value, **options)))

    assert cache.get("k", load(1)) == 1
    assert cache.get("k", load(2)) == 1                       # fresh: remembered
    time.sleep(1.05)
    assert cache.get("k", load(3)) == 3                       # too old, off the loop: loaded here
    assert on_loop(99) == 3                                   # under half its time: no reload
    time.sleep(0.55)
    assert [on_loop(4, wait=True) for _ in range(5)] == [3] * 5   # past half: served, one reload under way
    deadline = time.monotonic() + 10
    while len(loads) < 3 and time.monotonic() < deadline:     # the reload's thread starts
        time.sleep(0.01)
    assert len(loads) == 3 and loads[:2] == ["MainThread"] * 2 and loads[2].startswith("cache-reload")
    release.set()
    time.sleep(0.1)
    assert cache.get("k", load(99)) == 4                      # the reload's value
    assert len(loads) == 3
    time.sleep(1.05)                                          # too old even on the loop: loaded by the caller
    with pytest.raises(loop_bridge.WouldBlock):
        asyncio.run(loop_bridge.run_on_loop(cache.get, "k", lambda: loop_bridge.blocking_io()))


def test_a_timed_cache_forgets_what_was_discarded_during_a_reload_and_what_failed_to_reload() -> None:
    import threading

    cache: loop_bridge.TimedCache[str, str] = loop_bridge.TimedCache(1.0)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(10)
        return "outdated"

    def fails() -> str:
        raise RuntimeError("registry down")

    def would_block() -> str:
        loop_bridge.blocking_io()
        return "loaded on the loop"

    cache.get("token", lambda: "valid")
    time.sleep(0.55)
    assert asyncio.run(loop_bridge.run_on_loop(cache.get, "token", slow)) == "valid"
    assert started.wait(10)
    cache.discard("token")                                    # revoked while the reload runs
    release.set()
    time.sleep(0.1)
    with pytest.raises(loop_bridge.WouldBlock):               # nothing remembered: the loop must not load it
        asyncio.run(loop_bridge.run_on_loop(cache.get, "token", would_block))
    assert cache.get("token", lambda: "fresh") == "fresh"

    time.sleep(0.55)
    assert asyncio.run(loop_bridge.run_on_loop(cache.get, "token", fails)) == "fresh"   # reload fails...
    deadline = time.monotonic() + 10
    while True:                                               # ... and the value is dropped
        try:
            asyncio.run(loop_bridge.run_on_loop(cache.get, "token", would_block))
        except loop_bridge.WouldBlock:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    off: loop_bridge.TimedCache[str, int] = loop_bridge.TimedCache(0)
    counter = iter(range(10))
    assert [off.get("k", lambda: next(counter)) for _ in range(3)] == [0, 1, 2]   # 0 s: nothing remembered


def test_the_store_reads_on_the_loop_again_after_redis_restarts(tmp_path: Path) -> None:
    """A loop connection found dead (Redis restarted since its last use) is replaced once, as the threads'
    connections are: the lookup is answered, not failed."""
    server = RedisServer(tmp_path / "redis")                   # persistent: the rows survive the restart
    server.start()
    try:
        table = OnlineTable(store="s", feature_set="fs", version="1", materialization_version=1,
                            keys=(("acct", FeatureType.STRING),), features=(("x", FeatureType.DOUBLE),), ttl=None)
        now = datetime(2024, 1, 10, tzinfo=UTC)
        rows = pa.table({"acct": ["A"], EVENT_TIMESTAMP: pa.array([now], pa.timestamp("us", tz="UTC")), "x": [1.5]})
        store = RedisOnlineStore(server.url, prefix="p", socket_timeout=2.0)
        assert store.write(table, rows, now=now) == 1
        loop = asyncio.new_event_loop()

        def read() -> Any:
            return loop.run_until_complete(loop_bridge.run_on_loop(lambda: store.read(table, [("A",)], now=now)))

        try:
            assert read() == [{"x": 1.5}]
            server.kill()
            server.start()
            assert read() == [{"x": 1.5}]
            server.kill()
            with pytest.raises(OnlineStoreError, match="cannot reach Redis"):
                read()
        finally:
            loop.run_until_complete(loop_bridge.run_on_loop(store.close_loop_channels))
            loop.close()
            store.close()
    finally:
        server.kill()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_reply_that_arrived_while_the_loop_was_busy_is_not_a_timeout(loop_kind: str) -> None:
    """The loop blocked longer than the timeout while Redis answered: the reply is there, so the lookup gets
    it (both loops; uvloop runs due timers before it reads the sockets)."""
    prefix = f"loop-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{prefix}:k", b"v")

    async def main() -> None:
        channel = _channel(REDIS_URL, timeout=0.2)
        try:
            assert await channel.request([_get(f"{prefix}:k".encode())], 1) == [b"v"]
            asking = asyncio.ensure_future(channel.request([_get(f"{prefix}:k".encode())], 1))
            await asyncio.sleep(0)                           # the request is queued, its write scheduled
            asyncio.get_running_loop().call_soon(time.sleep, 0.5)   # right after the write: holds the loop
            assert await asking == [b"v"]
        finally:
            channel.close()

    try:
        if loop_kind == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    finally:
        client.delete(f"{prefix}:k")
        client.close()
