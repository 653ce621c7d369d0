"""httpcore2's network stream over plain asyncio streams (the transport under the outbound client).

httpcore2's own `AnyIOBackend` wraps every read and write in an anyio cancel scope and does TLS in
Python on an anyio memory BIO; on the tool-call path that is most of the client's CPU
(bench/README.md, "one HTTP stack"). The outbound client only ever runs on asyncio, so its streams
are asyncio's `StreamReader`/`StreamWriter` (TLS by asyncio's `start_tls`), with the exceptions
httpcore2 expects. Connections are only ever opened to an address literal: no lookup happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from typing import Any

import httpcore2

_STREAM_LIMIT = 256 * 1024  # StreamReader's buffer; reading pauses the socket above it
_MAX_PENDING_BYTES = 64 * 1024


def _readable(sock: socket.socket | None) -> bool:
    """Whether a read would return at once: data, or the end of an idle connection the server closed."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class AsyncioStream(httpcore2.AsyncNetworkStream):
    """Writes are held until the next read (or 64 KiB), so that a request's head and body leave in
    one send: h11 hands them over separately, and a tool server then needs two reads (two wake-ups
    of its handler) for one small request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    async def _flush(self, timeout: float | None) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self._writer.write(data)
            if timeout is None:
                await self._writer.drain()
            else:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore2.WriteTimeout(str(exc)) from exc
        except (OSError, RuntimeError) as exc:  # RuntimeError: writing to a closed transport
            raise httpcore2.WriteError(f"{type(exc).__name__}: {exc}") from exc

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._pending:
            try:
                await self._flush(timeout)
            except httpcore2.WriteError as exc:  # httpcore2 expects read-side errors from read()
                raise httpcore2.ReadError(str(exc)) from exc
        try:
            if timeout is None:
                return await self._reader.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore2.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore2.ReadError(f"{type(exc).__name__}: {exc}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_bytes += len(buffer)
        if self._pending_bytes >= _MAX_PENDING_BYTES:
            await self._flush(timeout)

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            # TLS: waits for close_notify to go out; bounded so a dead peer cannot hold a close.
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore2.ConnectTimeout(f"TLS handshake with {server_hostname} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            return self._reader.at_eof() or _readable(self._writer.get_extra_info("socket"))
        return None


async def open_tcp_stream(address: str, port: int, *, timeout: float | None) -> AsyncioStream:
    """A TCP connection to an address literal (never a name: the caller vetted this address)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port, limit=_STREAM_LIMIT)
    except TimeoutError as exc:
        raise httpcore2.ConnectTimeout(f"connecting to {address} timed out") from exc
    except OSError as exc:
        raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return AsyncioStream(reader, writer)
