"""A bounded keep-alive pool of the outbound client's `HTTP11Connection`s.

Why not `httpcore2.AsyncConnectionPool`: it re-scans every connection it holds twice per request
(`_assign_requests_to_connections`), which with the 256 connections a step's concurrent tool calls
keep open cost ~2 ms of CPU per request — 7x the whole per-request cost of the previous client
(bench/README.md, "one HTTP stack"). This pool does O(1) work per request: idle connections are
kept per origin (most recent first), a global count bounds the open ones, and waiters are woken in
order when a connection is released or closed.

Invariants: `opened` counts every connection (or slot for one being opened) handed out or idle,
never more than `max_connections`; a connection is either in one request's hands or idle in
`_idle`, never both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from trainer.outbound.connection import HTTP11Connection

logger = logging.getLogger(__name__)


class ConnectionPool:
    """Connections for one event loop; `acquire` a connection for an origin, `release` it after."""

    def __init__(self, *, max_connections: int, max_idle: int) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.loop = asyncio.get_running_loop()
        self.opened = 0  # handed out + idle
        self._idle: dict[str, list[HTTP11Connection]] = {}  # by "scheme://host:port"
        self._idle_count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def idle_count(self) -> int:
        return self._idle_count

    async def acquire(self, key: str) -> HTTP11Connection | None:
        """An idle connection to the origin `key` ("scheme://host:port"), or None: a slot for a new
        connection, which the caller opens and then releases like a connection (None if opening
        failed)."""
        while True:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                self._idle_count -= 1
                if connection.reusable():
                    return connection
                await self._discard(connection)
            if self.opened < self.max_connections:
                self.opened += 1
                return None
            if self._idle_count:
                # Every slot is taken but some hold idle connections of other origins: free one.
                await self._discard(self._pop_any_idle())
                continue
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the slot we were woken for goes to the next waiter
                else:
                    with contextlib.suppress(ValueError):  # already dropped by `_wake_one`
                        self._waiters.remove(waiter)
                raise

    async def release(self, key: str, connection: HTTP11Connection | None, *, reusable: bool) -> None:
        """Give a connection (or an unused slot: None) back: kept for reuse when it finished cleanly,
        else closed."""
        if (
            reusable
            and connection is not None
            and not self._closed
            and connection.is_idle()
            and self._idle_count < self.max_idle
        ):
            self._idle.setdefault(key, []).append(connection)
            self._idle_count += 1
            self._wake_one()
            return
        await self._discard(connection)

    def _pop_any_idle(self) -> HTTP11Connection:
        for key, idle in self._idle.items():
            if idle:
                self._idle_count -= 1
                connection = idle.pop(0)  # the least recently used of that origin
                if not idle:
                    del self._idle[key]
                return connection
        raise RuntimeError("no idle connection")  # callers check idle_count first

    async def _discard(self, connection: HTTP11Connection | None) -> None:
        self.opened -= 1
        self._wake_one()
        if connection is None:
            return
        try:
            await asyncio.shield(connection.aclose())
        except Exception:
            logger.debug("closing an outbound connection failed", exc_info=True)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        idle = [connection for connections in self._idle.values() for connection in connections]
        self._idle.clear()
        self._idle_count = 0
        # Concurrently: a TLS close waits (briefly) for its close_notify to go out.
        await asyncio.gather(*(self._discard(connection) for connection in idle))
