"""Running the synchronous online-lookup code on the server's event loop, with its store I/O awaited.

An online lookup is a few microseconds of Python around one online-store round trip. Run on a thread pool it
pays two thread hand-offs per request (to the worker and back to the event loop), which cost more than the
lookup itself on a small machine; run on the event loop with a blocking socket, a store that stops answering
would hold every request of the server. The bridge runs the same synchronous code in a greenlet on the event
loop: where the store would wait for its reply (``await_io``), the greenlet steps aside and the loop serves other
requests until the reply (or the store's timeout) comes. Work that would block in ways the bridge cannot
await, such as a registry query on a cache miss, raises ``WouldBlock`` before doing anything (``blocking_io``),
and the caller runs the whole call again on a thread, where it may block.

Without the ``greenlet`` package (installed with the ``server`` extra) ``available()`` is False and callers use
their threads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["WouldBlock", "available", "await_io", "blocking_io", "on_loop", "run_on_loop"]

T = TypeVar("T")

try:
    from greenlet import getcurrent, greenlet
except ImportError:                                     # pragma: no cover - greenlet comes with the server extra
    greenlet = None
    getcurrent = None


class WouldBlock(Exception):
    """The call would block the event loop here (before doing anything): run it on a thread instead."""


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
