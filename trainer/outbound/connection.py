"""One HTTP/1.1 connection of the outbound client: h11's state machine over a vetted network stream.

h11 (the HTTP/1.1 library under httpcore2 and httpx2) does all of the protocol: it validates and
frames the request, parses the response head, decodes the body framing (Content-Length, chunked,
read-until-close, none for HEAD/204/304) and decides whether the connection can carry another
request. This module only moves h11's bytes to the stream and its events back, as httpcore2's
`AsyncHTTP11Connection` does — without what that class adds around every request (an anyio lock
taken twice, five trace contexts, its own request/response models, the body behind two async
generators), which cost as much CPU per tool call as h11 itself (bench/README.md, "one HTTP stack").

Errors: h11's `LocalProtocolError` (a request h11 refuses) and `RemoteProtocolError` (a response it
cannot parse), the stream's `httpcore2.NetworkError`s, `ServerDisconnectedError` when the server
closes before a complete response head and `BodyTooLargeError` past the caller's cap. The client
(`trainer.outbound.client`) turns them into `OutboundError`s.
"""

from __future__ import annotations

import time

import h11
import httpcore2

# httpcore2's values: the largest response head or chunk-size line h11 buffers, and a read's size.
MAX_INCOMPLETE_EVENT_SIZE = 100 * 1024
READ_NUM_BYTES = 64 * 1024


class ServerDisconnectedError(Exception):
    """The server closed the connection before sending a complete response head."""


class BodyTooLargeError(Exception):
    """The response body grew past the caller's limit (the rest is not read)."""


class HTTP11Connection:
    """A connected stream plus its h11 state. One request at a time (the pool hands a connection to
    one request); after a complete exchange that both sides allow to continue it is idle and may be
    reused until `keepalive_expiry_s` have passed, otherwise the pool closes it."""

    __slots__ = ("_expire_at", "_h11", "_keepalive_expiry_s", "_stream", "requests")

    def __init__(self, stream: httpcore2.AsyncNetworkStream, *, keepalive_expiry_s: float) -> None:
        self._stream = stream
        self._h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_INCOMPLETE_EVENT_SIZE)
        self._keepalive_expiry_s = keepalive_expiry_s
        self._expire_at: float | None = None  # set while idle between requests
        self.requests = 0

    def is_idle(self) -> bool:
        """Between two requests (a new connection, one in use or one to be closed is not)."""
        return self._expire_at is not None

    def reusable(self) -> bool:
        """Idle, within its keep-alive time, and not closed by the server meanwhile (a closed idle
        socket reads as readable: its end of file is waiting)."""
        expire_at = self._expire_at
        return (
            expire_at is not None
            and time.monotonic() <= expire_at
            and not self._stream.get_extra_info("is_readable")
        )

    async def request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], content: bytes
    ) -> h11.Response:
        """Send one request and return the response head (informational 1xx answers skipped); the
        body follows with `read_body`."""
        self._expire_at = None
        self.requests += 1
        state = self._h11
        data = state.send(h11.Request(method=method, target=target, headers=headers))
        if content:
            data += state.send(h11.Data(data=content))
        data += state.send(h11.EndOfMessage())
        try:
            await self._stream.write(data)
        except httpcore2.WriteError:
            # As httpcore2: a server may answer (an error) and close before reading the whole
            # request; read what it said, the read reports the broken connection otherwise.
            pass
        while True:
            event = await self._next_event()
            if type(event) is h11.Response:
                return event
            # h11.InformationalResponse (100 Continue, 103 Early Hints): the final answer follows.
            # (A 101 never gets here: h11 refuses a protocol switch that was not asked for.)

    async def read_body(self, max_bytes: int) -> bytes:
        """The response body, decoded from its framing; at most `max_bytes` (else BodyTooLargeError,
        and the connection is left to be closed). After the whole body the connection is idle again
        when both sides keep it alive."""
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if type(event) is h11.Data:
                size += len(event.data)
                if size > max_bytes:
                    raise BodyTooLargeError(size)
                chunks.append(event.data)
            elif type(event) is h11.EndOfMessage or event is h11.PAUSED:
                break
        state = self._h11
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
            self._expire_at = time.monotonic() + self._keepalive_expiry_s
        return b"".join(chunks)

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        state = self._h11
        while True:
            event = state.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._stream.read(READ_NUM_BYTES)
            if not data and state.their_state is h11.SEND_RESPONSE:
                raise ServerDisconnectedError("the server closed the connection without answering")
            state.receive_data(data)

    async def aclose(self) -> None:
        self._expire_at = None
        await self._stream.aclose()
