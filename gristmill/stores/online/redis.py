"""The Redis online store: one packed binary string per entity key, written through a compare-and-set script.

Layout: the string ``{prefix}:{store}:{feature set}:{version}:{materialization version}:{entity key}``
(parts escaped, see ``encoding``) holds one record, all little-endian:

- event time, create time and expiry: three int64 µs (the first 16 bytes are all the write script reads);
- a null bitmap: one bit per feature in table order (bit ``j % 8`` of byte ``j // 8``; 1 = present);
- the fixed-width values (integer/long/datetime int64, float/double float64, boolean one byte) in table
  order, zeros where null;
- one int32 byte length per variable-width feature (string, binary, float_vector), then their bytes.

Everything before the variable bytes has one width per table, so many records decode at once in numpy.
The string expires (``PXAT``) at event time + ttl, moved onto the server's clock by the offset between
the injected ``now`` and the server time; reads also compare the stored expiry with the injected
``now``, so expiry is exact and testable with fixed times.

Writes are the hot path: rows are packed by numpy/pyarrow into their records and sent as RESP that is
built here (not by redis-py, whose per-argument Python work would dominate), a few hundred rows per
``EVALSHA`` call and many calls per pipeline. Per key the script tries ``SET NX``; only for a key that
exists it reads its first 16 bytes (``GETRANGE``), and replaces it when the new row is not older.
Reads are a plain ``GET`` (one key) or ``MGET`` (many keys, RESP built here), no scripts.

Standalone Redis (or a single-slot proxy): the write script touches many keys per call, which Redis
Cluster only allows within one hash slot.
"""

from __future__ import annotations

import hashlib
import struct
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

# KEYS: entity keys. ARGV: ttl flag, the records (one per key), then with a ttl the expiry of each key
# on the server's clock (ms). New keys take one SET NX; after the first key that exists, the rest of the
# call reads first (the keys of one call are usually all new or all known). Times are compared exactly as
# (high int32, low uint32) halves: Lua numbers are doubles.
WRITE_SCRIPT = r"""
local has_ttl = ARGV[1] == '1'
local n = #KEYS
local probe = false
local written = 0
for k = 1, n do
  local key = KEYS[k]
  local record = ARGV[1 + k]
  local at = has_ttl and ARGV[1 + n + k]
  local done = false
  if not probe then
    if at then
      done = redis.call('SET', key, record, 'NX', 'PXAT', at)
    else
      done = redis.call('SET', key, record, 'NX')
    end
    probe = not done
  end
  if not done then
    local current = redis.pcall('GETRANGE', key, 0, 15)
    local newer = true
    if type(current) == 'string' and #current == 16 then
      local el, eh, cl, ch = struct.unpack('<I4i4I4i4', record)
      local pel, peh, pcl, pch = struct.unpack('<I4i4I4i4', current)
      newer = eh > peh or (eh == peh and (el > pel or (el == pel and (ch > pch or (ch == pch and cl >= pcl)))))
    end
    if newer then
      if at then redis.call('SET', key, record, 'PXAT', at) else redis.call('SET', key, record) end
      done = true
    end
  end
  if done then written = written + 1 end
end
return written
"""

# No longer used: reads are plain GET/MGET. Kept (never loaded) so that code and tests that refer to
# the former read script's name still import.
READ_SCRIPT = "return nil\n"

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
    """Rows as consecutive RESP bulk strings: row i is ``data[offsets[i]:offsets[i + 1]]``."""

    data: memoryview
    offsets: np.ndarray

    @classmethod
    def from_binary(cls, values: pa.Array) -> _Framed:
        """Frame every value of a binary/string array (no nulls) as ``$len\\r\\n value \\r\\n``."""
        values = values.cast(pa.binary())
        lengths = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
        framed = pc.binary_join_element_wise(b"$", lengths, b"\r\n", values, b"\r\n", b"")
        offsets = np.frombuffer(framed.buffers()[1], dtype=np.int32, count=len(framed) + 1,
                                offset=framed.offset * 4).astype(np.int64)
        return cls(memoryview(framed.buffers()[2]), offsets)

    def slice(self, start: int, stop: int) -> memoryview:
        return self.data[self.offsets[start]:self.offsets[stop]]


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
            return _Framed(memoryview(matrix.reshape(-1)), np.arange(count + 1, dtype=np.int64) * matrix.shape[1])
        fixed = np.ascontiguousarray(np.concatenate(parts, axis=1))
        pieces: list[pa.Array] = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.width), count, [None, pa.py_buffer(fixed)])
            .cast(pa.binary())]
        pieces += [encoded[i].cast(pa.binary()) for i in self.variable]
        return _Framed.from_binary(pc.binary_join_element_wise(*pieces, b""))


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
        self._no_script = redis.exceptions.NoScriptError
        self._response_error = redis.ResponseError
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=5.0)
        self._write_sha = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest()
        self._scripts_loaded = False
        self._plans: dict[OnlineTable, _Plan] = {}

    # --- protocol -----------------------------------------------------------------------------------------

    def write(self, table: OnlineTable, rows: pa.Table, *, now: datetime) -> int:
        """Upsert ``rows``: the newer (event time, create time) wins per key; expired rows are skipped."""
        plan = self._plan(table)
        now_micros = to_micros(now)
        prepared = prepare_rows(table, rows, now_micros=now_micros)
        if not len(prepared):
            return 0
        with self._connection() as connection:
            self._load_scripts()
            seconds, micros = self._client.time()
            offset_ms = (seconds * 1_000_000 + micros - now_micros) // 1000
            written = 0
            sent: list[bytes] = []
            retry: list[bytes] = []
            for start in range(0, len(prepared), self.rows_per_pipeline):
                stop = min(start + self.rows_per_pipeline, len(prepared))
                commands = self._write_commands(plan, table, prepared, start, stop, offset_ms)
                connection.send_packed_command(commands, check_health=False)
                written += self._replies(connection, sent, retry)   # overlap: read the previous pipeline now
                sent = commands
            written += self._replies(connection, sent, retry)
            if retry:                     # the server lost the script (restart, SCRIPT FLUSH): load, re-send
                self._scripts_loaded = False
                self._load_scripts()
                connection.send_packed_command(retry, check_health=False)
                lost: list[bytes] = []
                written += self._replies(connection, retry, lost)
                if lost:
                    raise OnlineStoreError(f"Redis at {_redacted(self.url)} keeps losing the write script")
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
                try:
                    record = self._client.execute_command("GET", found[0])
                except self._response_error as exc:      # WRONGTYPE: a key of another layout, unreadable
                    if not str(exc).startswith("WRONGTYPE"):
                        raise
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

    def _replies(self, connection: Any, commands: list[bytes], retry: list[bytes]) -> int:
        """Read one reply per sent command; commands that met NOSCRIPT (not run) go to ``retry``."""
        written = 0
        for command in commands:
            try:
                written += int(connection.read_response())
            except self._no_script:
                retry.append(command)
            except self._response_error as exc:
                raise OnlineStoreError(f"Redis at {_redacted(self.url)} refused a write: {exc}") from exc
        return written

    def _write_commands(self, plan: _Plan, table: OnlineTable, rows: PreparedRows, start: int, stop: int,
                        offset_ms: int) -> list[bytes]:
        """RESP for rows ``[start, stop)``: one EVALSHA per ``rows_per_call`` rows."""
        count = stop - start
        if plan.key_kinds:
            keys = _Framed.from_binary(encode_key_column(plan.key_kinds, [k.slice(start, count) for k in rows.keys],
                                                         prefix=plan.key_prefix))
        else:
            keys = _Framed.from_binary(pa.array([plan.key_prefix] * count, pa.string()))
        records = plan.records(rows, start, stop)
        expiries: _Framed | None = None
        if table.ttl is not None:       # the expiry on the server's clock, rounded up to whole ms
            server_ms = -(-rows.expires_micros[start:stop] // 1000) + offset_ms
            expiries = _Framed.from_binary(pa.array(server_ms).cast(pa.string()))
        header = _bulk(b"0" if expiries is None else b"1")
        sha = self._write_sha.encode()
        commands = []
        for first in range(0, count, self.rows_per_call):
            last = min(first + self.rows_per_call, count)
            n = last - first
            head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (4 + (2 if expiries is None else 3) * n, sha,
                                                                   _bulk(str(n).encode()))
            commands.append(b"".join((head, keys.slice(first, last), header, records.slice(first, last),
                                      b"" if expiries is None else expiries.slice(first, last))))
        return commands

    def _read_many(self, names: list[str]) -> list[bytes | None]:
        """The records of ``names``: one MGET per ``keys_per_read`` keys, all in one pipeline (RESP built here)."""
        chunks = [names[i:i + self.keys_per_read] for i in range(0, len(names), self.keys_per_read)]
        commands = [b"".join((b"*%d\r\n$4\r\nMGET\r\n" % (1 + len(chunk)),
                              *(_bulk(name.encode()) for name in chunk))) for chunk in chunks]
        with self._connection() as connection:
            connection.send_packed_command(commands, check_health=False)
            out: list[bytes | None] = []
            for _ in commands:
                out.extend(connection.read_response())
        return out
