"""Running the synchronous online-lookup code on the server's event loop, with its store I/O awaited.

An online lookup is a few microseconds of Python around one online-store round trip. Run on a thread pool it
pays two thread hand-offs per request (to the worker and back to the event loop), which cost more than the
lookup itself on a small machine; run on the event loop with a blocking socket, a store that stops answering
would hold every request of the server. The bridge runs the same synchronous code in a greenlet on the event
loop: where the store would wait for its reply (``await_io``), the greenlet steps aside and the loop serves other
requests until the reply (or the store's timeout) comes. Work that would block in ways the bridge cannot
await, such as a registry query on a cache miss, raises ``WouldBlock`` before doing anything (``blocking_io``),
and the caller runs the whole call again on a thread, where it may block: in full, or only up to the I/O the
loop waits for better (``warming``: the registry's answers are then remembered and the call runs on the loop
again). ``TimedCache`` remembers such answers so that the loop rarely needs the registry at all.

Without the ``greenlet`` package (installed with the ``server`` extra) ``available()`` is False and callers use
their threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from gristmill.errors import StoreUnavailableError

__all__ = ["TimedCache", "Warmed", "WouldBlock", "available", "await_io", "blocking_io", "on_loop", "run_on_loop",
           "stop_when_warming", "warming"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("gristmill.server")

try:
    from greenlet import getcurrent, greenlet
except ImportError:                                     # pragma: no cover - greenlet comes with the server extra
    greenlet = None
    getcurrent = None


class WouldBlock(Exception):
    """The call would block the event loop here (before doing anything): run it on a thread instead."""


class Warmed(Exception):
    """The call, run by ``warming``, reached the I/O the event loop waits for better: its caches are filled."""


_warming = threading.local()


@contextmanager
def warming() -> Iterator[None]:
    """Run a call on a thread up to the I/O the event loop can wait for (``stop_when_warming`` raises
    ``Warmed`` there): what it needs from the registry is then remembered, and the call can run on the loop."""
    _warming.on = True
    try:
        yield
    finally:
        _warming.on = False


def stop_when_warming() -> None:
    """Call before I/O the event loop waits for (an online-store read): raises ``Warmed`` inside ``warming``."""
    if getattr(_warming, "on", False):
        raise Warmed


def available() -> bool:
    """Whether the bridge can run here (the ``greenlet`` package is installed)."""
    return greenlet is not None


if greenlet is not None:
    class _Bridged(greenlet):                           # type: ignore[misc,valid-type]
        """The greenlet of one call run by ``run_on_loop``."""


def on_loop() -> bool:
    """Whether the calling code runs inside ``run_on_loop`` (so it must not block)."""
    return greenlet is not None and type(getcurrent()) is _Bridged


def blocking_io() -> None:
    """Call before I/O that blocks: raises ``WouldBlock`` inside ``run_on_loop``, does nothing elsewhere."""
    if greenlet is not None and type(getcurrent()) is _Bridged:
        raise WouldBlock


def await_io(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, awaited by the event loop while this call steps aside (inside
    ``run_on_loop`` only)."""
    current = getcurrent()
    if type(current) is not _Bridged:
        raise RuntimeError("await_io() is for code run by run_on_loop()")
    return current.parent.switch(awaitable)         # type: ignore[no-any-return]


async def run_on_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` run on the event loop, its ``await_io`` calls awaited; raises what it raises
    (``WouldBlock`` included, which callers answer by running it on a thread)."""
    call = _Bridged(function)
    step = call.switch(*args)
    while not call.dead:
        try:
            result = await step
        except BaseException as exc:
            step = call.throw(exc)
        else:
            step = call.switch(result)
    return step                                     # type: ignore[no-any-return]


class TimedCache(Generic[K, V]):
    """Values remembered for at most ``seconds`` after they were loaded (``seconds`` <= 0: nothing is
    remembered), so a change (a revoked token) shows within ``seconds``.

    On the event loop (inside ``run_on_loop``) a value past half its time is still served while one
    background thread loads it again: the lookups that arrive meanwhile neither wait for the registry nor
    pile onto threads together. A reload that fails drops the value (the next caller loads it and sees the
    error), unless the registry could not be reached: then the value is used until its time is up.
    ``clear`` and ``discard`` also void the loads under way, which could otherwise put back what was
    just taken away (a revoked token)."""

    def __init__(self, seconds: float, *, most: int = 10_000) -> None:
        self.seconds = seconds
        self.most = most
        self._items: dict[K, tuple[float, V]] = {}      # key -> (when loaded, value)
        self._generation = 0
        self._reloading: set[K] = set()
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The value of ``key``, from ``load()`` when it is not remembered (or too old)."""
        if self.seconds <= 0:
            return load()
        hit = self._items.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < self.seconds:
                if age >= self.seconds / 2 and on_loop():
                    self._reload(key, load)
                return hit[1]
        generation = self._generation
        loaded_at = time.monotonic()
        value = load()
        self._keep(key, value, generation, loaded_at)
        return value

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()

    def discard(self, key: K) -> None:
        with self._lock:
            self._generation += 1
            self._items.pop(key, None)

    def _keep(self, key: K, value: V, generation: int, loaded_at: float) -> None:
        with self._lock:
            if generation != self._generation:       # cleared since the load began: it may be outdated
                return
            if len(self._items) >= self.most and key not in self._items:
                self._items.clear()
            self._items[key] = (loaded_at, value)   # its age counts from before the load read anything

    def _reload(self, key: K, load: Callable[[], V]) -> None:
        with self._lock:
            if key in self._reloading:
                return
            self._reloading.add(key)
            generation = self._generation

        def reload() -> None:
            loaded_at = time.monotonic()
            try:
                value = load()
            except StoreUnavailableError as exc:      # the registry is down for now: the value keeps its time
                log.debug("reloading a cached value failed: %s", exc)
            except Exception as exc:                  # the next caller loads it and sees the error
                log.debug("reloading a cached value failed: %s", exc)
                with self._lock:
                    self._items.pop(key, None)
            else:
                self._keep(key, value, generation, loaded_at)
            finally:
                with self._lock:
                    self._reloading.discard(key)

        _reloader().submit(reload)


_reloader_pool: ThreadPoolExecutor | None = None
_reloader_lock = threading.Lock()


def _reloader() -> ThreadPoolExecutor:
    """The threads that reload cached values in the background (two: a slow registry holds few)."""
    global _reloader_pool
    with _reloader_lock:
        if _reloader_pool is None:
            _reloader_pool = ThreadPoolExecutor(2, thread_name_prefix="cache-reload")
        return _reloader_pool
