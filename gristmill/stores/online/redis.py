"""The Redis online store: one hash per entity key, written through a server-side compare-and-set script.

Layout: the hash ``{prefix}:{store}:{feature set}:{version}:{materialization version}:{entity key}``
(parts escaped, see ``encoding``) holds one field per non-null feature (the codec's bytes) and the
field ``@t``: event time, create time and expiry as three little-endian int64 µs (``@`` cannot start a
feature name). The hash expires (``PEXPIREAT``) at event time + ttl, moved onto the server's clock by
the offset between the injected ``now`` and the server time; reads also compare the stored expiry
with the injected ``now``, so expiry is exact and testable with fixed times.

Writes are the hot path: rows are packed by numpy/pyarrow into one binary record per row and sent as
RESP that is built here (not by redis-py, whose per-argument Python work would dominate), a few
hundred rows per ``EVALSHA`` call and many calls per pipeline. The script unpacks each record with
``struct.unpack`` and keeps the newer row. Reading many keys is one ``EVALSHA`` whose reply is one
packed string (redis-py's pure-Python parser costs ~50 µs per ``HGETALL`` reply).

Standalone Redis (or a single-slot proxy): the scripts touch many keys per call, which Redis Cluster
only allows within one hash slot.
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

META_FIELD = b"@t"
_META = struct.Struct("<qqq")             # event µs, create µs, expiry µs
_INT32 = struct.Struct("<i")

# KEYS: entity hashes. ARGV: feature count, struct format of a record, ttl flag, clock offset (ms),
# null-mask flag, feature names (in record order), then one record per key:
# event µs, create µs, expiry µs (int64 each), [one byte per feature: 1 = present], values.
WRITE_SCRIPT = r"""
local nf = tonumber(ARGV[1])
local fmt = ARGV[2]
local has_ttl = ARGV[3] == '1'
local offset = tonumber(ARGV[4])
local masked = ARGV[5] == '1'
local names = {}
for j = 1, nf do names[j] = ARGV[5 + j] end
local first = masked and 5 or 4
local base = 5 + nf
local args = {'@t', false}
local written = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local record = ARGV[base + k]
  local v = {struct.unpack(fmt, record)}
  local current = redis.call('HGET', key, '@t')
  local newer = true
  if current then
    local ts, ct = struct.unpack('<i8i8', current)
    newer = v[1] > ts or (v[1] == ts and v[2] >= ct)
  end
  if newer then
    args[2] = string.sub(record, 1, 24)
    local n = 2
    local absent = nil
    for j = 1, nf do
      if masked and string.byte(v[4], j) == 0 then
        absent = absent or {}
        absent[#absent + 1] = names[j]
      else
        args[n + 1] = names[j]
        args[n + 2] = v[first + j - 1]
        n = n + 2
      end
    end
    redis.call('HSET', key, unpack(args, 1, n))
    if absent and current then redis.call('HDEL', key, unpack(absent)) end
    if has_ttl then redis.call('PEXPIREAT', key, string.format('%.0f', v[3] / 1000 + offset)) end
    written = written + 1
  end
end
return written
"""

# KEYS: entity hashes. ARGV: '@t' then the feature fields. Returns one string: per key, the lengths of
# its fields as little-endian int32 (-1 = absent) then their bytes; an unknown key is just -1.
READ_SCRIPT = r"""
local count = #ARGV
local lengths_fmt = '<' .. string.rep('i4', count)
local out = {}
local n = 0
for k = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[k], unpack(ARGV))
  if values[1] then
    local lengths = {}
    for j = 1, count do
      if values[j] then lengths[j] = #values[j] else lengths[j] = -1; values[j] = '' end
    end
    out[n + 1] = struct.pack(lengths_fmt, unpack(lengths))
    out[n + 2] = table.concat(values)
    n = n + 2
  else
    n = n + 1
    out[n] = struct.pack('<i4', -1)
  end
end
return table.concat(out)
"""

_NUMPY_TYPES = {"integer": "<i8", "long": "<i8", "float": "<f8", "double": "<f8", "boolean": "u1", "datetime": "<i8"}


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
    """Everything about one table that does not change between calls: names, formats, decoders."""

    def __init__(self, table: OnlineTable, prefix: str) -> None:
        self.key_prefix = f"{prefix}:{table_path(table)}:"
        self.key_kinds = [kind for _, kind in table.keys]
        self.key = key_encoder(self.key_kinds, prefix=self.key_prefix)
        self.feature_names = table.feature_names
        fixed = [i for i, (_, kind) in enumerate(table.features) if CODECS[kind].width is not None]
        variable = [i for i, (_, kind) in enumerate(table.features) if CODECS[kind].width is None]
        self.record_order = fixed + variable          # features in record order: fixed width first
        self.record_kinds = [table.features[i][1] for i in self.record_order]
        self.fixed_count = len(fixed)
        self.record_names = [table.features[i][0].encode() for i in self.record_order]
        widths = "".join(f"c{CODECS[table.features[i][1]].width}" for i in fixed) + "i4c0" * len(variable)
        self.record_format = "<i8i8i8" + widths
        self.masked_record_format = f"<i8i8i8c{len(table.features)}" + widths
        # reads (table order)
        self.read_fields = [META_FIELD, *(name.encode() for name in self.feature_names)]
        self.decoders: list[Callable[[bytes], Any]] = [CODECS[kind].from_bytes for _, kind in table.features]
        self.read_args = b"".join(_bulk(field) for field in self.read_fields)
        self.lengths = struct.Struct("<" + "i" * len(self.read_fields))
        self.kinds = [kind for _, kind in table.features]
        self.full_lengths: tuple[int, ...] | None = None
        if not variable:        # every value has a fixed width: a record of a complete row has a fixed layout
            self.full_lengths = (24, *(CODECS[kind].width for kind in self.kinds))
            self.record = np.dtype([("lengths", "<i4", (len(self.read_fields),)), ("meta", "<i8", (3,)),
                                    *((f"f{i}", _NUMPY_TYPES[kind]) for i, kind in enumerate(self.kinds))])

    def decode(self, values: Sequence[bytes | None], now_micros: int) -> dict[str, Any] | None:
        """HMGET values (``@t`` first, then features in table order) -> the row, or None if unknown/expired."""
        meta = values[0]
        if meta is None or _META.unpack(meta)[2] <= now_micros:
            return None
        return {name: None if raw is None else decode(raw)
                for name, decode, raw in zip(self.feature_names, self.decoders, values[1:], strict=True)}

    def decode_packed(self, blob: bytes, count: int, now_micros: int) -> list[dict[str, Any] | None]:
        """The read script's reply for ``count`` keys."""
        if self.full_lengths is not None and len(blob) == count * self.record.itemsize:
            complete = self._decode_complete(blob, now_micros)
            if complete is not None:
                return complete
        out: list[dict[str, Any] | None] = []
        pos = 0
        width = self.lengths.size
        for _ in range(count):
            if _INT32.unpack_from(blob, pos)[0] < 0:
                out.append(None)
                pos += 4
                continue
            lengths = self.lengths.unpack_from(blob, pos)
            pos += width
            fields: list[bytes | None] = []
            for length in lengths:
                if length < 0:
                    fields.append(None)
                else:
                    fields.append(blob[pos:pos + length])
                    pos += length
            out.append(self.decode(fields, now_micros))
        return out

    def _decode_complete(self, blob: bytes, now_micros: int) -> list[dict[str, Any] | None] | None:
        """Every key known with every value present (the usual case): decode column by column in numpy."""
        records = np.frombuffer(blob, dtype=self.record)
        if not (records["lengths"] == self.full_lengths).all():
            return None
        columns = []
        for i, kind in enumerate(self.kinds):
            values = records[f"f{i}"]
            if kind == "boolean":
                columns.append((values != 0).tolist())
            elif kind == "datetime":
                columns.append([from_micros(v) for v in values.tolist()])
            else:
                columns.append(values.tolist())
        alive = (records["meta"][:, 2] > now_micros).tolist()
        names = self.feature_names
        if not names:
            return [{} if ok else None for ok in alive]
        return [dict(zip(names, row, strict=True)) if ok else None
                for ok, row in zip(alive, zip(*columns, strict=True), strict=True)]


class RedisOnlineStore:
    """Online store in Redis (SPEC §3 "Materialization"); see the module docstring for the layout.

    Example::

        store = RedisOnlineStore("redis://127.0.0.1:6379/0", prefix="gristmill")
        store.write(table, rows, now=datetime.now(UTC))
        store.read(table, [("A",)], now=datetime.now(UTC))   # [{'amount': 5.0}]
    """

    #: rows per EVALSHA call (each call blocks the server for about this many × 10 µs)
    rows_per_call = 200
    #: rows encoded per pipeline
    rows_per_pipeline = 20_000
    #: keys per read script call
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
        self._read_sha = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
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
                results = [plan.decode(self._client.execute_command("HMGET", found[0], *plan.read_fields),
                                       now_micros)]
            else:
                results = self._read_many(plan, found, now_micros)
        hits = iter(results)
        return [None if name is None else next(hits) for name in names]

    def drop(self, table: OnlineTable) -> None:
        """Delete every hash of ``table`` (SCAN + UNLINK over its key pattern)."""
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
            self._client.script_load(READ_SCRIPT)
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
        features = [rows.features[i].slice(start, count) for i in plan.record_order]
        masked = any(f.null_count for f in features)
        if plan.key_kinds:
            keys = _Framed.from_binary(encode_key_column(plan.key_kinds, [k.slice(start, count) for k in rows.keys],
                                                         prefix=plan.key_prefix))
        else:
            keys = _Framed.from_binary(pa.array([plan.key_prefix] * count, pa.string()))
        records = self._records(plan, rows, start, stop, features, masked)
        has_ttl = table.ttl is not None
        header_args = [str(len(features)).encode(),
                       (plan.masked_record_format if masked else plan.record_format).encode(),
                       b"1" if has_ttl else b"0", str(offset_ms).encode(), b"1" if masked else b"0",
                       *plan.record_names]
        header_tail = b"".join(_bulk(a) for a in header_args)
        sha = self._write_sha.encode()
        commands = []
        for first in range(0, count, self.rows_per_call):
            last = min(first + self.rows_per_call, count)
            n = last - first
            head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (3 + 2 * n + len(header_args), sha,
                                                              _bulk(str(n).encode()))
            commands.append(b"".join((head, keys.slice(first, last), header_tail, records.slice(first, last))))
        return commands

    @staticmethod
    def _records(plan: _Plan, rows: PreparedRows, start: int, stop: int, features: list[pa.Array],
                 masked: bool) -> _Framed:
        """One packed record per row (see WRITE_SCRIPT), framed as RESP bulk strings."""
        count = stop - start
        fixed_parts: list[np.ndarray] = [
            np.ascontiguousarray(column[start:stop], dtype="<i8").view(np.uint8).reshape(count, 8)
            for column in (rows.event_micros, rows.create_micros, rows.expires_micros)]
        if masked:
            fixed_parts.append(np.stack([pc.is_valid(f).to_numpy(zero_copy_only=False) for f in features],
                                        axis=1).astype(np.uint8))
        kinds = plan.record_kinds
        for feature, kind in zip(features[:plan.fixed_count], kinds[:plan.fixed_count], strict=True):
            fixed_parts.append(CODECS[kind].encode_column(feature))
        width = sum(part.shape[1] for part in fixed_parts)
        variable = features[plan.fixed_count:]
        if not variable:                                  # constant record width: frame in numpy
            head = b"$%d\r\n" % width
            matrix = np.empty((count, len(head) + width + 2), dtype=np.uint8)
            matrix[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
            column = len(head)
            for part in fixed_parts:
                matrix[:, column:column + part.shape[1]] = part
                column += part.shape[1]
            matrix[:, column:] = np.frombuffer(b"\r\n", dtype=np.uint8)
            return _Framed(memoryview(matrix.reshape(-1)), np.arange(count + 1, dtype=np.int64) * matrix.shape[1])
        fixed = np.concatenate(fixed_parts, axis=1) if len(fixed_parts) > 1 else fixed_parts[0]
        pieces: list[pa.Array] = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), count, [None, pa.py_buffer(fixed)])
            .cast(pa.binary())]
        for feature, kind in zip(variable, kinds[plan.fixed_count:], strict=True):
            encoded = CODECS[kind].encode_column(feature).fill_null(b"")
            lengths = np.ascontiguousarray(pc.binary_length(encoded).to_numpy(zero_copy_only=False), dtype="<i4")
            pieces.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), count,
                                                               [None, pa.py_buffer(lengths)]).cast(pa.binary()))
            pieces.append(encoded.cast(pa.binary()))
        return _Framed.from_binary(pc.binary_join_element_wise(*pieces, b""))

    def _read_many(self, plan: _Plan, names: list[str], now_micros: int) -> list[dict[str, Any] | None]:
        """One read-script call per ``keys_per_read`` keys, all in one pipeline (RESP built here)."""
        self._load_scripts()
        chunks = [names[i:i + self.keys_per_read] for i in range(0, len(names), self.keys_per_read)]
        sha = _bulk(self._read_sha.encode())
        commands = [b"".join((b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(chunk) + len(plan.read_fields)), sha,
                              _bulk(b"%d" % len(chunk)), *(_bulk(name.encode()) for name in chunk), plan.read_args))
                    for chunk in chunks]
        with self._connection() as connection:
            connection.send_packed_command(commands, check_health=False)
            blobs: list[bytes | None] = []
            for _ in commands:
                try:
                    blobs.append(connection.read_response())
                except self._no_script:
                    blobs.append(None)
            if any(blob is None for blob in blobs):           # the server lost the script: load, ask again
                self._scripts_loaded = False
                self._load_scripts()
                again = [c for c, blob in zip(commands, blobs, strict=True) if blob is None]
                connection.send_packed_command(again, check_health=False)
                answers = iter([connection.read_response() for _ in again])
                blobs = [next(answers) if blob is None else blob for blob in blobs]
        out: list[dict[str, Any] | None] = []
        for chunk, blob in zip(chunks, blobs, strict=True):
            out.extend(plan.decode_packed(blob, len(chunk), now_micros))
        return out

