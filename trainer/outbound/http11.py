"""A small HTTP/1.1 client protocol and keep-alive connection pool over asyncio (no policy here).

`trainer.outbound.client` is the only user: it resolves and vets addresses, builds the request head
and maps the exceptions below onto its `OutboundError` types. This module only speaks HTTP/1.1:

* `Connection` is an `asyncio.Protocol` that carries one request at a time. The response head is
  parsed from its buffer (status line, header fields, obsolete line folding, informational 1xx
  responses skipped), then the body is framed as RFC 9112 section 6.3 says: none for HEAD, 1xx, 204
  and 304; chunked transfer coding (extensions and trailers read and ignored); Content-Length; or
  read until the server closes. A size cap is enforced while the body arrives, reading pauses when
  the buffer is full, and the head and every chunk-size or trailer line are capped too.
* `ConnectionPool` bounds the number of open connections of one client (over all origins), keeps
  finished keep-alive connections per origin for reuse (most recent first, closed after an idle
  expiry), hands a released connection straight to a request waiting for the same origin, and
  closes an idle connection of another origin when a request needs a slot and none is free.

Nothing here resolves names, follows redirects, reads proxies from the environment or keeps cookies.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

MAX_HEAD_BYTES = 64 * 1024  # status line + header fields (and, separately, all trailer fields)
MAX_LINE_BYTES = 8 * 1024  # one chunk-size line (with its extensions) or trailer field
READ_HIGH_WATER = 512 * 1024  # pause reading from the socket above this many unread bytes
KEEPALIVE_EXPIRY_S = 5.0

NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

_STATUS_LINE = re.compile(r"HTTP/1\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class HTTPError(Exception):
    """Base class of this module's errors."""


class RemoteProtocolError(HTTPError):
    """The server sent something that is not valid HTTP/1.1 (or exceeds a protocol limit)."""


class LocalProtocolError(HTTPError):
    """The request cannot be sent as given (for example a header value with a line break)."""


class ConnectionClosedError(HTTPError):
    """The connection ended before the response was complete.

    `before_response` is true when not a single byte of the response had arrived: on a reused
    keep-alive connection that is the server having closed it while it sat idle, and the request can
    be sent again on a fresh connection.
    """

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class BodyTooLargeError(HTTPError):
    """The body is (or was announced to be) longer than the cap; `declared` is the announced length."""

    def __init__(self, message: str, *, declared: int | None) -> None:
        super().__init__(message)
        self.declared = declared


class ResponseHead:
    """A parsed status line and header fields, with what they mean for the body and the connection."""

    __slots__ = (
        "status_code",
        "reason",
        "http_version",
        "headers",
        "framing",
        "content_length",
        "keep_alive",
    )

    def __init__(
        self,
        *,
        status_code: int,
        reason: str,
        http_version: str,
        headers: dict[str, str],
        framing: int,
        content_length: int | None,
        keep_alive: bool,
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.http_version = http_version
        self.headers = headers  # lower-case names; repeated fields joined with ", "
        self.framing = framing
        self.content_length = content_length
        self.keep_alive = keep_alive


def check_token(value: str, what: str) -> None:
    if _TOKEN.fullmatch(value) is None:
        raise LocalProtocolError(f"the {what} is not a valid HTTP token")


def check_field_value(value: str) -> None:
    if _FIELD_VALUE_FORBIDDEN.search(value) is not None:
        raise LocalProtocolError("a header value contains a line break or another control character")


def _decode_head(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def _excerpt(line: str) -> str:
    return repr(line[:60] + ("…" if len(line) > 60 else ""))


def parse_head(data: bytes, *, head_request: bool) -> ResponseHead:
    """Parse one response head (without its final empty line); raises RemoteProtocolError."""
    lines = _decode_head(data).split("\n")
    status_line = lines[0].removesuffix("\r")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise RemoteProtocolError(f"invalid status line {_excerpt(status_line)}")
    minor, status_text, reason = match.groups()
    status_code = int(status_text)
    if status_code < 100:
        raise RemoteProtocolError(f"invalid status code {status_code}")
    headers: dict[str, str] = {}
    name = ""
    for raw in lines[1:]:
        line = raw.removesuffix("\r")
        if line[:1] in (" ", "\t"):  # obsolete line folding: continues the previous field
            if not name:
                raise RemoteProtocolError("the first header line is a continuation line")
            folded = line.strip(" \t")
            if _FIELD_VALUE_FORBIDDEN.search(folded) is not None:
                raise RemoteProtocolError(f"invalid characters in the {name} header")
            headers[name] = f"{headers[name]} {folded}" if headers[name] else folded
            continue
        field, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(field) is None:
            raise RemoteProtocolError(f"invalid header line {_excerpt(line)}")
        value = value.strip(" \t")
        name = field.lower()
        if _FIELD_VALUE_FORBIDDEN.search(value) is not None:
            raise RemoteProtocolError(f"invalid characters in the {name} header")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"

    connection = headers.get("connection", "").lower()
    tokens = {token.strip() for token in connection.split(",")} if connection else set()
    keep_alive = ("close" not in tokens) if minor != "0" else ("keep-alive" in tokens)
    content_length: int | None = None
    if head_request or status_code < 200 or status_code in (204, 304):
        framing = NO_BODY
    elif "transfer-encoding" in headers:
        codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if codings != ["chunked"]:
            raise RemoteProtocolError(
                f"unsupported Transfer-Encoding {_excerpt(headers['transfer-encoding'])} (only chunked is)"
            )
        framing = CHUNKED
        if "content-length" in headers:  # a message with both is suspect: do not reuse the connection
            keep_alive = False
    elif "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        value = values.pop() if len(values) == 1 else ""
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise RemoteProtocolError(f"invalid Content-Length {_excerpt(headers['content-length'])}")
        framing, content_length = LENGTH, int(value)
    else:
        framing = UNTIL_CLOSE
        keep_alive = False
    return ResponseHead(
        status_code=status_code,
        reason=reason or "",
        http_version=f"HTTP/1.{minor}",
        headers=headers,
        framing=framing,
        content_length=content_length,
        keep_alive=keep_alive,
    )


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: write a request, then read its response head and body."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.key: Hashable = None
        self.idle_since = 0.0
        self.requests = 0  # requests written on this connection
        self._buffer = bytearray()
        self._eof = False
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._response_started = False
        self._complete = True  # at a message boundary: the last response was read to its end

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._response_started = True
        if not self._paused and len(self._buffer) > READ_HIGH_WATER:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # state

    def usable(self) -> bool:
        """Idle and reusable: open, nothing unread, and the server has not closed its side."""
        transport = self.transport
        return (
            transport is not None
            and not self._eof
            and not self._buffer
            and self._waiter is None
            and not transport.is_closing()
        )

    def close(self) -> None:
        """Close cleanly at a message boundary, else abort (nothing more of that stream is wanted)."""
        if self.transport is not None:
            if self._complete:
                self.transport.close()
            else:
                self.transport.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _closed_error(self, what: str) -> ConnectionClosedError:
        reason = f" ({type(self._lost).__name__})" if self._lost is not None else ""
        return ConnectionClosedError(
            f"the server closed the connection {what}{reason}", before_response=not self._response_started
        )

    # one exchange

    def write_request(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._eof or transport.is_closing():
            raise ConnectionClosedError("the connection is closed", before_response=True)
        self._response_started = bool(self._buffer)
        self._complete = False
        self.requests += 1
        transport.write(data)

    async def read_head(
        self, *, head_request: bool = False, max_head_bytes: int = MAX_HEAD_BYTES
    ) -> ResponseHead:
        """The final (non-1xx) response head; informational responses are read and dropped."""
        while True:
            data = await self._read_head_block(max_head_bytes)
            head = parse_head(data, head_request=head_request)
            if head.status_code >= 200:
                return head
            if head.status_code == 101:
                raise RemoteProtocolError("the server switched protocols although no upgrade was asked for")

    async def _read_head_block(self, limit: int) -> bytes:
        buffer = self._buffer
        searched = 0
        while True:
            # Empty lines before a status line are allowed (RFC 9112 section 2.2).
            skip = 0
            while buffer[skip : skip + 1] in (b"\r", b"\n"):
                skip += 1
            if skip:
                del buffer[:skip]
                searched = 0
            end = buffer.find(b"\n\r\n", searched)
            lf_end = buffer.find(b"\n\n", searched)
            if end < 0 or (0 <= lf_end < end):
                end, size = lf_end, 2
            else:
                size = 3
            if end >= 0:
                if end > limit:
                    raise RemoteProtocolError(f"the response head is longer than {limit} bytes")
                data = bytes(buffer[:end])
                del buffer[: end + size]
                return data
            if len(buffer) > limit:
                raise RemoteProtocolError(f"the response head is longer than {limit} bytes")
            if self._eof:
                raise self._closed_error("before a complete response head" if buffer else "without answering")
            searched = max(0, len(buffer) - 2)
            await self._wait()

    async def _read_line(self, limit: int, what: str) -> bytes:
        buffer = self._buffer
        searched = 0
        while True:
            end = buffer.find(b"\n", searched)
            if end >= 0:
                if end > limit:
                    raise RemoteProtocolError(f"a {what} is longer than {limit} bytes")
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(buffer) > limit:
                raise RemoteProtocolError(f"a {what} is longer than {limit} bytes")
            if self._eof:
                raise self._closed_error("in the middle of the chunked body")
            searched = len(buffer)
            await self._wait()

    async def _read_into(self, body: bytearray, count: int) -> None:
        buffer = self._buffer
        while True:
            if len(buffer) >= count:
                body += buffer[:count]
                del buffer[:count]
                return
            if buffer:
                count -= len(buffer)
                body += buffer
                buffer.clear()
            if self._eof:
                raise self._closed_error("in the middle of the body")
            await self._wait()

    async def read_body(self, head: ResponseHead, *, max_bytes: int) -> bytes:
        """The whole body (at most `max_bytes`, else BodyTooLargeError) as framed by `head`."""
        body = await self._read_body(head, max_bytes)
        self._complete = True
        return body

    async def _read_body(self, head: ResponseHead, max_bytes: int) -> bytes:
        framing = head.framing
        buffer = self._buffer
        if framing == LENGTH:
            length = head.content_length or 0
            if length > max_bytes:
                raise BodyTooLargeError(
                    f"the response announced {length} bytes, over the {max_bytes}-byte limit", declared=length
                )
            if len(buffer) >= length:  # the usual case: it all came with the head
                body = bytes(buffer[:length])
                del buffer[:length]
                return body
            collected = bytearray()
            await self._read_into(collected, length)
            return bytes(collected)
        if framing == CHUNKED:
            return await self._read_chunked(max_bytes)
        if framing == UNTIL_CLOSE:
            collected = bytearray()
            while True:
                if buffer:
                    collected += buffer
                    buffer.clear()
                    if len(collected) > max_bytes:
                        raise BodyTooLargeError(
                            f"the response exceeded the {max_bytes}-byte limit", declared=None
                        )
                if self._eof:
                    if isinstance(self._lost, ConnectionError):  # a reset is no end of the body
                        raise self._closed_error("in the middle of the body")
                    return bytes(collected)
                await self._wait()
        return b""

    async def _read_chunked(self, max_bytes: int) -> bytes:
        body = bytearray()
        while True:
            line = await self._read_line(MAX_LINE_BYTES, "chunk-size line")
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if _HEX.fullmatch(size_text) is None:
                raise RemoteProtocolError(f"invalid chunk-size line {_excerpt(line.decode('latin-1'))}")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > max_bytes:
                raise BodyTooLargeError(f"the response exceeded the {max_bytes}-byte limit", declared=None)
            await self._read_into(body, size)
            if await self._read_line(MAX_LINE_BYTES, "chunk-size line"):
                raise RemoteProtocolError("chunk data is not followed by a line break")
        trailer_bytes = 0
        while True:  # trailer fields, read and dropped
            line = await self._read_line(MAX_LINE_BYTES, "trailer field")
            if not line:
                return bytes(body)
            trailer_bytes += len(line)
            if trailer_bytes > MAX_HEAD_BYTES:
                raise RemoteProtocolError(f"the trailer fields are longer than {MAX_HEAD_BYTES} bytes")
            if b":" not in line or line[:1] in (b" ", b"\t", b":"):
                raise RemoteProtocolError(f"invalid trailer line {_excerpt(line.decode('latin-1'))}")


async def open_connection(
    address: str, port: int, *, ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> Connection:
    """Connect to a numeric `address` (no name lookup happens here), with TLS when `ssl_context` is
    given (certificate and SNI checked against `server_hostname`)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (address, port))
        _transport, connection = await loop.create_connection(
            lambda: Connection(loop),
            sock=sock,
            ssl=ssl_context,
            server_hostname=server_hostname if ssl_context is not None else None,
        )
    except BaseException:
        sock.close()
        raise
    return connection


class ConnectionPool:
    """At most `max_connections` connections (open, opening or idle) over all origins of one loop.

    `acquire` returns a connection and whether it was reused; every acquired connection goes back
    through `release(connection, reusable=...)`. A request that finds no idle connection for its
    origin and no free slot waits; a released connection goes straight to the oldest waiter of its
    origin, else its slot goes to the oldest waiter of another origin.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_idle: int | None = None,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.loop = asyncio.get_running_loop()
        self.max_connections = max_connections
        self.max_idle = max_connections if max_idle is None else max_idle
        self.keepalive_expiry_s = keepalive_expiry_s
        self.slots_in_use = 0  # connections open, opening or idle
        self.idle_count = 0
        self.opened = 0  # connections opened so far (for tests and diagnostics)
        self._idle: dict[Hashable, list[Connection]] = {}
        self._waiters: dict[Hashable, deque[asyncio.Future[Connection | None]]] = {}
        self._closed = False

    async def acquire(
        self, key: Hashable, connect: Callable[[], Awaitable[Connection]]
    ) -> tuple[Connection, bool]:
        connection = self._take_idle(key)
        if connection is not None:
            return connection, True
        if not self._take_slot():
            handed = await self._wait_for(key)
            if handed is not None:
                if handed.usable():
                    return handed, True
                handed.abort()  # its slot is ours now
        try:
            connection = await connect()
        except BaseException:
            self._free_slot()
            raise
        connection.key = key
        self.opened += 1
        return connection, False

    def release(self, connection: Connection, *, reusable: bool) -> None:
        if not reusable or self._closed or not connection.usable():
            connection.close()
            self._free_slot()
            return
        waiters = self._waiters.get(connection.key)
        while waiters:
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[connection.key]
            if not waiter.done():
                waiter.set_result(connection)
                return
        if self._waiters or self.idle_count >= self.max_idle:
            connection.close()
            self._free_slot()  # to a waiter of another origin, if there is one
            return
        connection.idle_since = self.loop.time()
        self._idle.setdefault(connection.key, []).append(connection)
        self.idle_count += 1

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for connection in stack:
                connection.close()
                self.slots_in_use -= 1
        self._idle.clear()
        self.idle_count = 0

    def _take_idle(self, key: Hashable) -> Connection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        oldest_allowed = self.loop.time() - self.keepalive_expiry_s
        while stack:
            connection = stack.pop()
            self.idle_count -= 1
            if connection.usable() and connection.idle_since >= oldest_allowed:
                return connection
            connection.close()
            self._free_slot()
        return None

    def _take_slot(self) -> bool:
        if self.slots_in_use < self.max_connections:
            self.slots_in_use += 1
            return True
        for stack in self._idle.values():  # close an idle connection of another origin
            if stack:
                stack.pop(0).close()
                self.idle_count -= 1
                return True  # its slot passes to the caller
        return False

    def _free_slot(self) -> None:
        while self._waiters:
            key = next(iter(self._waiters))
            waiters = self._waiters[key]
            waiter = waiters.popleft()
            if not waiters:
                del self._waiters[key]
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self.slots_in_use -= 1

    async def _wait_for(self, key: Hashable) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.setdefault(key, deque()).append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()  # handed over just before the cancellation: give it back
                if handed is None:
                    self._free_slot()
                else:
                    self.release(handed, reusable=True)
            else:
                waiters = self._waiters.get(key)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[key]
            raise
