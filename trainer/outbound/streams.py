"""httpcore2's network stream over an asyncio protocol (the transport under the outbound client).

httpcore2's own `AnyIOBackend` wraps every read and write in an anyio cancel scope and does TLS in
Python on an anyio memory BIO; on the tool-call path that is most of the client's CPU
(bench/README.md, "one HTTP stack"). The outbound client only ever runs on asyncio, so its stream
is a plain `asyncio.Protocol` (TLS by asyncio's `start_tls`), with the exceptions httpcore2 expects.
The protocol keeps its own buffer and end-of-file flag, so "did the server close this idle
connection?" is answered without a system call (a `poll` per reuse gave the GIL away once per
request, and with other Python threads in the process each request then waited to get it back).
Connections are only ever opened to an address literal: no lookup happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import httpcore2

_READ_HIGH_WATER = 256 * 1024  # unread bytes above which the socket is not read (flow control)
_MAX_PENDING_BYTES = 64 * 1024


class _Protocol(asyncio.Protocol):
    """Bytes received and not yet read, the end of the stream, and the waiters for either."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None  # why the connection was lost, if not cleanly
        self.reading_paused = False
        self.writing_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.reading_paused and len(self.buffer) > _READ_HIGH_WATER:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # nothing more to send on a connection the server ended: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self.read_waiter = self.read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncioStream(httpcore2.AsyncNetworkStream):
    """Writes are held until the next read (or 64 KiB), so that a request's head and body leave in
    one send: h11 hands them over separately, and a tool server then needs two reads (two wake-ups
    of its handler) for one small request."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def _flush(self, timeout: float | None) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        protocol = self._protocol
        if protocol.eof or self._transport.is_closing():
            # The server ended the connection: the read that follows says how (its end of file or
            # the error); asyncio would drop the bytes anyway.
            return
        self._transport.write(data)
        if not protocol.writing_paused:
            return
        waiter = protocol.drain_waiter = protocol.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout("writing the request timed out") from exc
        if protocol.error is not None:
            raise httpcore2.WriteError(f"{type(protocol.error).__name__}: {protocol.error}")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            try:
                await self._flush(timeout)
            except httpcore2.WriteError as exc:  # httpcore2 expects read-side errors from read()
                raise httpcore2.ReadError(str(exc)) from exc
        protocol = self._protocol
        buffer = protocol.buffer
        while not buffer:
            if protocol.eof:
                if protocol.error is not None:
                    error = protocol.error
                    raise httpcore2.ReadError(f"{type(error).__name__}: {error}")
                return b""
            waiter = protocol.read_waiter = protocol.loop.create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(timeout):
                        await waiter
            except TimeoutError as exc:
                raise httpcore2.ReadTimeout("reading the response timed out") from exc
            finally:
                protocol.read_waiter = None
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if protocol.reading_paused and len(buffer) <= _READ_HIGH_WATER // 2:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_bytes += len(buffer)
        if self._pending_bytes >= _MAX_PENDING_BYTES:
            await self._flush(timeout)

    async def aclose(self) -> None:
        self._transport.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            # TLS: waits for close_notify to go out; bounded so a dead peer cannot hold a close.
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._protocol.closed)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                transport = await self._protocol.loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore2.ConnectTimeout(f"TLS handshake with {server_hostname} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        if transport is None:  # the connection ended during the handshake
            await self.aclose()
            raise httpcore2.ConnectError(
                f"the connection closed during the TLS handshake with {server_hostname}"
            )
        self._transport = self._protocol.transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            # On an idle connection: the server closed it, or sent something unasked for.
            protocol = self._protocol
            return protocol.eof or bool(protocol.buffer) or self._transport.is_closing()
        return None


async def open_tcp_stream(address: str, port: int, *, timeout: float | None) -> AsyncioStream:
    """A TCP connection to an address literal (never a name: the caller vetted this address)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(lambda: _Protocol(loop), address, port)
    except TimeoutError as exc:
        raise httpcore2.ConnectTimeout(f"connecting to {address} timed out") from exc
    except OSError as exc:
        raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return AsyncioStream(transport, protocol)  # type: ignore[arg-type]
