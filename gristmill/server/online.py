"""The online route's fast lane: ``POST /v1/online/features`` answered straight from ASGI, without the web
framework's per-request machinery (dependency solving, a pydantic model, several thread-pool hops), which
cost ~90 % of a served 1-key lookup.

The lane takes the common request only: a JSON object whose fields have the types the OpenAPI document
declares. It authenticates the token (cached), checks the caller's grants (cached), reads the online store
and writes the answer with orjson, the same bytes the framework's route writes (both call the same
``answer`` function). Anything else (another content type, malformed JSON, a field of the wrong type, a
``now``, a body over the size limit) is handed to the framework's route with the body replayed, so its
answers and refusals (422 naming the field, 413, 400) stay exactly as documented. Refusals raised while
answering (401, 403, 404, 400, 413, 503) go through the app's own exception handlers.

Where the online store can wait for its replies on the event loop (Redis), the lookup runs there
(``loop_bridge``): no thread hand-off, and a Redis that stops answering holds only the lookups waiting for
it, up to the store's timeout, never the loop that serves every other route. A lookup that must read the
registry first (a token or feature list not remembered) has a thread fill the caches, then goes on on the
loop. Lookups on a store whose reads block (SQLite), with ``explain``, or larger than ``LOOP_MOST_CELLS`` run
on a small pool of threads of the lane's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any

import orjson

from gristmill import loop_bridge
from gristmill.server.inputs import MAX_FEATURES, MAX_REFERENCE_LENGTH
from gristmill.server.limits import LimitExceeded

__all__ = ["ONLINE_PATH", "OnlineLane", "OnlineQuery", "encode_answer", "json_safe_floats"]

log = logging.getLogger("gristmill.server")

ONLINE_PATH = "/v1/online/features"
#: threads reading the online store for the lane where a read blocks (SQLite), or filling caches from the
#: registry: about one per core. More only contend for the interpreter: on 2 cores, 16 threads answered
#: 100-key SQLite lookups at 16 connections 3.4x slower than 2 (276 against 943 per second)
LANE_THREADS = min(8, max(2, os.cpu_count() or 2))
#: the largest lookup (keys x features) worked out on the event loop; a larger one is decoded and encoded on a
#: thread, so that it does not hold every other request (10,000 keys x 8 features took ~40 ms of the loop)
LOOP_MOST_CELLS = 4_096
#: lookups the lane holds at once (running or queued for its threads); past it lookups are answered 503 with
#: Retry-After (a store that stopped answering fills the lane; the queue does not grow without bound)
LANE_MOST_WAITING = 256
_BIG = float(2**63)
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class OnlineQuery:
    """One online request's fields, as the route's model declares them."""

    __slots__ = ("entities", "explain", "features", "full_feature_names")

    @property
    def cells(self) -> int:
        """Values the answer holds: keys x features."""
        return len(self.features) * max((len(values) for values in self.entities.values()), default=0)

    def __init__(self, features: list[str], entities: dict[str, list[Any]], *, full_feature_names: bool = False,
                 explain: bool = False) -> None:
        self.features = features
        self.entities = entities
        self.full_feature_names = full_feature_names
        self.explain = explain

    @classmethod
    def parse(cls, body: bytes) -> OnlineQuery | None:
        """The query in ``body``, or None when the body is anything but the plain well-typed request (the
        framework's route then answers it, with its own messages)."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(document) is not dict:           # fields the model does not declare are ignored, as there
            return None
        features, entities = document.get("features"), document.get("entities")
        full, explain = document.get("full_feature_names", False), document.get("explain", False)
        if (type(features) is not list or not 1 <= len(features) <= MAX_FEATURES
                or not all(type(f) is str and 1 <= len(f) <= MAX_REFERENCE_LENGTH for f in features)
                or type(entities) is not dict or not all(type(v) is list for v in entities.values())
                or type(full) is not bool or type(explain) is not bool or document.get("now") is not None
                or not all(_plain(values) for values in entities.values())):
            return None
        return cls(features, entities, full_feature_names=full, explain=explain)


def _plain(values: list[Any]) -> bool:
    """Whether entity values are flat and read as the framework reads them: orjson reads integers beyond 64
    bits as floats (the framework keeps them whole), so such floats, and nested values, go to the framework."""
    for value in values:
        kind = type(value)
        if kind is float:
            if not -_BIG < value < _BIG:
                return False
        elif kind is not str and kind is not int and kind is not bool and value is not None:
            return False
    return True


def json_safe_floats(values: list[Any]) -> list[Any]:
    """``values`` with NaN and ±infinity (which JSON cannot hold) as the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``, as in protobuf's JSON mapping; the connected SDK turns them back into floats."""
    if all(v is None or math.isfinite(v) for v in values):
        return values
    return [v if v is None or math.isfinite(v) else ("NaN" if v != v else _NON_FINITE[v]) for v in values]


def encode_answer(answer: dict[str, Any]) -> bytes:
    """The online answer as JSON bytes (datetimes ISO 8601, as the rest of the API writes them; a
    pass-through NaN, which only non-standard JSON can send, as null)."""
    try:
        return orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:         # integers beyond 64 bits, passed through from the request
        return json.dumps(_plain_json(answer), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()


def _plain_json(value: Any) -> Any:
    """``value`` with what the standard library's JSON does not write as the answer wants it: datetimes ISO
    8601, NaN and infinities null."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class OnlineLane:
    """ASGI handler answering ``POST /v1/online/features`` ahead of the framework (see the module docstring);
    ``app`` answers everything else.

    ``principal(authorization)`` names the caller of an ``Authorization`` header (or raises the app's 401);
    ``answer(principal, query)`` is the route's own work and returns the response body."""

    def __init__(self, app: Any, *, principal: Callable[[str], str], answer: Callable[[str, OnlineQuery], bytes],
                 most_bytes: int, handlers: dict[Any, Callable[..., Any]], on_loop: bool = False) -> None:
        self.app = app
        self.on_loop = on_loop and loop_bridge.available()
        self.principal = principal
        self.answer = answer
        self.most_bytes = most_bytes
        self.handlers = handlers
        self._pool = ThreadPoolExecutor(LANE_THREADS, thread_name_prefix="online")
        # threads that fill the caches from the registry for lookups that then go on on the loop: apart, so
        # that a registry that hangs holds them, not the threads answering lookups that need no registry
        self._warmers = ThreadPoolExecutor(LANE_THREADS, thread_name_prefix="online-registry")
        self._waiting = 0                   # lookups being answered (event loop only)
        #: lookups answered on the event loop and on the lane's threads (the first of a token, a feature list
        #: or every few seconds a cache refresh reads the registry: those go to a thread)
        self.answered = {"loop": 0, "threads": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != ONLINE_PATH or scope["method"] != "POST"
                or scope.get("query_string")):                    # a query string: the framework bounds the URL
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        content_type: bytes | None = None
        declared = b""
        for name, value in scope["headers"]:                      # the first of repeated headers, as the framework
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value
            elif name == b"content-length" and not declared:
                declared = value
        json_body = content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"application/json"
        if declared.isdigit() and int(declared) > self.most_bytes:
            await self.app(scope, receive, send)                  # refused there (413) before any byte is read
            return
        if self._waiting >= LANE_MOST_WAITING:
            busy = LimitExceeded(503, f"the server is busy: {self._waiting} online lookups are waiting for the online "
                                      "store; retry shortly", retry_after=1.0)
            await self.handlers[LimitExceeded](None, busy)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= self.most_bytes:
            message = await receive()
            if message["type"] != "http.request":          # the client left: the framework says so
                await self.app(scope, _replay(chunks, receive, first=message), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        within = not more and size <= self.most_bytes
        query = OnlineQuery.parse(b"".join(chunks)) if json_body and within else None
        if query is None:
            await self.app(scope, _replay(chunks, receive, more=more), send)
            return
        self._waiting += 1
        try:
            body = None
            if self.on_loop and not query.explain and query.cells <= LOOP_MOST_CELLS:
                body = await self._on_loop(authorization or "", query)
            if body is None:
                body = await asyncio.get_running_loop().run_in_executor(self._pool, self._work, authorization or "",
                                                                        query)
                self.answered["threads"] += 1
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(None, exc)
            await response(scope, receive, send)
            return
        finally:
            self._waiting -= 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _on_loop(self, authorization: str, query: OnlineQuery) -> bytes | None:
        """The answer, worked out on the event loop; None where it must be worked out on a thread (a store
        that blocks its caller)."""
        try:
            body = await loop_bridge.run_on_loop(self._work, authorization, query)
        except loop_bridge.WouldBlock:               # the registry must be read first (a new token, feature list)
            # On a thread, up to the store read (whose wait belongs on the loop: a thread would be held for as
            # long as the store takes to answer); what it read from the registry is then remembered.
            body = await asyncio.get_running_loop().run_in_executor(self._warmers, self._warm, authorization,
                                                                    query)
            if body is not None:                     # the thread finished it: no store read was needed
                self.answered["threads"] += 1
                return body
            try:
                body = await loop_bridge.run_on_loop(self._work, authorization, query)
            except loop_bridge.WouldBlock:
                return None
        self.answered["loop"] += 1
        return body

    def _work(self, authorization: str, query: OnlineQuery) -> bytes:
        return self.answer(self.principal(authorization), query)

    def _warm(self, authorization: str, query: OnlineQuery) -> bytes | None:
        try:
            with loop_bridge.warming():
                return self._work(authorization, query)
        except loop_bridge.Warmed:
            return None

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        for kind in type(exc).__mro__:
            if kind in self.handlers:
                return self.handlers[kind]
        return None


def _replay(chunks: list[bytes], receive: Receive, *, more: bool = False,
            first: dict[str, Any] | None = None) -> Receive:
    """A ``receive`` that gives the body read so far, then the rest from the client."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": more}] if chunks or first is None else []
    if first is not None:
        pending.append(first)

    async def replayed() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
