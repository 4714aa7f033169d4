"""The Redis online store: one packed binary string per entity key, written through a compare-and-set script.

Layout: the string ``{prefix}:{store}:{feature set}:{version}:{materialization version}:{entity key}``
(parts escaped, see ``encoding``) holds one record, all little-endian:

- event time, create time and expiry: three int64 µs (all the write script compares and restores);
- a null bitmap: one bit per feature in table order (bit ``j % 8`` of byte ``j // 8``; 1 = present);
- the fixed-width values (integer/long/datetime int64, float/double float64, boolean one byte) in table
  order, zeros where null;
- one int32 byte length per variable-width feature (string, binary, float_vector), then their bytes.

Everything before the variable bytes has one width per table, so many records decode at once in numpy.
The string expires (``PXAT``) at event time + ttl, moved onto the server's clock by the offset between
the injected ``now`` and the server time; reads also compare the stored expiry with the injected
``now``, so expiry is exact and testable with fixed times.

Writes are the hot path: rows are packed by numpy/pyarrow into their records and sent as RESP that is
built here (not by redis-py, whose per-argument Python work would dominate), in pipelines of thousands of
rows whose replies hiredis parses straight off the socket. A key that does not exist yet takes a plain
``SET NX PXAT`` (nothing to compare with); the keys that exist go through a compare-and-set script, a few
hundred per ``EVALSHA``, that swaps the new record in with ``SET ... GET`` and puts the old one back in
the rare case it is newer. Reads are a plain ``GET`` (one key) or ``MGET`` (many keys, RESP built here).

Needs Redis >= 6.2 (``PXAT``, ``SET ... GET``).

**Redis Cluster** is detected by itself (``INFO cluster`` on the URL's node, then the slot map). Keys are
spread over the primaries by hash slot: every write pipeline and every multi-key lookup is cut per node,
script calls hold keys of one slot only, and multi-key lookups are pipelined ``GET``s (``MGET`` may not
cross slots). A ``MOVED``/``ASK``/``TRYAGAIN`` reply (slots moving between nodes, a failover) makes the
store re-read the slot map and send those rows again, a few times with a short pause; writes are safe to
repeat (a row never replaces a newer one).

Module map: ``redis_records`` packs and unpacks records, ``redis_wire`` frames commands and parses replies
off the socket, this module routes keys to nodes and holds the write script.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa

from gristmill import loop_bridge
from gristmill.errors import install_hint
from gristmill.stores.online.encoding import OnlineStoreError, prepare_rows, to_micros
from gristmill.stores.online.redis_records import RecordLayout
from gristmill.stores.online.redis_wire import (
    Batch,
    Channel,
    LoopChannel,
    bulk,
    hiredis_reader,
    replies_of,
    script_calls,
)

if TYPE_CHECKING:
    from gristmill.stores.online.base import OnlineTable, StoredRow

__all__ = ["RedisOnlineStore"]

# The compare-and-set for keys that may exist. KEYS: entity keys. ARGV: ttl flag, the offset from the injected
# clock to the server's (ms), the records (one per key), then with a ttl each key's expiry on the server's
# clock (ms). One SET ... GET per key swaps the new record in and returns the old one; in the rare case the
# old record is newer it goes straight back (with its own expiry), inside the same atomic script, so no
# reader ever sees the older row. Times are compared exactly as (high int32, low uint32) halves: Lua numbers
# are doubles. A key holding another type (an unreadable layout) is replaced.
WRITE_SCRIPT = r"""
local has_ttl = ARGV[1] == '1'
local offset = tonumber(ARGV[2])
local n = #KEYS
local written = 0
for k = 1, n do
  local key = KEYS[k]
  local record = ARGV[2 + k]
  local at = has_ttl and ARGV[2 + n + k]
  local old
  if at then
    old = redis.pcall('SET', key, record, 'GET', 'PXAT', at)
  else
    old = redis.pcall('SET', key, record, 'GET')
  end
  local newer = true
  if type(old) == 'table' and old.err then
    if at then redis.call('SET', key, record, 'PXAT', at) else redis.call('SET', key, record) end
  elseif type(old) == 'string' and #old >= 24 then
    local el, eh, cl, ch = struct.unpack('<I4i4I4i4', record)
    local pel, peh, pcl, pch = struct.unpack('<I4i4I4i4', old)
    newer = eh > peh or (eh == peh and (el > pel or (el == pel and (ch > pch or (ch == pch and cl >= pcl)))))
    if not newer then
      if at then
        local xl, xh = struct.unpack('<I4i4', string.sub(old, 17, 24))
        local ms = math.ceil((xh * 4294967296 + xl) / 1000) + offset
        redis.call('SET', key, old, 'PXAT', string.format('%.0f', ms))
      else
        redis.call('SET', key, old)
      end
    end
  end
  if newer then written = written + 1 end
end
return written
"""

def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(f"RedisOnlineStore needs the redis client: {install_hint('redis')}") from None
    return redis


def _reopened(url: str, prefix: str, socket_timeout: float) -> RedisOnlineStore:
    return RedisOnlineStore(url, prefix=prefix, socket_timeout=socket_timeout)


def _streams_to_take() -> bool:
    """Whether redis-py's asyncio connections keep their streams where ``_open_stream`` takes them from
    (redis-py 4.2 and later); else lookups on the event loop are not used."""
    from redis.asyncio.connection import AbstractConnection

    return hasattr(AbstractConnection, "_reader") and hasattr(AbstractConnection, "_writer")


def _redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


#: replies that mean "not here (any more), ask again": a cluster moving slots, or failing over
_REDIRECTS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def _redirected(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith(_REDIRECTS)


def _asked(reply: Any) -> str | None:
    """The target ``host:port`` of an ``ASK`` reply (a key of a slot being migrated), else None."""
    if isinstance(reply, Exception) and str(reply).startswith("ASK "):
        return str(reply).split()[-1]
    return None


_ASKING = b"*1\r\n$6\r\nASKING\r\n"


@dataclass(eq=False)
class _Node:
    """One server the store talks to: the standalone server, or one primary of a Redis Cluster."""

    name: str
    client: Any                                  # redis.Redis
    script_loaded: bool = False


class _Route:
    """Which node holds which key: everything on one server, or by hash slot on a cluster's primaries.

    The slot map is one immutable snapshot, replaced whole under a lock, so lookup threads never see half of
    an old map and half of a new one."""

    def __init__(self, client: Any, cluster: Any | None) -> None:
        self.cluster = cluster
        self._single = _Node("server", client) if cluster is None else None
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()
        # hash slot -> index into the node list
        self._map: tuple[np.ndarray, list[_Node]] = (np.zeros(0, dtype=np.int32), [])
        if cluster is not None:
            self.refresh(reload=False)

    @property
    def snapshot(self) -> object:
        """The slot map in use now (compare with ``refresh(seen=...)``)."""
        return self._map

    def refresh(self, *, reload: bool = True, seen: object | None = None) -> None:
        """Re-read the cluster's slot map (after a MOVED reply: slots moved between nodes). With ``seen``, a map
        another thread re-read since that snapshot is good enough: many threads meeting MOVED at once
        re-read it once."""
        if self.cluster is None:
            return
        with self._lock:
            if seen is not None and self._map is not seen:
                return
            manager = self.cluster.nodes_manager
            if reload:
                manager.initialize()
            owner = np.full(16384, -1, dtype=np.int32)
            by_index: list[_Node] = []
            index: dict[str, int] = {}
            for slot, holders in manager.slots_cache.items():
                primary = holders[0]
                if primary.name not in index:
                    index[primary.name] = len(by_index)
                    by_index.append(self._node(primary))
                owner[slot] = index[primary.name]
            self._map = (owner, by_index)

    def _node(self, cluster_node: Any) -> _Node:
        node = self._nodes.get(cluster_node.name)
        if node is None:
            node = self._nodes[cluster_node.name] = _Node(cluster_node.name,
                                                          self.cluster.get_redis_connection(cluster_node))
        return node

    def node_at(self, address: str) -> _Node:
        """The node at ``host:port`` (an ``ASK`` reply's target, possibly not in the slot map yet)."""
        if self._single is not None:
            return self._single
        with self._lock:
            node = self._nodes.get(address)
            if node is None:
                from redis.cluster import ClusterNode

                host, _, port = address.rpartition(":")
                node = self._node(ClusterNode(host, int(port), server_type="primary"))
            return node

    def nodes(self) -> list[_Node]:
        return [self._single] if self._single is not None else list(self._map[1])

    def slots(self, names: Iterable[bytes]) -> np.ndarray:
        from redis.crc import key_slot

        return np.fromiter((key_slot(name) for name in names), dtype=np.int32)

    @staticmethod
    def _owners(owner: np.ndarray, slots: np.ndarray) -> np.ndarray:
        owners = owner[slots]
        if (owners < 0).any():
            raise OnlineStoreError(f"Redis Cluster: hash slot {int(slots[owners < 0][0])} is served by no node "
                                   "(is the cluster healthy? `redis-cli --cluster check`)")
        return owners

    def split(self, batch: Batch) -> list[tuple[_Node, Batch]]:
        """``batch`` cut into one batch per node that holds some of its keys."""
        if self._single is not None:
            return [(self._single, batch)]
        owner, by_index = self._map
        batch = batch.with_slots(self.slots(batch.names.cast(pa.binary()).to_pylist()))
        owners = self._owners(owner, batch.slots)                              # type: ignore[arg-type]
        return [(by_index[i], batch.take(np.flatnonzero(owners == i))) for i in np.unique(owners).tolist()]

    def group(self, names: list[bytes]) -> list[tuple[_Node, list[int]]]:
        """Positions of ``names`` per node that holds them."""
        if self._single is not None:
            return [(self._single, list(range(len(names))))]
        owner, by_index = self._map
        owners = self._owners(owner, self.slots(names)).tolist()
        groups: dict[int, list[int]] = {}
        for position, index in enumerate(owners):
            groups.setdefault(index, []).append(position)
        return [(by_index[i], positions) for i, positions in groups.items()]


@dataclass
class _Sent:
    """Commands sent to a node whose replies are still to be read."""

    batch: Batch
    set_nx: bool                        # SET NX commands (one reply per row), else script calls
    commands: list[Any]
    rows: list[np.ndarray] = field(default_factory=list)   # script calls: the batch positions of each
    retried: bool = False

    @property
    def replies(self) -> int:
        return len(self.batch) if self.set_nx else len(self.commands)


class _NodeWrite:
    """One write's rows going to one node, pipelined: the replies of a pipeline are read after the next one
    is sent, so the server works meanwhile. Keys that do not exist take ``SET NX``; keys that do go through
    the compare-and-set script (directly, once most keys of a pipeline turn out to exist)."""

    def __init__(self, store: RedisOnlineStore, node: _Node, offset_ms: int) -> None:
        self.store = store
        self.node = node
        self.offset_ms = offset_ms
        self.connection = store._acquire(node)
        self.read = replies_of(self.connection)
        self.sent: deque[_Sent] = deque()
        self.new_keys = True
        self.written = 0
        self.redirected: list[Batch] = []           # rows a cluster sent elsewhere: to route again
        self.asked: list[tuple[str, Batch]] = []    # rows of migrating slots: (target node, rows), ASKING there

    def send(self, batch: Batch) -> None:
        self._send(batch, set_nx=self.new_keys)
        while len(self.sent) > 1:
            self._settle(self.sent.popleft())

    def finish(self) -> None:
        while self.sent:
            self._settle(self.sent.popleft())

    def _send(self, batch: Batch, *, set_nx: bool, retried: bool = False) -> None:
        if set_nx:
            sent = _Sent(batch, True, [batch.set_nx()])
        else:
            calls = script_calls(batch, sha=self.store._write_sha, offset_ms=self.offset_ms,
                                 rows_per_call=self.store.rows_per_call)
            sent = _Sent(batch, False, [c for c, _ in calls], [r for _, r in calls], retried=retried)
        self.connection.send_packed_command(sent.commands, check_health=False)
        self.sent.append(sent)

    def _settle(self, sent: _Sent) -> None:
        answers = self.read(sent.replies)
        if sent.set_nx:
            redirected = [i for i, a in enumerate(answers) if _redirected(a)]
            failure = next((a for a in answers if isinstance(a, Exception) and not _redirected(a)), None)
            if failure is not None:
                raise OnlineStoreError(f"Redis at {self.store._where(self.node)} refused a write: {failure}")
            existing = [i for i, a in enumerate(answers) if a is None]
            self._keep_redirected(sent.batch, [(i, answers[i]) for i in redirected])
            if existing:
                self._send(sent.batch.take(np.array(existing)), set_nx=False)
            self.written += len(answers) - len(existing) - len(redirected)
            self.new_keys = self.new_keys and 2 * len(existing) < len(answers)
            return
        lost: list[int] = []
        for i, answer in enumerate(answers):
            if not isinstance(answer, Exception):
                self.written += answer
            elif str(answer).startswith("NOSCRIPT"):      # nothing of that call ran
                lost.append(i)
            elif _redirected(answer):
                self._keep_redirected(sent.batch, [(int(r), answer) for r in sent.rows[i]])
            else:
                raise OnlineStoreError(f"Redis at {self.store._where(self.node)} refused a write: {answer}")
        if lost:         # the server lost the script (restart, SCRIPT FLUSH): load it, send those calls again
            if sent.retried:
                raise OnlineStoreError(f"Redis at {self.store._where(self.node)} keeps losing the write script")
            self.node.script_loaded = False
            self.store._load_script(self.node)
            self._send(sent.batch.take(np.concatenate([sent.rows[i] for i in lost])), set_nx=False, retried=True)

    def _keep_redirected(self, batch: Batch, replies: list[tuple[int, Any]]) -> None:
        """Rows answered MOVED/TRYAGAIN/CLUSTERDOWN go to ``redirected``, rows answered ASK to ``asked``."""
        by_target: dict[str, list[int]] = {}
        moved = []
        for position, reply in replies:
            target = _asked(reply)
            if target is None:
                moved.append(position)
            else:
                by_target.setdefault(target, []).append(position)
        if moved:
            self.redirected.append(batch.take(np.array(moved)))
        self.asked.extend((target, batch.take(np.array(rows))) for target, rows in by_target.items())

    def close(self, *, failed: bool) -> None:
        self.store._release(self.node, self.connection, failed=failed)


class RedisOnlineStore:
    """Online store in Redis, standalone or a Redis Cluster (SPEC §3 "Materialization"); see the module
    docstring for the layout. A cluster is detected by itself (``INFO cluster``): give any node's URL.

    Example::

        store = RedisOnlineStore("redis://127.0.0.1:6379/0", prefix="gristmill")
        store.write(table, rows, now=datetime.now(UTC))
        store.read(table, [("A",)], now=datetime.now(UTC))   # [{'amount': 5.0}]
    """

    #: rows per EVALSHA call (each call blocks the server for about this many × 2-4 µs)
    rows_per_call = 500
    #: rows encoded per pipeline
    rows_per_pipeline = 20_000
    #: keys per MGET
    keys_per_read = 1000
    #: how often a write sent elsewhere by a cluster (slots moving, a failover) is routed again, with back-off
    #: (about 4.5 s in all); ``ASK`` replies (a slot being migrated) are followed at once
    redirect_attempts = 8
    #: the same for lookups, which should rather fail fast (about 0.3 s in all)
    read_redirect_attempts = 4
    #: Redis deletes a row when it expires
    keeps_expired_rows = False
    #: Spark executors write to it in parallel, each with its own connection (the store pickles as its settings)
    executor_writes = True
    #: lookups may run on an event loop (``loop_bridge``): they wait for Redis without blocking it
    loop_reads = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "gristmill",
                 socket_timeout: float = 30.0) -> None:
        redis = _import_redis()
        self.url = url
        self.prefix = prefix
        self._socket_timeout = socket_timeout
        self._errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._loop_errors = (redis.ConnectionError, redis.TimeoutError)   # a loop channel's: closed, too late
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=5.0)
        self._write_sha = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()
        self._layouts: dict[OnlineTable, RecordLayout] = {}
        self._route_: _Route | None = None
        self._route_lock = threading.Lock()
        self._local = threading.local()           # per thread: a connection per node for lookups (_request)
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()   # a thread's go when the thread goes
        self._channels_lock = threading.Lock()
        # per event loop: a pipelined connection per node for lookups run on that loop (_request)
        self._loop_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, LoopChannel]] = \
            weakref.WeakKeyDictionary()
        self._last_loop: tuple[asyncio.AbstractEventLoop, dict[str, LoopChannel]] | None = None

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its settings (for Spark executors): the copy opens its own connections."""
        return (_reopened, (self.url, self.prefix, self._socket_timeout))

    @property
    def is_cluster(self) -> bool:
        """Whether the server at ``url`` is part of a Redis Cluster (asks it on first use)."""
        with self._errors_as_store_errors():
            return self._route().cluster is not None

    # --- protocol -----------------------------------------------------------------------------------------

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows``: the newer (event time, create time) wins per key; expired rows are skipped."""
        layout = self._layout(table)
        now_micros = to_micros(now)
        prepared = prepare_rows(table, rows, now_micros=now_micros)
        if not len(prepared):
            return 0
        with self._errors_as_store_errors():
            route = self._route()
            seconds, micros = route.nodes()[0].client.time()
            offset_ms = (seconds * 1_000_000 + micros - now_micros) // 1000
            batches: Iterable[Batch] = (
                Batch.of(layout, table, prepared, start, min(start + self.rows_per_pipeline, len(prepared)), offset_ms)
                for start in range(0, len(prepared), self.rows_per_pipeline))
            written = 0
            for attempt in range(self.redirect_attempts + 1):
                seen = route.snapshot
                done, redirected, asked = self._write_batches(route, batches, offset_ms)
                written += done
                if asked:                             # keys of slots being migrated: write them where Redis said
                    done, more = self._write_asked(route, asked, offset_ms)
                    written += done
                    redirected += more
                if not redirected:
                    return written
                if attempt == self.redirect_attempts:
                    break
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
                route.refresh(seen=seen)
                batches = redirected
            raise OnlineStoreError(f"Redis Cluster at {_redacted(self.url)} kept redirecting writes (slots moving "
                                   "between nodes?); the rows not written are safe to write again: retry the job")

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]], *, now: datetime
             ) -> list[dict[str, Any] | None]:
        """The feature values of each key (request order), None where unknown, expired or with a null part."""
        layout = self._layout(table)
        now_micros = to_micros(now)
        names = [layout.key(tuple(key)) for key in keys]
        found = [name.encode() for name in names if name is not None]
        results: list[dict[str, Any] | None]
        with self._errors_as_store_errors():
            if not found:
                results = []
            elif len(found) == 1:
                results = [layout.decode_one(self._records(found)[0], now_micros)]
            else:
                results = layout.decode_many(self._records(found), now_micros)
        hits = iter(results)
        return [None if name is None else next(hits) for name in names]

    def read_stored(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]]) -> list[StoredRow | None]:
        """The stored record of each key (request order), whether or not it has expired at the injected clock;
        None where unknown. Redis deletes a key when it expires (on its own clock), so a row that expired
        before the server's current time is gone: ``keeps_expired_rows`` is False."""
        layout = self._layout(table)
        names = [layout.key(tuple(key)) for key in keys]
        found = [name.encode() for name in names if name is not None]
        with self._errors_as_store_errors():
            records = self._records(found) if found else []
        hits = iter(records)
        return [None if name is None else layout.decode_stored(next(hits)) for name in names]

    def drop(self, table: OnlineTable) -> None:
        """Delete every key of ``table`` (SCAN + UNLINK over its key pattern, on every node)."""
        pattern = _glob_escape(self._layout(table).key_prefix) + "*"
        with self._errors_as_store_errors():
            route = self._route()
            for node in route.nodes():
                batch: list[bytes] = []
                for name in node.client.scan_iter(match=pattern, count=1000):
                    batch.append(name)
                    if len(batch) >= 1000:
                        self._unlink(node, batch, cluster=route.cluster is not None)
                        batch = []
                if batch:
                    self._unlink(node, batch, cluster=route.cluster is not None)

    def count(self, table: OnlineTable) -> int:
        """How many keys ``table`` holds (SCAN over its key pattern on every node; Redis drops expired ones)."""
        pattern = _glob_escape(self._layout(table).key_prefix) + "*"
        with self._errors_as_store_errors():
            return sum(1 for node in self._route().nodes()
                       for _ in node.client.scan_iter(match=pattern, count=1000))

    def close(self) -> None:
        with self._channels_lock:
            channels, self._channels = list(self._channels), weakref.WeakSet()
        for channel in channels:
            channel.close()
        if self._route_ is not None and self._route_.cluster is not None:
            self._route_.cluster.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({_redacted(self.url)!r}, prefix={self.prefix!r})"

    # --- internals ----------------------------------------------------------------------------------------

    def _layout(self, table: OnlineTable) -> RecordLayout:
        layout = self._layouts.get(table)
        if layout is None:
            layout = self._layouts[table] = RecordLayout(table, self.prefix)
        return layout

    def _route(self) -> _Route:
        """The routing of keys to nodes; on first use asks the server whether it is part of a cluster."""
        route = self._route_
        if route is None:
            loop_bridge.blocking_io()              # asks the server: not on an event loop
            with self._route_lock:
                route = self._route_
                if route is None:
                    cluster = None
                    if self._client.info("cluster").get("cluster_enabled"):
                        from redis.cluster import RedisCluster

                        cluster = RedisCluster.from_url(self.url, socket_timeout=self._socket_timeout,
                                                        socket_connect_timeout=5.0)
                    route = self._route_ = _Route(self._client, cluster)
        return route

    def _loop_channel(self, node: _Node) -> LoopChannel:
        """The running event loop's connection to ``node`` (``WouldBlock`` where hiredis, which parses the
        replies, is missing)."""
        loop = asyncio.get_running_loop()
        last = self._last_loop
        if last is not None and last[0] is loop:          # the common case: one loop per server process
            channels = last[1]
        else:
            channels = self._loop_channels.get(loop)
            if channels is None:
                if hiredis_reader() is None or not _streams_to_take():
                    raise loop_bridge.WouldBlock
                channels = self._loop_channels[loop] = {}
            self._last_loop = (loop, channels)
        channel = channels.get(node.name)
        if channel is None:
            channel = channels[node.name] = LoopChannel(lambda: self._open_stream(node), timeout=self._socket_timeout,
                                                        errors=self._loop_errors)
        return channel

    async def _open_stream(self, node: _Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to ``node`` (authenticated, database selected, TLS as the URL says), as streams."""
        from redis.asyncio import ConnectionPool

        pool = ConnectionPool.from_url(self.url, socket_connect_timeout=5.0)
        if node.name != "server":                  # a cluster primary: the URL's settings, the node's address
            host, _, port = node.name.rpartition(":")
            pool.connection_kwargs.update(host=host, port=int(port))
        connection = pool.make_connection()
        await connection.connect()
        reader, writer = connection._reader, connection._writer
        connection._reader = connection._writer = None    # the streams are the channel's now
        if reader is None or writer is None:
            raise ConnectionError("no stream after connecting")
        return reader, writer

    def close_loop_channels(self) -> None:
        """Close the running event loop's lookup connections (at server shutdown)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._last_loop is not None and self._last_loop[0] is loop:
            self._last_loop = None
        for channel in self._loop_channels.pop(loop, {}).values():
            channel.close()

    def _where(self, node: _Node) -> str:
        return _redacted(self.url) if node.name == "server" else f"{node.name} (cluster of {_redacted(self.url)})"

    def _load_script(self, node: _Node) -> None:
        if not node.script_loaded:
            node.client.script_load(WRITE_SCRIPT)
            node.script_loaded = True

    @contextmanager
    def _errors_as_store_errors(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            detail = str(exc).rstrip(".")
            raise OnlineStoreError(f"cannot reach Redis at {_redacted(self.url)}: {detail}. Is Redis running?"
                                   ) from exc

    def _acquire(self, node: _Node) -> Any:
        """A pooled connection of ``node`` for raw pipelining."""
        pool = node.client.connection_pool
        try:
            return pool.get_connection()
        except TypeError:                          # redis-py < 5.3 wants a command name
            return pool.get_connection("EVALSHA")

    def _release(self, node: _Node, connection: Any, *, failed: bool) -> None:
        if failed:                                 # replies may be left unread: never reuse it
            connection.disconnect()
        node.client.connection_pool.release(connection)

    def _write_batches(self, route: _Route, batches: Iterable[Batch], offset_ms: int
                       ) -> tuple[int, list[Batch], list[tuple[str, Batch]]]:
        """Write ``batches``, each split by node; returns (rows written, rows a cluster redirected, rows it
        asked to write on another node)."""
        writers: dict[str, _NodeWrite] = {}
        failed = True
        try:
            for batch in batches:
                for node, part in route.split(batch):
                    writer = writers.get(node.name)
                    if writer is None:
                        self._load_script(node)
                        writer = writers[node.name] = _NodeWrite(self, node, offset_ms)
                    writer.send(part)
            for writer in writers.values():
                writer.finish()
            failed = False
        finally:
            for writer in writers.values():
                writer.close(failed=failed)
        return (sum(w.written for w in writers.values()),
                [batch for w in writers.values() for batch in w.redirected],
                [asked for w in writers.values() for asked in w.asked])

    def _write_asked(self, route: _Route, asked: list[tuple[str, Batch]], offset_ms: int) -> tuple[int, list[Batch]]:
        """Rows of migrating slots, written on the node an ``ASK`` named: ``ASKING`` then the compare-and-set
        script, one row per call (keys of one slot; a handful of rows). Returns (written, rows to route again)."""
        written = 0
        again: list[Batch] = []
        for target, batch in asked:
            node = route.node_at(target)
            self._load_script(node)
            calls = script_calls(batch.with_slots(None), sha=self._write_sha, offset_ms=offset_ms,  # type: ignore[arg-type]
                                 rows_per_call=1)
            connection = self._acquire(node)
            failed = True
            try:
                connection.send_packed_command([part for command, _ in calls for part in (_ASKING, command)],
                                               check_health=False)
                answers = replies_of(connection)(2 * len(calls))[1::2]
                failed = False
            finally:
                self._release(node, connection, failed=failed)
            for (_, rows), answer in zip(calls, answers, strict=True):
                if not isinstance(answer, Exception):
                    written += answer
                elif _redirected(answer):
                    again.append(batch.take(rows))
                else:
                    raise OnlineStoreError(f"Redis at {self._where(node)} refused a write: {answer}")
        return written, again

    def _unlink(self, node: _Node, names: list[bytes], *, cluster: bool) -> None:
        if not cluster:
            node.client.unlink(*names)
            return
        pipe = node.client.pipeline(transaction=False)    # keys of many slots: one UNLINK each
        for name in names:
            pipe.unlink(name)
        pipe.execute()

    def _records(self, names: list[bytes]) -> list[bytes | None]:
        """The stored records of ``names`` (None where missing or of another type), from whichever nodes."""
        out: list[bytes | None] = [None] * len(names)
        todo = list(range(len(names)))
        route = self._route()
        for attempt in range(self.read_redirect_attempts + 1):
            seen = route.snapshot
            moved: list[int] = []
            asked: dict[str, list[int]] = {}
            for node, positions in route.group([names[i] for i in todo]):
                wanted = [todo[p] for p in positions]
                for position, reply in zip(wanted, self._fetch(node, [names[i] for i in wanted],
                                                               cluster=route.cluster is not None), strict=True):
                    target = _asked(reply)
                    if target is not None:
                        asked.setdefault(target, []).append(position)
                    elif _redirected(reply):
                        moved.append(position)
                    elif isinstance(reply, Exception) and str(reply).startswith("WRONGTYPE"):
                        pass                # a key of another layout: unreadable, so missing
                    elif isinstance(reply, Exception):
                        raise OnlineStoreError(f"Redis at {self._where(node)} refused a read: {reply}")
                    else:
                        out[position] = reply
            for target, positions in asked.items():     # keys of a slot being migrated: ASKING, then GET
                node = route.node_at(target)
                commands = [part for i in positions for part in (_ASKING, b"*2\r\n$3\r\nGET\r\n%s" % bulk(names[i]))]
                for position, reply in zip(positions, self._request(node, commands, len(commands))[1::2],
                                           strict=True):
                    if _redirected(reply):
                        moved.append(position)
                    elif isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
                        raise OnlineStoreError(f"Redis at {self._where(node)} refused a read: {reply}")
                    elif not isinstance(reply, Exception):
                        out[position] = reply
            if not moved:
                return out
            if attempt < self.read_redirect_attempts:
                loop_bridge.blocking_io()          # pauses and re-reads the slot map: not on an event loop
                time.sleep(0.02 * 2 ** attempt)
                route.refresh(seen=seen)
                todo = moved
        raise OnlineStoreError(f"Redis Cluster at {_redacted(self.url)} kept redirecting reads (slots moving "
                               "between nodes?); try again")

    def _fetch(self, node: _Node, names: list[bytes], *, cluster: bool) -> list[Any]:
        """One reply per name from ``node``: the record, None or an error reply."""
        if len(names) == 1:
            return self._request(node, [b"*2\r\n$3\r\nGET\r\n%s" % bulk(names[0])], 1)
        if cluster:                 # keys of many slots: one GET each, pipelined
            commands = [b"".join(b"*2\r\n$3\r\nGET\r\n%s" % bulk(name) for name in names)]
            return self._request(node, commands, len(names))
        chunks = [names[i:i + self.keys_per_read] for i in range(0, len(names), self.keys_per_read)]
        commands = [b"".join((b"*%d\r\n$4\r\nMGET\r\n" % (1 + len(chunk)), *(bulk(name) for name in chunk)))
                    for chunk in chunks]
        out: list[Any] = []
        for reply, chunk in zip(self._request(node, commands, len(commands)), chunks, strict=True):
            out.extend(reply if not isinstance(reply, Exception) else [reply] * len(chunk))
        return out

    def _request(self, node: _Node, commands: list[bytes], replies: int) -> list[Any]:
        """Send ``commands`` (idempotent reads) on this thread's connection to ``node`` and read ``replies``
        replies (error replies returned as exceptions). A connection found dead (e.g. after a server restart)
        is replaced once. On an event loop (``loop_bridge``) the request goes out on the loop's connection."""
        if loop_bridge.on_loop():
            channel = self._loop_channel(node)
            reused = channel.connected
            try:
                return loop_bridge.await_io(channel.request(commands, replies))
            except self._loop_errors[0]:           # found dead (a Redis restart): one fresh connection
                if not reused:
                    raise
                return loop_bridge.await_io(channel.request(commands, replies))
        channels: dict[str, Channel] | None = getattr(self._local, "channels", None)
        if channels is None:
            channels = self._local.channels = {}
        for attempt in range(2):
            channel = channels.get(node.name)
            fresh = channel is None
            if channel is None:
                channel = channels[node.name] = Channel(node.client.connection_pool.make_connection())
                with self._channels_lock:
                    self._channels.add(channel)
            try:
                return channel.request(commands, replies)
            except BaseException as exc:
                channel.close()
                del channels[node.name]
                if fresh or attempt or not isinstance(exc, self._errors):
                    raise
        raise AssertionError("unreachable")
