"""Talking RESP to Redis without redis-py's per-command layers: batches of rows framed as commands, and
replies parsed by hiredis straight off a connection's socket."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.stores.online.encoding import PreparedRows, encode_key_column
from gristmill.stores.online.redis_records import Framed, RecordLayout

if TYPE_CHECKING:
    from gristmill.stores.online.base import OnlineTable

__all__ = ["Batch", "Channel", "LoopChannel", "bulk", "replies_of", "script_calls"]


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


@dataclass
class Batch:
    """Rows to write, framed: entity key names, records and (with a ttl) expiries on the server clock.

    ``names`` are the key names unframed, ``slots`` their Redis Cluster hash slots (None on a standalone
    server)."""

    names: pa.Array
    keys: Framed
    records: Framed
    expiries: Framed | None
    slots: np.ndarray | None = None

    @classmethod
    def of(cls, layout: RecordLayout, table: OnlineTable, rows: PreparedRows, start: int, stop: int,
           offset_ms: int) -> Batch:
        count = stop - start
        if layout.key_kinds:
            names = encode_key_column(layout.key_kinds, [k.slice(start, count) for k in rows.keys],
                                      prefix=layout.key_prefix)
        else:
            names = pa.array([layout.key_prefix] * count, pa.string())
        expiries = None
        if table.ttl is not None:       # the expiry on the server's clock, rounded up to whole ms
            server_ms = -(-rows.expires_micros[start:stop] // 1000) + offset_ms
            expiries = Framed.from_binary(pa.array(server_ms).cast(pa.string()))
        return cls(names, Framed.from_binary(names), layout.records(rows, start, stop), expiries)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, positions: np.ndarray) -> Batch:
        return Batch(self.names.take(pa.array(positions)), self.keys.take(positions), self.records.take(positions),
                     None if self.expiries is None else self.expiries.take(positions),
                     None if self.slots is None else self.slots[positions])

    def with_slots(self, slots: np.ndarray) -> Batch:
        return Batch(self.names, self.keys, self.records, self.expiries, slots)

    def set_nx(self) -> pa.Buffer:
        """RESP of one ``SET key record NX [PXAT at]`` per row, back to back."""
        if self.expiries is None:
            parts = [b"*4\r\n$3\r\nSET\r\n", self.keys.array, self.records.array, b"$2\r\nNX\r\n"]
        else:
            parts = [b"*6\r\n$3\r\nSET\r\n", self.keys.array, self.records.array, b"$2\r\nNX\r\n$4\r\nPXAT\r\n",
                     self.expiries.array]
        return Framed(pc.binary_join_element_wise(*parts, b"")).slice(0, len(self))


def hiredis_reader() -> Any | None:
    try:
        import hiredis
    except ImportError:
        return None
    return hiredis.Reader()


def replies_of(connection: Any) -> Callable[[int], list[Any]]:
    """A reader of the next ``n`` replies of ``connection``, error replies returned (not raised) as exceptions.

    With hiredis the bytes are read straight off the socket and parsed in C (about 20x cheaper per reply than
    ``read_response``, which matters for one reply per row); the connection must not be read otherwise
    meanwhile."""
    sock = getattr(connection, "_sock", None)
    reader = hiredis_reader()
    if reader is None or sock is None:
        from redis import exceptions

        # redis-py drops the error code of these replies from the message; hiredis (and Redis) keep it
        codes = {exceptions.AskError: "ASK", exceptions.MovedError: "MOVED", exceptions.TryAgainError: "TRYAGAIN",
                 exceptions.ClusterDownError: "CLUSTERDOWN", exceptions.NoScriptError: "NOSCRIPT"}

        def read_slowly(count: int) -> list[Any]:
            out: list[Any] = []
            for _ in range(count):
                try:
                    out.append(connection.read_response())
                except exceptions.ResponseError as exc:
                    code = next((c for kind, c in codes.items() if isinstance(exc, kind)), None)
                    out.append(exceptions.ResponseError(f"{code} {exc}") if code and not str(exc).startswith(code)
                               else exc)
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


class Channel:
    """A connection owned by one thread for lookups: requests go out as prebuilt RESP and the replies are
    parsed off the socket, without redis-py's per-command layers (about 30 µs of a 1-key lookup)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.read: Callable[[int], list[Any]] | None = None

    def request(self, commands: list[bytes], replies: int) -> list[Any]:
        self.connection.send_packed_command(commands, check_health=False)
        if self.read is None:                          # connected now
            self.read = replies_of(self.connection)
        return self.read(replies)

    def close(self) -> None:
        self.read = None
        self.connection.disconnect()




#: how long after its timeout a lookup's replies are looked for once more (a positive delay: the event loop
#: polls its sockets in between, whichever loop it is)
_RECHECK_SECONDS = 0.05


class LoopChannel:
    """A connection for lookups made on an event loop (``loop_bridge``): requests from concurrent lookups are
    pipelined on it, the commands of one loop iteration sent in one write, and the replies, parsed by hiredis
    as the bytes arrive (in the loop's I/O callback, so a reply that has arrived is never taken for a late
    one), handed back in order. A lookup waits at most ``timeout`` seconds for its replies; past that the
    connection is closed (every lookup behind the late reply would wait too) and each waiting lookup gets a
    ``TimeoutError``; the next lookup connects again.

    ``connect()`` opens the stream (authenticated, database selected); the channel takes over its transport."""

    def __init__(self, connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
                 *, timeout: float, errors: tuple[type[BaseException], type[BaseException]]) -> None:
        self._connect = connect
        self.timeout = timeout
        self._closed_error, self._timeout_error = errors      # redis-py's ConnectionError and TimeoutError
        self._transport: asyncio.Transport | None = None
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._parser: Any = None
        self._opening: asyncio.Future[None] | None = None
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self._out: list[bytes] = []
        self._flush_at: asyncio.Handle | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is open (it may still turn out dead: Redis restarted meanwhile)."""
        return self._transport is not None

    @property
    def waiting(self) -> int:
        """Lookups waiting for replies on this connection."""
        return len(self._waiting)

    async def request(self, commands: list[bytes], replies: int) -> list[Any]:
        """Send ``commands`` and return their ``replies`` replies (error replies as exceptions, not raised)."""
        loop = asyncio.get_running_loop()
        if self._transport is None:
            await self._open(loop)
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((done, replies, []))
        self._out.extend(commands)
        if self._flush_at is None:
            self._flush_at = loop.call_soon(self._flush)
        timer = loop.call_later(self.timeout, self._late, done)
        try:
            return await done
        finally:
            timer.cancel()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._opening is None:                      # one connect for the lookups that arrive meanwhile
            self._opening = loop.create_future()
            try:
                streams = await asyncio.wait_for(self._connect(), self.timeout)
            except BaseException as exc:
                opening, self._opening = self._opening, None
                failure = (self._timeout_error(f"Redis did not answer within {self.timeout:g} s of connecting")
                           if isinstance(exc, TimeoutError) else self._closed_error(f"cannot connect: {exc}"))
                opening.set_exception(failure)
                opening.exception()                     # retrieved: whoever waits on it raises it
                if isinstance(exc, Exception):
                    raise failure from exc
                raise
            transport = streams[1].transport
            self._streams = streams                    # kept: a stream writer closes its transport when collected
            self._parser = hiredis_reader()
            transport.set_protocol(_Replies(self, transport))
            self._transport = transport                 # type: ignore[assignment]
            opening, self._opening = self._opening, None
            opening.set_result(None)
        else:
            await asyncio.shield(self._opening)

    def _flush(self) -> None:
        self._flush_at = None
        if self._transport is not None and self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _received(self, data: bytes) -> None:
        waiting = self._waiting
        parser = self._parser
        try:
            parser.feed(data)
            reply = parser.gets()
            while reply is not False:
                if not waiting:
                    self.close(self._closed_error("Redis sent a reply nobody asked for"))
                    return
                done, count, got = waiting[0]
                got.append(reply)
                if len(got) == count:
                    waiting.popleft()
                    if not done.done():
                        done.set_result(got)
                reply = parser.gets()
        except Exception as exc:                     # a reply hiredis cannot parse: the stream is lost
            self.close(self._closed_error(f"reading from Redis failed: {exc}"))

    def _lost(self, transport: asyncio.BaseTransport, exc: BaseException | None) -> None:
        if transport is self._transport:
            self.close(self._closed_error("Redis closed the connection" + (f" ({exc})" if exc else "")))

    def _late(self, done: asyncio.Future[list[Any]]) -> None:
        # The loop may have been too busy to read the reply yet (uvloop runs due timers before it polls the
        # sockets): look again after one more poll before failing anyone.
        if not done.done():
            asyncio.get_running_loop().call_later(_RECHECK_SECONDS, self._still_late, done)

    def _still_late(self, done: asyncio.Future[list[Any]]) -> None:
        if not done.done():
            self.close(self._timeout_error(f"Redis did not answer within {self.timeout:g} s"))

    def close(self, error: BaseException | None = None) -> None:
        """Close the connection; lookups waiting on it get ``error`` (a ``ConnectionError`` by default)."""
        transport, self._transport = self._transport, None
        self._streams = None
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self._out.clear()
        if transport is not None:
            transport.close()
        failure = error or self._closed_error("the connection was closed")
        while self._waiting:
            done, _, _ = self._waiting.popleft()
            if not done.done():
                done.set_exception(failure)


class _Replies(asyncio.Protocol):
    """The protocol of a ``LoopChannel``'s transport: bytes from Redis go straight to the channel's parser."""

    def __init__(self, channel: LoopChannel, transport: asyncio.BaseTransport) -> None:
        self.channel = channel
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.transport is self.channel._transport:
            self.channel._received(data)

    def eof_received(self) -> bool:
        self.channel._lost(self.transport, None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel._lost(self.transport, exc)


def script_calls(batch: Batch, *, sha: str, offset_ms: int, rows_per_call: int) -> list[tuple[bytes, np.ndarray]]:
    """``batch`` as ``EVALSHA`` calls of the write script, each with the positions of its rows.

    A call holds at most ``rows_per_call`` rows, and on a cluster only keys of one hash slot (a script may
    touch only one slot)."""
    header = bulk(b"0" if batch.expiries is None else b"1") + bulk(str(offset_ms).encode())
    per_key = 2 if batch.expiries is None else 3
    if batch.slots is None:
        order = np.arange(len(batch))
        bounds = [*range(0, len(batch), rows_per_call), len(batch)]
    else:
        order = np.argsort(batch.slots, kind="stable")
        ordered = batch.slots[order]
        starts = [*np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]).tolist(), len(batch)]
        bounds = sorted({b for s, e in pairwise(starts) for b in range(s, e, rows_per_call)} | {len(batch)})
        batch = batch.take(order)
    calls = []
    for first, last in pairwise(bounds):
        n = last - first
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n%s" % (5 + per_key * n, sha.encode(), bulk(str(n).encode()))
        command = b"".join((head, batch.keys.slice(first, last), header, batch.records.slice(first, last),
                            b"" if batch.expiries is None else batch.expiries.slice(first, last)))
        calls.append((command, order[first:last]))
    return calls
