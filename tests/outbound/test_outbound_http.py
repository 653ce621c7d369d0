"""The outbound client's HTTP/1.1 behaviour (httpcore2/h11 under the policy) against real local servers.

`RawServer` is an asyncio TCP server on 127.0.0.1 that reads each request (head and Content-Length
body) and answers with exactly the bytes a test scripts, so framing, malformed responses and
connection handling can be exercised byte for byte. It counts the connections it accepts.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trainer.outbound.client import (
    InvalidResponseError,
    OutboundClient,
    OutboundConnectionError,
    OutboundError,
    OutboundTimeoutError,
    RedirectRefusedError,
    ResponseTooLargeError,
)
from trainer.outbound.policy import OutboundPolicy

DEV = OutboundPolicy(allow_loopback=True)


def ok(body: bytes = b"ok", *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Exchange:
    connection: int  # 1-based number of the connection it came on
    index: int  # 0-based number of the request on that connection
    method: str
    head: bytes
    body: bytes


@dataclass
class Raw:
    """What the server does with one request."""

    parts: list[bytes] = field(default_factory=list)  # written one after the other
    pause_s: float = 0.0  # between parts (with a drain, so they leave as separate writes)
    close: bool = False  # close the connection after the parts
    reset: bool = False  # after the parts, abort the connection with a TCP reset


class RawServer:
    def __init__(self, answer: Callable[[Exchange], Raw | bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.exchanges: list[Exchange] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    def url(self, path: str = "/t", *, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        self.writers.append(writer)
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                exchange = Exchange(number, index, head.split(b" ", 1)[0].decode(), head, body)
                self.exchanges.append(exchange)
                index += 1
                raw = self.answer(exchange)
                if isinstance(raw, bytes):
                    raw = Raw([raw])
                for position, part in enumerate(raw.parts):
                    if position and raw.pause_s:
                        await asyncio.sleep(raw.pause_s)
                    writer.write(part)
                    await writer.drain()
                if raw.reset:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if raw.close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            # Swallowing the cancellation at loop teardown keeps Python 3.11's streams from logging
            # the cancelled handler as an unhandled exception.
            return
        finally:
            self.open_now -= 1
            writer.close()


async def fetch(client: OutboundClient, url: str, method: str = "GET", **kwargs):
    return await client.request(method, url, **kwargs)


# Content-Length, reuse


async def test_content_length_bodies_reuse_one_connection_for_sequential_requests():
    async with RawServer(lambda ex: ok(f"answer {ex.index}".encode())) as server:
        async with OutboundClient(policy=DEV) as client:
            bodies = [(await fetch(client, server.url())).body for _ in range(5)]
            assert client.connection_counts() == (1, 1)
    assert bodies == [f"answer {i}".encode() for i in range(5)]
    assert server.connections == 1
    assert [ex.index for ex in server.exchanges] == [0, 1, 2, 3, 4]


async def test_request_head_has_host_defaults_caller_headers_and_a_computed_length():
    async with RawServer(lambda ex: ok()) as server:
        async with OutboundClient(policy=DEV) as client:
            await fetch(
                client,
                server.url("/p?q=1"),
                "POST",
                content=b"12345",
                headers={"X-Key": "v", "Content-Length": "999", "Transfer-Encoding": "chunked"},
            )
            await fetch(client, server.url("/empty"), "POST")
            await fetch(client, server.url("/get"))
    first, empty, get = (ex.head.decode() for ex in server.exchanges)
    assert first.startswith("POST /p?q=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in first
    assert "Accept-Encoding: identity\r\n" in first and "X-Key: v\r\n" in first
    assert "Content-Length: 5\r\n" in first and "999" not in first and "chunked" not in first
    assert server.exchanges[0].body == b"12345"
    assert "Content-Length: 0\r\n" in empty
    assert "Content-Length" not in get


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async with RawServer(lambda ex: ok()) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(OutboundError, match="line break") as info:
                await fetch(client, server.url(), headers={"X-A": "v\r\nX-Injected: 1"})
            with pytest.raises(OutboundError):
                await fetch(client, server.url(), headers={"Bad Name": "v"})
    assert type(info.value) is OutboundError
    assert server.exchanges == []


# chunked


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
CHUNKED_BODY = (
    b"5;name=value\r\nhello\r\n"
    b'6;quoted="a;b"\r\n world\r\n'
    b"A\r\n0123456789\r\n"
    b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)


async def test_chunked_body_with_extensions_and_trailers_then_reuse():
    async with RawServer(lambda ex: CHUNKED_HEAD + CHUNKED_BODY) as server:
        async with OutboundClient(policy=DEV) as client:
            first = await fetch(client, server.url())
            second = await fetch(client, server.url())
    assert first.body == second.body == b"hello world0123456789"
    assert "x-checksum" not in first.headers  # trailers are read and dropped
    assert server.connections == 1  # the framing ended exactly where the next response began


async def test_chunked_body_arriving_one_byte_at_a_time():
    message = CHUNKED_HEAD + CHUNKED_BODY
    async with RawServer(
        lambda ex: Raw([message[i : i + 1] for i in range(len(message))], pause_s=0.001)
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            response = await fetch(client, server.url())
            assert (await fetch(client, server.url())).body == response.body
    assert response.body == b"hello world0123456789"
    assert response.headers["content-type"] == "text/plain"
    assert server.connections == 1


async def test_large_chunked_body_in_uneven_writes():
    payload = bytes(range(256)) * 1024  # 256 KiB
    encoded = b""
    for start in range(0, len(payload), 70_000):
        piece = payload[start : start + 70_000]
        encoded += f"{len(piece):X}\r\n".encode() + piece + b"\r\n"
    encoded += b"0\r\n\r\n"
    message = CHUNKED_HEAD + encoded
    async with RawServer(
        lambda ex: Raw([message[i : i + 40_000] for i in range(0, len(message), 40_000)])
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            response = await fetch(client, server.url(), max_response_bytes=len(payload))
    assert response.body == payload


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",  # chunk data not followed by CRLF
        b"0\r\nno colon here\r\n\r\n",  # a broken trailer
        b"1" * 21 + b"\r\n",  # a size too long to be real
    ],
)
async def test_malformed_chunked_bodies_are_invalid_responses(body):
    async with RawServer(lambda ex: Raw([CHUNKED_HEAD + body], close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(InvalidResponseError) as info:
                await fetch(client, server.url())
    assert info.value.error_type == "invalid_response"


async def test_chunked_body_over_the_cap_is_cut():
    many_small = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(100)) + b"0\r\n\r\n"
    one_huge = b"FFFFFFFF\r\n" + b"x" * 60_000  # announces 4 GiB; cut once past the cap
    async with RawServer(
        lambda ex: CHUNKED_HEAD + (many_small if ex.connection == 1 else one_huge)
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(ResponseTooLargeError, match="50000-byte limit"):
                await fetch(client, server.url(), max_response_bytes=50_000)
            with pytest.raises(ResponseTooLargeError):
                await fetch(client, server.url(), max_response_bytes=50_000)
            assert client.connection_counts() == (0, 0)  # an unread body's connection is not kept
    assert server.connections == 2


async def test_chunked_body_cut_off_by_the_server_is_a_connection_error():
    async with RawServer(lambda ex: Raw([CHUNKED_HEAD + b"5\r\nhel"], close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(OutboundConnectionError, match="closed the connection"):
                await fetch(client, server.url())


# read until close, Connection: close, HTTP/1.0


async def test_body_without_length_is_read_until_the_server_closes():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    async with RawServer(
        lambda ex: Raw([head, b"part one, ", b"part two"], pause_s=0.01, close=True)
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            first = await fetch(client, server.url())
            second = await fetch(client, server.url())
    assert first.body == second.body == b"part one, part two"
    assert server.connections == 2  # such a connection cannot be reused


async def test_body_without_length_over_the_cap_is_cut():
    async with RawServer(
        lambda ex: Raw([b"HTTP/1.1 200 OK\r\n\r\n"] + [b"y" * 10_000] * 10, close=True)
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(ResponseTooLargeError):
                await fetch(client, server.url(), max_response_bytes=25_000)


@pytest.mark.parametrize(
    "response",
    [
        ok(b"bye", "Connection: close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye",  # HTTP/1.0 without keep-alive
    ],
)
async def test_connection_close_is_honoured(response):
    async with RawServer(lambda ex: response) as server:
        async with OutboundClient(policy=DEV) as client:
            for _ in range(3):
                assert (await fetch(client, server.url())).body == b"bye"
    assert server.connections == 3


async def test_a_request_asking_to_close_does_not_reuse_its_connection():
    async with RawServer(lambda ex: ok()) as server:
        async with OutboundClient(policy=DEV) as client:
            for _ in range(2):
                await fetch(client, server.url(), headers={"Connection": "close"})
    assert server.connections == 2
    assert b"Connection: close\r\n" in server.exchanges[0].head
    assert b"keep-alive" not in server.exchanges[0].head


# responses without a body


async def test_head_and_204_have_no_body_even_with_a_length():
    def answer(ex: Exchange) -> bytes:
        if ex.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        if ex.index == 1:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return ok(b"after")

    async with RawServer(answer) as server:
        async with OutboundClient(policy=DEV) as client:
            head = await fetch(client, server.url(), "HEAD")
            no_content = await fetch(client, server.url())
            after = await fetch(client, server.url())
    assert (head.status_code, head.body, head.headers["content-length"]) == (200, b"", "100")
    assert (no_content.status_code, no_content.body) == (204, b"")
    assert after.body == b"after"
    assert server.connections == 1  # no phantom body was waited for or left unread


async def test_304_is_refused_like_every_3xx_without_waiting_for_a_body():
    answer = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
    async with RawServer(lambda ex: answer) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(RedirectRefusedError, match="304"):
                await fetch(client, server.url(), timeout_s=2)


async def test_informational_responses_are_skipped():
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok(b"final")
    )
    async with RawServer(lambda ex: response) as server:
        async with OutboundClient(policy=DEV) as client:
            result = await fetch(client, server.url())
            assert (await fetch(client, server.url())).body == b"final"
    assert (result.status_code, result.body) == (200, b"final")
    assert "link" not in result.headers
    assert server.connections == 1


async def test_header_details_folding_repeats_and_reason_phrases():
    response = (
        b"HTTP/1.1 201\r\n"  # no reason phrase
        b"X-Folded: first\r\n  second\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"X-Spaces:   padded \t\r\n"
        b"Content-Length: 2, 2\r\n\r\nok"
    )
    async with RawServer(lambda ex: response) as server:
        async with OutboundClient(policy=DEV) as client:
            result = await fetch(client, server.url())
    assert result.status_code == 201 and result.body == b"ok"
    assert result.headers["x-folded"] == "first second"
    assert result.headers["set-cookie"] == "a=1, b=2"
    assert result.headers["x-spaces"] == "padded"


async def test_a_redirect_is_refused_and_its_connection_not_reused():
    def answer(ex: Exchange) -> bytes:
        if ex.connection == 1:
            return b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/x\r\nContent-Length: 5\r\n\r\nmoved"
        return ok()

    async with RawServer(answer) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(RedirectRefusedError, match="10.0.0.1"):
                await fetch(client, server.url())
            assert (await fetch(client, server.url())).status_code == 200
    assert server.connections == 2


# malformed responses


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (b"HTTP/1.1 OK\r\n\r\n", "illegal status line"),
        (b"garbage\r\n\r\n", "illegal status line"),
        (b"ICY 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "status_code"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\nName : value\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n", "continuation|illegal header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "UPGRADE|switched protocols"),
    ],
)
async def test_malformed_responses_are_clear_invalid_response_errors(response, match):
    async with RawServer(lambda ex: Raw([response], close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(InvalidResponseError, match=match) as info:
                await fetch(client, server.url(), max_retries=2, retry_backoff_s=0.01)
    assert info.value.error_type == "invalid_response"
    assert info.value.attempts == 1  # a broken server is not asked again
    assert f"http://127.0.0.1:{server.port} sent an invalid HTTP response" in info.value.message


async def test_oversized_response_head_is_capped():
    huge = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 100) for i in range(1000))
    async with RawServer(lambda ex: Raw([huge], close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(InvalidResponseError, match="Receive buffer too long"):
                await fetch(client, server.url())


async def test_a_head_that_never_ends_is_cut_at_the_cap_not_the_timeout():
    # The server keeps sending header lines and never the empty line (nor closes).
    endless = [b"HTTP/1.1 200 OK\r\n"] + [b"X-More: " + b"m" * 1000 + b"\r\n"] * 200
    async with RawServer(lambda ex: Raw(endless)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(InvalidResponseError, match="Receive buffer too long"):
                await fetch(client, server.url(), timeout_s=10)


async def test_an_oversized_chunk_size_line_is_capped():
    async with RawServer(
        lambda ex: Raw([CHUNKED_HEAD + b"5;" + b"e" * 200_000 + b"\r\nhello\r\n0\r\n\r\n"])
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(InvalidResponseError, match="Receive buffer too long"):
                await fetch(client, server.url())


async def test_a_body_shorter_than_its_content_length_is_a_connection_error():
    async with RawServer(
        lambda ex: Raw([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close=True)
    ) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(OutboundConnectionError, match="before the end of the response body"):
                await fetch(client, server.url())


# kept-alive connections that the server closes


async def test_server_closing_an_idle_connection_between_requests_is_invisible():
    """The server answers as keep-alive and closes the connection a little later (its idle timeout)."""
    async with RawServer(lambda ex: Raw([ok(b"fine")], close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            for _ in range(3):
                response = await fetch(client, server.url())
                assert (response.body, response.attempts) == (b"fine", 1)
                await asyncio.sleep(0.05)
    assert server.connections == 3


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_request_crossing_the_servers_close_of_a_reused_connection_is_resent(how):
    """The worst case of the keep-alive race: the request reaches the server just as it closes the
    connection. The client must resend it on a fresh connection, not report an error."""

    def answer(ex: Exchange) -> Raw:
        if ex.connection == 1 and ex.index == 1:
            return Raw(close=how == "close", reset=how == "reset")  # no answer at all
        return Raw([ok(f"conn {ex.connection}".encode())])

    async with RawServer(answer) as server:
        async with OutboundClient(policy=DEV) as client:
            first = await fetch(client, server.url())
            second = await fetch(client, server.url(), max_retries=0)
    assert first.body == b"conn 1"
    assert (second.body, second.attempts) == (b"conn 2", 1)
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_resend():
    async with RawServer(lambda ex: Raw(close=True)) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(OutboundConnectionError, match="without answering"):
                await fetch(client, server.url())
    assert server.connections == 1


async def test_idle_connections_expire():
    async with RawServer(lambda ex: ok()) as server:
        async with OutboundClient(policy=DEV, keepalive_expiry_s=0.05) as client:
            await fetch(client, server.url())
            await fetch(client, server.url())  # within the expiry: reused
            await asyncio.sleep(0.1)
            await fetch(client, server.url())  # after it: a fresh connection
    assert server.connections == 2
    assert [ex.connection for ex in server.exchanges] == [1, 1, 2]


async def test_a_timeout_in_the_middle_of_a_body_discards_the_connection():
    def answer(ex: Exchange) -> Raw:
        if ex.connection == 1:
            return Raw([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"defghij"], pause_s=5)
        return Raw([ok(b"fresh")])

    async with RawServer(answer) as server:
        async with OutboundClient(policy=DEV) as client:
            with pytest.raises(OutboundTimeoutError):
                await fetch(client, server.url(), timeout_s=0.3)
            assert (await fetch(client, server.url())).body == b"fresh"
            assert client.connection_counts() == (1, 1)
    assert server.connections == 2


# the pool


async def test_500_concurrent_requests_stay_within_the_connection_limit():
    def answer(ex: Exchange) -> Raw:
        return Raw(
            [
                b"HTTP/1.1 200 OK\r\n",
                f"Content-Length: 2\r\n\r\n{ex.index % 10}{ex.connection % 10}".encode(),
            ],
            pause_s=0.05,
        )

    async with RawServer(answer) as server:
        async with OutboundClient(policy=DEV) as client:  # the default limit: 256
            responses = await asyncio.gather(*(fetch(client, server.url()) for _ in range(500)))
            assert client.connection_counts()[0] <= 256
        assert all(r.status_code == 200 for r in responses)
        assert server.connections == 256
        assert server.max_open <= 256
        async with OutboundClient(policy=DEV, max_connections=20) as client:
            before = server.connections
            responses = await asyncio.gather(*(fetch(client, server.url()) for _ in range(500)))
        assert all(r.status_code == 200 for r in responses)
        assert server.connections - before == 20  # each of the 20 carried 25 requests


async def test_connections_to_several_origins_share_the_limit():
    async with RawServer(lambda ex: Raw([ok()], pause_s=0.02)) as first, RawServer(lambda ex: ok()) as second:
        async with OutboundClient(policy=DEV, max_connections=4) as client:
            await asyncio.gather(*(fetch(client, first.url()) for _ in range(4)))
            assert client.connection_counts() == (4, 4)
            # All four slots hold idle connections to `first`; `second` takes them over one by one.
            await asyncio.gather(*(fetch(client, second.url()) for _ in range(8)))
            assert client.connection_counts()[0] == 4
    assert first.connections == 4
    assert 1 <= second.connections <= 4


async def test_a_request_cancelled_while_waiting_for_a_connection_gives_nothing_away():
    async with RawServer(
        lambda ex: Raw([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\nok"], pause_s=0.2)
    ) as server:
        async with OutboundClient(policy=DEV, max_connections=1) as client:
            holder = asyncio.create_task(fetch(client, server.url()))
            await asyncio.sleep(0.02)
            with pytest.raises(OutboundTimeoutError):
                await fetch(client, server.url(), timeout_s=0.05)  # waits for the only slot, in vain
            assert (await holder).status_code == 200
            assert (await fetch(client, server.url())).status_code == 200
            assert client.connection_counts() == (1, 1)
    assert server.connections == 1


# TLS


def _certificate_authority() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rftweb test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca_cert, ca_key, hostname: str, tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{hostname}.pem", tmp_path / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A CA, a server context for `tools.test` and a client context trusting only that CA; the name
    resolves to 127.0.0.1 (only the resolver is patched)."""
    from trainer.outbound import client as outbound_client

    async def resolve(host, port):
        return ["127.0.0.1"]

    monkeypatch.setattr(outbound_client, "resolve_host", resolve)
    ca_cert, ca_key = _certificate_authority()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*_leaf(ca_cert, ca_key, "tools.test", tmp_path))
    sni: list[str | None] = []
    server_context.sni_callback = lambda sock, name, context: sni.append(name)
    client_context = ssl.create_default_context(
        cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    return server_context, client_context, sni


async def test_https_uses_the_host_name_for_sni_certificate_and_host_header(tls):
    server_context, client_context, sni = tls
    hosts: list[str] = []

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        hosts.extend(line[6:].decode() for line in head.split(b"\r\n") if line.lower().startswith(b"host: "))
        writer.write(ok(b"secure"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        policy = OutboundPolicy(allowlist=("127.0.0.1/32",))
        async with OutboundClient(policy=policy, ssl_context=client_context) as client:
            response = await client.request("GET", f"https://tools.test:{port}/x")
            assert response.body == b"secure"
        # The same server is not trusted through the default CA bundle, nor under another name.
        async with OutboundClient(policy=policy) as client:
            with pytest.raises(OutboundConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                await client.request("GET", f"https://tools.test:{port}/x")
        async with OutboundClient(policy=policy, ssl_context=client_context) as client:
            with pytest.raises(OutboundConnectionError):
                await client.request("GET", f"https://127.0.0.1:{port}/x")
    finally:
        server.close()
        await server.wait_closed()
    assert sni[0] == "tools.test"
    assert hosts == [f"tools.test:{port}"]


def test_ipv6_literals_are_bracketed_in_the_host_header():
    from trainer.outbound.client import _target

    target = _target("http://[::1]:8080/p")
    assert (target.host, target.port, target.host_header) == ("::1", 8080, b"[::1]:8080")
    assert ipaddress.ip_address(target.host).version == 6
