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

Standalone Redis (or a single-slot proxy): the write script touches many keys per call, which Redis
Cluster only allows within one hash slot.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.spec.types import FeatureType
from gristmill.stores.online.encoding import (
    CODECS,
    OnlineStoreError,
    PreparedRows,
    encode_key_column,
    from_micros,
    key_encoder,
    prepare_rows,
    table_path,
    to_micros,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from gristmill.stores.online.base import OnlineTable

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

_HEADER = 24                              # event µs, create µs, expiry µs
_NUMPY_TYPES = {FeatureType.INTEGER: "<i8", FeatureType.LONG: "<i8", FeatureType.FLOAT: "<f8",
                FeatureType.DOUBLE: "<f8", FeatureType.BOOLEAN: "u1", FeatureType.DATETIME: "<i8"}
_STRUCT_TYPES = {FeatureType.INTEGER: "q", FeatureType.LONG: "q", FeatureType.FLOAT: "d",
                 FeatureType.DOUBLE: "d", FeatureType.BOOLEAN: "?", FeatureType.DATETIME: "q"}


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError("RedisOnlineStore needs the redis client: pip install 'gristmill[redis]'") from None
    return redis


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


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@dataclass
class _Framed:
    """Values framed as RESP bulk strings (``$len\\r\\n value \\r\\n``), one per row, back to back."""

    array: pa.Array                               # binary: row i is the framed value i

    @classmethod
    def from_binary(cls, values: pa.Array) -> _Framed:
        """Frame every value of a binary/string array (no nulls)."""
        values = values.cast(pa.binary())
        lengths = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
        return cls(pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b""))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> _Framed:
        """Rows of a uint8 matrix, each already one framed value."""
        count, width = matrix.shape
        offsets = np.arange(count + 1, dtype=np.int32) * width
        return cls(pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(np.ascontiguousarray(matrix))]))

    def __post_init__(self) -> None:
        self.offsets = np.frombuffer(self.array.buffers()[1], dtype=np.int32, count=len(self.array) + 1,
                                     offset=self.array.offset * 4)
        self.data = memoryview(self.array.buffers()[2] or b"")

    def slice(self, start: int, stop: int) -> memoryview:
        """The bytes of rows ``[start, stop)``."""
        return self.data[self.offsets[start]:self.offsets[stop]]

    def take(self, positions: np.ndarray) -> _Framed:
        return _Framed(self.array.take(pa.array(positions)))


class _Plan:
    """Everything about one table that does not change between calls: names, record layout, decoders."""

    def __init__(self, table: OnlineTable, prefix: str) -> None:
        self.key_prefix = f"{prefix}:{table_path(table)}:"
        self.key_kinds = [kind for _, kind in table.keys]
        self.key = key_encoder(self.key_kinds, prefix=self.key_prefix)
        self.feature_names = table.feature_names
        self.kinds = [kind for _, kind in table.features]
        self.fixed = [i for i, kind in enumerate(self.kinds) if CODECS[kind].width is not None]
        self.variable = [i for i, kind in enumerate(self.kinds) if CODECS[kind].width is None]
        self.bitmap_bytes = (len(self.kinds) + 7) // 8
        fields: list[tuple[Any, ...]] = [("event", "<i8"), ("create", "<i8"), ("expiry", "<i8")]
        if self.bitmap_bytes:
            fields.append(("nulls", "u1", (self.bitmap_bytes,)))
        fields += [(f"f{i}", _NUMPY_TYPES[self.kinds[i]]) for i in self.fixed]
        fields += [(f"n{i}", "<i4") for i in self.variable]
        self.record = np.dtype(fields)                 # the fixed-width head of every record
        self.width = self.record.itemsize
        self.head = struct.Struct("<qqq" + f"{self.bitmap_bytes}s"
                                  + "".join(_STRUCT_TYPES[self.kinds[i]] for i in self.fixed)
                                  + "i" * len(self.variable))
        assert self.head.size == self.width
        self.from_bytes: list[Callable[[bytes], Any]] = [CODECS[kind].from_bytes for kind in self.kinds]

    # --- decoding -------------------------------------------------------------------------------------------

    def decode_one(self, record: bytes | None, now_micros: int) -> dict[str, Any] | None:
        """One record -> the row, or None if unknown/expired (struct: cheaper than numpy for one)."""
        if record is None or len(record) < self.width:
            return None
        head = self.head.unpack_from(record)
        if head[2] <= now_micros:
            return None
        present = int.from_bytes(head[3], "little")
        values: list[Any] = [None] * len(self.kinds)
        for position, i in enumerate(self.fixed, start=4):
            if present >> i & 1:
                value = head[position]
                values[i] = from_micros(value) if self.kinds[i] == FeatureType.DATETIME else value
        pos = self.width
        for position, i in enumerate(self.variable, start=4 + len(self.fixed)):
            length = head[position]
            if present >> i & 1:
                values[i] = self.from_bytes[i](record[pos:pos + length])
            pos += length
        return dict(zip(self.feature_names, values, strict=True))

    def decode_many(self, records: Sequence[bytes | None], now_micros: int) -> list[dict[str, Any] | None]:
        """MGET replies -> one row (or None) each: the fixed-width heads of all records decode in numpy."""
        out: list[dict[str, Any] | None] = [None] * len(records)
        found = [i for i, record in enumerate(records) if record is not None and len(record) >= self.width]
        if not found:
            return out
        hits = [records[i] for i in found] if len(found) < len(records) else records
        blob = b"".join(hits)                                            # type: ignore[arg-type]
        count = len(hits)
        if not self.variable:
            if len(blob) != count * self.width:
                return [self.decode_one(record, now_micros) for record in records]
            heads = np.frombuffer(blob, dtype=self.record)
            starts = None
        else:
            lengths = np.fromiter(map(len, hits), dtype=np.int64, count=count)  # type: ignore[arg-type]
            starts = np.zeros(count, dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            raw = np.frombuffer(blob, dtype=np.uint8)
            heads = raw[starts[:, None] + np.arange(self.width)].view(self.record).reshape(count)
        alive = heads["expiry"] > now_micros
        if not alive.all():
            keep = np.flatnonzero(alive)
            heads = heads[keep]
            if starts is not None:
                starts = starts[keep]
            found = [found[i] for i in keep.tolist()]
            count = len(found)
            if not count:
                return out
        columns: list[list[Any]] = [[] for _ in self.kinds]
        for i in self.fixed:
            values = heads[f"f{i}"]
            kind = self.kinds[i]
            if kind == FeatureType.BOOLEAN:
                columns[i] = (values != 0).tolist()
            elif kind == FeatureType.DATETIME:
                columns[i] = [from_micros(v) for v in values.tolist()]
            else:
                columns[i] = values.tolist()
        if self.variable:
            position = starts + self.width                                 # type: ignore[operator]
            for i in self.variable:
                sizes = heads[f"n{i}"].astype(np.int64)
                decode = self.from_bytes[i]
                columns[i] = [decode(blob[s:s + n]) for s, n in zip(position.tolist(), sizes.tolist(), strict=True)]
                position = position + sizes
        if self.bitmap_bytes:
            present = np.unpackbits(heads["nulls"], axis=1, count=len(self.kinds), bitorder="little")
            for i in np.flatnonzero(present.min(axis=0) == 0).tolist():
                column = columns[i]
                for row in np.flatnonzero(present[:, i] == 0).tolist():
                    column[row] = None
        names = self.feature_names
        if names:
            for index, row in zip(found, zip(*columns, strict=True), strict=True):
                out[index] = dict(zip(names, row, strict=True))
        else:
            for index in found:
                out[index] = {}
        return out

    # --- encoding -------------------------------------------------------------------------------------------

    def records(self, rows: PreparedRows, start: int, stop: int) -> _Framed:
        """One record per row of ``[start, stop)``, framed as RESP bulk strings."""
        count = stop - start
        features = [feature.slice(start, count) for feature in rows.features]
        parts: list[np.ndarray] = [
            np.ascontiguousarray(column[start:stop], dtype="<i8").view(np.uint8).reshape(count, 8)
            for column in (rows.event_micros, rows.create_micros, rows.expires_micros)]
        if self.bitmap_bytes:
            if any(feature.null_count for feature in features):
                valid = np.stack([pc.is_valid(f).to_numpy(zero_copy_only=False) for f in features], axis=1)
                parts.append(np.packbits(valid, axis=1, bitorder="little"))
            else:
                full = np.packbits(np.ones(len(self.kinds), dtype=bool), bitorder="little")
                parts.append(np.broadcast_to(full, (count, self.bitmap_bytes)))
        for i in self.fixed:
            parts.append(CODECS[self.kinds[i]].encode_column(features[i]))
        encoded = {i: CODECS[self.kinds[i]].encode_column(features[i]).fill_null(b"") for i in self.variable}
        for i in self.variable:
            sizes = np.ascontiguousarray(pc.binary_length(encoded[i]).to_numpy(zero_copy_only=False), dtype="<i4")
            parts.append(sizes.view(np.uint8).reshape(count, 4))
        if not self.variable:                             # constant record width: frame in numpy
            head = b"$%d\r\n" % self.width
            matrix = np.empty((count, len(head) + self.width + 2), dtype=np.uint8)
            matrix[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
            column = len(head)
            for part in parts:
                matrix[:, column:column + part.shape[1]] = part
                column += part.shape[1]
            matrix[:, column:] = np.frombuffer(b"\r\n", dtype=np.uint8)
            return _Framed.from_matrix(matrix)
        fixed = np.ascontiguousarray(np.concatenate(parts, axis=1))
        pieces: list[pa.Array] = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.width), count, [None, pa.py_buffer(fixed)])
            .cast(pa.binary())]
        pieces += [encoded[i].cast(pa.binary()) for i in self.variable]
        return _Framed.from_binary(pc.binary_join_element_wise(*pieces, b""))


@dataclass
class _Batch:
    """Rows of one pipeline, framed: entity key names, records and (with a ttl) expiries on the server clock."""

    keys: _Framed
    records: _Framed
    expiries: _Framed | None

    @classmethod
    def of(cls, plan: _Plan, table: OnlineTable, rows: PreparedRows, start: int, stop: int,
           offset_ms: int) -> _Batch:
        count = stop - start
        if plan.key_kinds:
            names = encode_key_column(plan.key_kinds, [k.slice(start, count) for k in rows.keys],
                                      prefix=plan.key_prefix)
        else:
            names = pa.array([plan.key_prefix] * count, pa.string())
        expiries = None
        if table.ttl is not None:       # the expiry on the server's clock, rounded up to whole ms
            server_ms = -(-rows.expires_micros[start:stop] // 1000) + offset_ms
            expiries = _Framed.from_binary(pa.array(server_ms).cast(pa.string()))
        return cls(_Framed.from_binary(names), plan.records(rows, start, stop), expiries)

    def __len__(self) -> int:
        return len(self.keys.array)

    def take(self, positions: np.ndarray) -> _Batch:
        return _Batch(self.keys.take(positions), self.records.take(positions),
                      None if self.expiries is None else self.expiries.take(positions))

    def set_nx(self) -> pa.Buffer:
        """RESP of one ``SET key record NX [PXAT at]`` per row, back to back."""
        if self.expiries is None:
            parts = [b"*4\r\n$3\r\nSET\r\n", self.keys.array, self.records.array, b"$2\r\nNX\r\n"]
        else:
            parts = [b"*6\r\n$3\r\nSET\r\n", self.keys.array, self.records.array, b"$2\r\nNX\r\n$4\r\nPXAT\r\n",
                     self.expiries.array]
        return _Framed(pc.binary_join_element_wise(*parts, b"")).slice(0, len(self))


@dataclass
class _Sent:
    """A batch whose replies are still to be read."""

    batch: _Batch
    set_nx: bool                  # sent as SET NX commands (one reply per row), else as script calls
    replies: int
    commands: list[Any]
    retried: bool = False


def _hiredis_reader() -> Any | None:
    try:
        import hiredis
    except ImportError:
        return None
    return hiredis.Reader()


def _replies_of(connection: Any) -> Callable[[int], list[Any]]:
    """A reader of the next ``n`` replies of ``connection``, error replies returned (not raised) as exceptions.

    With hiredis the bytes are read straight off the socket and parsed in C (about 20x cheaper per reply than
    ``read_response``, which matters for one reply per row); the connection must not be read otherwise
    meanwhile."""
    sock = getattr(connection, "_sock", None)
    reader = _hiredis_reader()
    if reader is None or sock is None:
        from redis.exceptions import ResponseError

        def read_slowly(count: int) -> list[Any]:
            out: list[Any] = []
            for _ in range(count):
                try:
                    out.append(connection.read_response())
                except ResponseError as exc:
                    out.append(exc)
            return out

        return read_slowly

    def read(count: int) -> list[Any]:
        out: list[Any] = []
        gets = reader.gets
        while len(out) < count:
            reply = gets()
            if reply is False:
                data = sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(data)
            else:
                out.append(reply)
        return out

    return read


class _Channel:
    """A connection owned by one thread for lookups: requests go out as prebuilt RESP and the replies are
    parsed off the socket, without redis-py's per-command layers (about 30 µs of a 1-key lookup)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.read: Callable[[int], list[Any]] | None = None

    def request(self, commands: list[bytes], replies: int) -> list[Any]:
        self.connection.send_packed_command(commands, check_health=False)
        if self.read is None:                          # connected now
            self.read = _replies_of(self.connection)
        return self.read(replies)

    def close(self) -> None:
        self.read = None
        self.connection.disconnect()


class RedisOnlineStore:
    """Online store in Redis (SPEC §3 "Materialization"); see the module docstring for the layout.

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

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "gristmill",
                 socket_timeout: float = 30.0) -> None:
        redis = _import_redis()
        self.url = url
        self.prefix = prefix
        self._errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._response_error = redis.ResponseError
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=5.0)
        self._write_sha = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()
        self._scripts_loaded = False
        self._plans: dict[OnlineTable, _Plan] = {}
        self._local = threading.local()           # per thread: a connection for lookups (see _request)
        self._channels: weakref.WeakSet[_Channel] = weakref.WeakSet()   # a thread's goes when the thread goes
        self._channels_lock = threading.Lock()

    # --- protocol -----------------------------------------------------------------------------------------

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows``: the newer (event time, create time) wins per key; expired rows are skipped.

        Rows go in pipelines of ``rows_per_pipeline``. A pipeline first tries plain ``SET NX`` per key
        (a key that does not exist yet needs no comparison); the keys that exist go through the
        compare-and-set script. Once most keys of a pipeline exist, later pipelines go to the script
        directly. The next pipeline is sent before the replies of the previous one are read."""
        plan = self._plan(table)
        now_micros = to_micros(now)
        prepared = prepare_rows(table, rows, now_micros=now_micros)
        if not len(prepared):
            return 0
        with self._connection() as connection:
            self._load_scripts()
            seconds, micros = self._client.time()
            offset_ms = (seconds * 1_000_000 + micros - now_micros) // 1000
            replies = _replies_of(connection)
            sent: deque[_Sent] = deque()
            written = 0
            new_keys = True                    # try SET NX first until most keys turn out to exist
            for start in range(0, len(prepared), self.rows_per_pipeline):
                batch = _Batch.of(plan, table, prepared, start, min(start + self.rows_per_pipeline, len(prepared)),
                                  offset_ms)
                sent.append(self._send(connection, batch, new_keys=new_keys, offset_ms=offset_ms))
                while len(sent) > 1:           # overlap: the server works on the batch just sent meanwhile
                    done, new_keys = self._settle(connection, replies, sent.popleft(), sent, offset_ms, new_keys)
                    written += done
            while sent:
                done, new_keys = self._settle(connection, replies, sent.popleft(), sent, offset_ms, new_keys)
                written += done
            return written

    def read(self, table: OnlineTable, keys: Sequence[tuple[Any, ...]], *, now: datetime
             ) -> list[dict[str, Any] | None]:
        """The feature values of each key (request order), None where unknown, expired or with a null part."""
        plan = self._plan(table)
        now_micros = to_micros(now)
        names = [plan.key(tuple(key)) for key in keys]
        found = [name for name in names if name is not None]
        results: list[dict[str, Any] | None]
        with self._errors_as_store_errors():
            if not found:
                results = []
            elif len(found) == 1:
                name = found[0].encode()
                (record,) = self._request([b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(name), name)], 1)
                if isinstance(record, Exception):        # WRONGTYPE: a key of another layout, unreadable
                    if not str(record).startswith("WRONGTYPE"):
                        raise OnlineStoreError(f"Redis at {_redacted(self.url)} refused a read: {record}")
                    record = None
                results = [plan.decode_one(record, now_micros)]
            else:
                results = plan.decode_many(self._read_many(found), now_micros)
        hits = iter(results)
        return [None if name is None else next(hits) for name in names]

    def drop(self, table: OnlineTable) -> None:
        """Delete every key of ``table`` (SCAN + UNLINK over its key pattern)."""
        pattern = _glob_escape(self._plan(table).key_prefix) + "*"
        with self._errors_as_store_errors():
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=pattern, count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)

    def close(self) -> None:
        with self._channels_lock:
            channels, self._channels = list(self._channels), weakref.WeakSet()
        for channel in channels:
            channel.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({_redacted(self.url)!r}, prefix={self.prefix!r})"

    # --- internals ----------------------------------------------------------------------------------------

    def _plan(self, table: OnlineTable) -> _Plan:
        plan = self._plans.get(table)
        if plan is None:
            plan = self._plans[table] = _Plan(table, self.prefix)
        return plan

    def _load_scripts(self) -> None:
        if not self._scripts_loaded:
            self._client.script_load(WRITE_SCRIPT)
            self._scripts_loaded = True

    @contextmanager
    def _errors_as_store_errors(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            detail = str(exc).rstrip(".")
            raise OnlineStoreError(f"cannot reach Redis at {_redacted(self.url)}: {detail}. Is Redis running?"
                                   ) from exc

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection for raw pipelining; dropped (not reused) when anything goes wrong."""
        with self._errors_as_store_errors():
            pool = self._client.connection_pool
            try:
                connection = pool.get_connection()
            except TypeError:                          # redis-py < 5.3 wants a command name
                connection = pool.get_connection("EVALSHA")
            try:
                yield connection
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)

    def _send(self, connection: Any, batch: _Batch, *, new_keys: bool, offset_ms: int) -> _Sent:
        """Send ``batch`` as SET NX commands (``new_keys``) or as compare-and-set script calls."""
        commands = [batch.set_nx()] if new_keys else self._script_calls(batch, offset_ms)
        connection.send_packed_command(commands, check_health=False)
        return _Sent(batch, new_keys, len(batch) if new_keys else len(commands), commands)

    def _settle(self, connection: Any, replies: Callable[[int], list[Any]], sent: _Sent, queue: deque[_Sent],
                offset_ms: int, new_keys: bool) -> tuple[int, bool]:
        """Read the replies of ``sent``; keys that SET NX found existing are sent to the script (queued).
        Returns (rows written, whether the next batch should try SET NX)."""
        answers = replies(sent.replies)
        errors = [a for a in answers if isinstance(a, Exception)]
        if sent.set_nx:
            if errors:
                raise OnlineStoreError(f"Redis at {_redacted(self.url)} refused a write: {errors[0]}")
            existing = np.flatnonzero(np.fromiter((a is None for a in answers), dtype=bool, count=len(answers)))
            if len(existing):
                queue.append(self._send(connection, sent.batch.take(existing), new_keys=False, offset_ms=offset_ms))
            return len(answers) - len(existing), new_keys and 2 * len(existing) < len(answers)
        lost = [i for i, a in enumerate(answers) if isinstance(a, Exception) and str(a).startswith("NOSCRIPT")]
        if len(lost) < len(errors):
            failure = next(e for e in errors if not str(e).startswith("NOSCRIPT"))
            raise OnlineStoreError(f"Redis at {_redacted(self.url)} refused a write: {failure}")
        if lost:         # the server lost the script (restart, SCRIPT FLUSH): nothing of those calls ran
            if sent.retried:
                raise OnlineStoreError(f"Redis at {_redacted(self.url)} keeps losing the write script")
            self._scripts_loaded = False
            self._load_scripts()
            commands = [sent.commands[i] for i in lost]
            connection.send_packed_command(commands, check_health=False)
            queue.append(_Sent(sent.batch, False, len(commands), commands, retried=True))
        return sum(a for a in answers if not isinstance(a, Exception)), new_keys

    def _script_calls(self, batch: _Batch, offset_ms: int) -> list[bytes]:
        """RESP for ``batch`` through the compare-and-set script: one EVALSHA per ``rows_per_call`` rows."""
        header = _bulk(b"0" if batch.expiries is None else b"1") + _bulk(str(offset_ms).encode())
        sha = self._write_sha.encode()
        per_key = 2 if batch.expiries is None else 3
        commands = []
        for first in range(0, len(batch), self.rows_per_call):
            last = min(first + self.rows_per_call, len(batch))
            n = last - first
            head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (5 + per_key * n, sha, _bulk(str(n).encode()))
            commands.append(b"".join((head, batch.keys.slice(first, last), header, batch.records.slice(first, last),
                                      b"" if batch.expiries is None else batch.expiries.slice(first, last))))
        return commands

    def _read_many(self, names: list[str]) -> list[bytes | None]:
        """The records of ``names``: one MGET per ``keys_per_read`` keys, all in one pipeline (RESP built here)."""
        chunks = [names[i:i + self.keys_per_read] for i in range(0, len(names), self.keys_per_read)]
        commands = [b"".join((b"*%d\r\n$4\r\nMGET\r\n" % (1 + len(chunk)),
                              *(_bulk(name.encode()) for name in chunk))) for chunk in chunks]
        out: list[bytes | None] = []
        for reply in self._request(commands, len(commands)):
            if isinstance(reply, Exception):
                raise OnlineStoreError(f"Redis at {_redacted(self.url)} refused a read: {reply}")
            out.extend(reply)
        return out

    def _request(self, commands: list[bytes], replies: int) -> list[Any]:
        """Send ``commands`` (idempotent reads) on this thread's lookup connection and read ``replies`` replies
        (error replies returned as exceptions). A connection found dead (e.g. after a server restart) is
        replaced once."""
        for attempt in range(2):
            channel: _Channel | None = getattr(self._local, "channel", None)
            fresh = channel is None
            if channel is None:
                channel = self._local.channel = _Channel(self._client.connection_pool.make_connection())
                with self._channels_lock:
                    self._channels.add(channel)
            try:
                return channel.request(commands, replies)
            except BaseException as exc:
                channel.close()
                self._local.channel = None
                if fresh or attempt or not isinstance(exc, self._errors):
                    raise
        raise AssertionError("unreachable")
