"""The one HTTP client for everything rftweb sends out (tools, endpoint graders, model judges).

HTTP/1.1 itself is `h11` (the protocol library under `httpcore2`/`httpx2`: request framing and
validation, response parsing, keep-alive rules; `connection.py` moves its bytes), TLS is the
standard library's through asyncio, and the connections sit in a small keep-alive pool
(`pool.py`). Safety is added where the socket is opened, not where the URL is parsed: the network
backend (`VettedNetworkBackend`, an `httpcore2` network backend, shared with `policy_http_client`)
resolves the host itself, checks *every* resolved address against the `OutboundPolicy`, and then
connects to one of the checked addresses.
TLS still uses the host name (SNI and certificate verification) and so does the Host header, so
nothing changes for the server, but a DNS answer that changes between check and connect
(rebinding) cannot reach a refused address: there is no second lookup. Addresses are tried
happy-eyeballs style (the next one starts when the previous one has not connected within
`happy_eyeballs_delay_s`, each has its own connect timeout), so a dead address does not eat the
deadline of the request.

Also here: no redirects followed (a 3xx is an error: the target would escape the policy check of
the URL the user registered), no proxies from the environment and no cookie jar (httpcore has
none), a wall-clock deadline per attempt, a response size cap enforced while the body streams
in, and retries with exponential backoff for 5xx, timeouts and connection errors.
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import ipaddress
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import h11
import httpcore2
import httpx2

from trainer.outbound.connection import BodyTooLargeError, HTTP11Connection, ServerDisconnectedError
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.pool import ConnectionPool
from trainer.outbound.signing import SIGNATURE_HEADER, sign_body
from trainer.outbound.streams import open_tcp_stream

logger = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "rftweb/0.1 (+agent-rft)"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
MAX_BACKOFF_S = 8.0
MASK = "••••"
DEFAULT_MAX_CONNECTIONS = 256
# Sent with every request (a header of the caller overrides one of these); never compressed: the size
# cap counts raw bytes.
DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "identity",
    "User-Agent": USER_AGENT,
}


class OutboundError(Exception):
    """An outbound request that produced no usable HTTP response. `error_type` is a TOOL_ERROR_TYPE."""

    error_type = "connection"

    def __init__(self, message: str, *, attempts: int = 1, latency_ms: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.latency_ms = latency_ms


class BlockedAddressError(OutboundError):
    """The outbound policy refused the destination (SSRF protection)."""

    error_type = "blocked"


class InvalidURLError(BlockedAddressError):
    """Not an http(s) URL with a host; such a URL is refused like a blocked address."""


class RedirectRefusedError(BlockedAddressError):
    """The server answered with a redirect; redirects are never followed."""


class OutboundTimeoutError(OutboundError):
    error_type = "timeout"


class OutboundConnectionError(OutboundError):
    error_type = "connection"


class ResponseTooLargeError(OutboundError):
    error_type = "too_large"


class InvalidResponseError(OutboundError):
    error_type = "invalid_response"


async def resolve_host(host: str, port: int) -> list[str]:
    """All addresses `host` resolves to, in resolver order (tests patch this for SSRF cases)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass
class OutboundResponse:
    """A complete (size-capped) HTTP response."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float
    attempts: int

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def describe_destination(url: str) -> str:
    """scheme://host:port of a URL, for messages: paths and queries may carry secrets."""
    try:
        parsed = httpx2.URL(url)
    except Exception:
        return "an invalid URL"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def display_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may carry secrets), for echoes in the UI."""
    try:
        parsed = httpx2.URL(url)
    except Exception:
        return "an invalid URL"
    return f"{describe_destination(url)}{parsed.path}"


MAX_URL_LENGTH = 2000
# The characters of an (IDNA-encoded) host name; "_" as DNS allows it (docker service names).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")


def validate_outbound_url(url: str) -> httpx2.URL:
    """The one URL rule of every outbound URL (tools, endpoint graders, judges, run files): checked
    the same way when a URL is registered and when it is called.

    An absolute http:// or https:// URL of at most MAX_URL_LENGTH characters, with a host name or
    IP literal, a port in 1..65535 and no credentials. Returns the parsed URL; raises
    InvalidURLError with a message that names the problem (and never echoes the URL: it may hold a
    secret)."""
    if not isinstance(url, str) or not url:
        raise InvalidURLError("not a valid URL")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURLError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if url != url.strip():
        raise InvalidURLError("the URL starts or ends with a space")
    try:
        parsed = httpx2.URL(url)
    except Exception as exc:
        raise InvalidURLError("not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidURLError("only http:// and https:// URLs can be called")
    if not parsed.host:
        raise InvalidURLError("the URL has no host")
    if parsed.userinfo:
        raise InvalidURLError("credentials in the URL are not allowed; use a header instead")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidURLError("the port must be between 1 and 65535")
    host = parsed.raw_host.decode("ascii", errors="replace")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if _HOST_NAME.fullmatch(host) is None:
            raise InvalidURLError("the host is not a valid host name or IP address") from None
    return parsed


def mask_secret(value: str) -> str:
    """`••••1234` for values of 12+ characters, `••••` for shorter ones (their tail would reveal too much).

    The one masking rule of the app: pages, the API and the "Try it" request echo all use it.
    """
    return MASK + value[-4:] if len(value) >= 12 else MASK


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of a secret value replaced (servers sometimes echo headers)."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    return text


def backoff_delay(*, retry_index: int, base_s: float) -> float:
    """Exponential backoff with a little jitter so that many rollouts do not retry in lockstep."""
    delay = min(base_s * (2**retry_index), MAX_BACKOFF_S)
    return delay * (1.0 + random.random() * 0.1)


DEFAULT_CONNECT_TIMEOUT_S = 5.0
HAPPY_EYEBALLS_DELAY_S = 0.25
KEEPALIVE_EXPIRY_S = 5.0

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_token(value: str, what: str) -> None:
    if _TOKEN.fullmatch(value) is None:
        raise OutboundError(f"the request cannot be sent: the {what} is not a valid HTTP token")


def _check_field_value(value: str) -> None:
    # h11 refuses these too, but only once a connection is open: checked first, nothing is sent.
    if _FIELD_VALUE_FORBIDDEN.search(value) is not None:
        raise OutboundError(
            "the request cannot be sent: a header value contains a line break or another control character"
        )


@dataclass(frozen=True, slots=True)
class _Target:
    """What one URL means for a request, parsed once per distinct URL (see `_target`)."""

    scheme: str
    host: str  # ASCII (IDNA) name or address literal without brackets: connect, policy, TLS SNI
    port: int
    request_target: bytes  # path and query, as sent in the request line
    host_header: bytes
    destination: str  # scheme://host:port, for messages
    key: str  # the connection pool's origin key


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> _Target:
    """The parsed request target of `url` (validated like `validate_outbound_url`); tools and graders
    call the same few URLs over and over, so the parse is cached."""
    parsed = validate_outbound_url(url)
    try:
        host = parsed.raw_host.decode("ascii")
        request_target = parsed.raw_path.decode("ascii") or "/"
        host_header = parsed.netloc.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidURLError("not a valid URL") from exc
    if " " in request_target or _FIELD_VALUE_FORBIDDEN.search(request_target + host_header):
        raise InvalidURLError("not a valid URL")
    scheme = parsed.scheme
    port = parsed.port or (443 if scheme == "https" else 80)
    return _Target(
        scheme=scheme,
        host=host,
        port=port,
        request_target=request_target.encode("ascii"),
        host_header=host_header.encode("ascii"),
        destination=describe_destination(url),
        key=f"{scheme}://{host}:{port}",
    )


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host"})
_DEFAULT_HEADERS_LOWER = [
    (name.lower(), name.encode(), value.encode()) for name, value in DEFAULT_HEADERS.items()
]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _request_headers(
    method: str, target: _Target, headers: Mapping[str, str], content: bytes
) -> list[tuple[bytes, bytes]]:
    """The header fields of one request: Host, the defaults, the caller's, and the client's own length.

    Header names and values are checked (no line breaks or other control characters can smuggle a
    second header or request in); Host, Content-Length and Transfer-Encoding are always the client's.
    """
    _check_token(method, "method")
    names: set[str] = set()
    own: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            continue
        _check_token(name, "header name")
        _check_field_value(value)
        names.add(lower)
        own.append((name.encode("ascii"), value.encode("utf-8")))
    fields = [(b"Host", target.host_header)]
    fields.extend((name, value) for lower, name, value in _DEFAULT_HEADERS_LOWER if lower not in names)
    fields.extend(own)
    if content or method in _BODY_METHODS:
        fields.append((b"Content-Length", str(len(content)).encode("ascii")))
    return fields


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
    else:
        text = str(exc)
    name = type(exc).__name__
    return f"{name} ({text})" if text and "://" not in text else name


class VettedNetworkBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend with the SSRF policy: resolve once, vet, connect to a vetted address.

    httpcore2 asks it for a TCP connection to `host` (the URL's host name) and then starts TLS on the
    returned stream with that same name, so SNI and certificate checks are by name while the socket
    goes to an address this backend checked. Addresses are raced happy-eyeballs style (RFC 8305
    section 5, without family interleaving: resolver order): the next address starts when the
    previous one has neither connected nor failed within `happy_eyeballs_delay_s`, the first to
    connect wins, each attempt has its own `connect_timeout_s`.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        happy_eyeballs_delay_s: float = HAPPY_EYEBALLS_DELAY_S,
    ) -> None:
        self.policy = policy
        self.connect_timeout_s = connect_timeout_s
        self.happy_eyeballs_delay_s = happy_eyeballs_delay_s

    async def vetted_addresses(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to, all allowed by the policy (else BlockedAddressError)."""
        destination = f"{host}:{port}"
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await resolve_host(host, port)
            except OSError as exc:
                raise OutboundConnectionError(
                    f"could not complete the request to {destination}: "
                    f"could not resolve {host} ({exc.strerror or exc})"
                ) from exc
        if not addresses:
            raise OutboundConnectionError(f"{host} has no IPv4/IPv6 address")
        # Every answer must pass: a name that resolves to one public and one private address is
        # refused, otherwise an attacker picks which one we reach.
        for address in addresses:
            reason = self.policy.address_refusal(address, host=host)
            if reason is not None:
                logger.warning("outbound request to %s refused: %s is %s", host, address, reason)
                raise BlockedAddressError(
                    f"refused by the outbound policy: {host} resolves to {address}, which is {reason}"
                )
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await self.vetted_addresses(host, port)
        per_address = self.connect_timeout_s if timeout is None else min(timeout, self.connect_timeout_s)
        if len(addresses) == 1:
            return await open_tcp_stream(addresses[0], port, timeout=per_address)
        winner: httpcore2.AsyncNetworkStream | None = None
        errors: list[tuple[str, Exception]] = []

        async def attempt(address: str, finished: anyio.Event, scope: anyio.CancelScope) -> None:
            nonlocal winner
            try:
                stream = await open_tcp_stream(address, port, timeout=per_address)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                errors.append((address, exc))
                finished.set()
                return
            if winner is None:
                winner = stream
                scope.cancel()  # the other attempts
            else:
                await stream.aclose()
            finished.set()

        async with anyio.create_task_group() as group:
            for address in addresses:
                finished = anyio.Event()
                group.start_soon(attempt, address, finished, group.cancel_scope)
                with anyio.move_on_after(self.happy_eyeballs_delay_s):
                    await finished.wait()
                if winner is not None:
                    break
        if winner is not None:
            return winner
        tried = "; ".join(f"{address}: {_describe_os_error(exc)}" for address, exc in errors)
        raise httpcore2.ConnectError(f"could not connect to any address of {host} ({tried})")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        raise BlockedAddressError("refused by the outbound policy: Unix sockets are never connected to")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


_BYTEARRAY_REPR = re.compile(r"bytearray\((b'.*?'|b\".*?\")\)")
_BODY_CUT = "peer closed connection without sending complete message body"


class OutboundClient:
    """An async, pooled, policy-enforcing HTTP/1.1 client over `h11`.

    One `ConnectionPool` per event loop with at most `max_connections` connections over
    all origins, finished keep-alive connections reused per origin (closed after
    `keepalive_expiry_s` idle; an idle connection the server has closed is noticed before reuse). A
    request on a reused connection that the server closed just as it went out is sent again on a
    fresh connection, transparently. There is no cookie jar (one tool server cannot set cookies for
    later calls), no proxy from the environment and no redirect following. The pool is created
    lazily inside the running event loop (connections must not outlive or cross loops) and closed by
    `aclose()`; the client can be used again afterwards.
    """

    def __init__(
        self,
        *,
        policy: OutboundPolicy,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_keepalive_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        happy_eyeballs_delay_s: float = HAPPY_EYEBALLS_DELAY_S,
    ) -> None:
        """`max_connections` bounds the open connections; `max_keepalive_connections` (default:
        `max_connections`) bounds the idle ones kept for reuse. `ssl_context` replaces the default
        verification context (the system's CA store), for example to trust a private CA.
        `connect_timeout_s` bounds each address's connection attempt (the request's own deadline
        bounds the whole)."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.policy = policy
        self.max_connections = max_connections
        self.max_keepalive_connections = (
            max_connections if max_keepalive_connections is None else max_keepalive_connections
        )
        self.keepalive_expiry_s = keepalive_expiry_s
        self.backend = VettedNetworkBackend(
            policy, connect_timeout_s=connect_timeout_s, happy_eyeballs_delay_s=happy_eyeballs_delay_s
        )
        self._pool: ConnectionPool | None = None
        self._ssl_context = ssl_context

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Building a context loads the CA store (tens of ms): one per client, shared by its connections.
            self._ssl_context = httpx2.create_ssl_context(trust_env=False)
        self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    async def _open_connection(self, target: _Target) -> HTTP11Connection:
        """A new connection to a vetted address of the target's host; TLS by the host's name (SNI
        and certificate check), as the Host header."""
        stream = await self.backend.connect_tcp(target.host, target.port)
        if target.scheme == "https":
            stream = await stream.start_tls(self._tls_context(), server_hostname=target.host)
        return HTTP11Connection(stream, keepalive_expiry_s=self.keepalive_expiry_s)

    def _connection_pool(self) -> ConnectionPool:
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            # A pool from a finished loop cannot be reused (its sockets belong to that loop).
            pool = self._pool = ConnectionPool(
                max_connections=self.max_connections,
                max_idle=self.max_keepalive_connections,
            )
        return pool

    def connection_counts(self) -> tuple[int, int]:
        """(open connections, idle ones among them) of this loop's pool."""
        if self._pool is None:
            return 0, 0
        return self._pool.opened, self._pool.idle_count

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.aclose()
            await asyncio.sleep(0)  # let the transports finish closing
        except RuntimeError:  # created in a loop that has since closed
            logger.debug("outbound client belonged to a closed event loop", exc_info=True)

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retries: int = 0,
        retry_backoff_s: float = 0.5,
        signing_secret: str | None = None,
    ) -> OutboundResponse:
        """Send one request, retrying 5xx/timeouts/connection errors up to `max_retries` times.

        Returns the response for any non-3xx status (the last one when 5xx persisted); raises an
        `OutboundError` subclass when no usable response came. Messages never contain header values,
        the URL's path/query or the signing secret.
        """
        target = _target(url)
        destination = target.destination
        headers = headers or {}
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            attempt_headers = headers
            if signing_secret:  # signed per attempt: the signature carries the time it was sent
                attempt_headers = {
                    **headers,
                    SIGNATURE_HEADER: sign_body(secret=signing_secret, body=content),
                }
            retryable: OutboundError | None = None
            try:
                response = await self._attempt(
                    method,
                    target,
                    content=content,
                    headers=attempt_headers,
                    timeout_s=timeout_s,
                    max_response_bytes=max_response_bytes,
                )
            except (OutboundTimeoutError, OutboundConnectionError) as exc:
                retryable = exc
            except OutboundError as exc:
                exc.message = redact(exc.message, _secrets(headers, signing_secret))
                exc.args = (exc.message,)
                exc.attempts, exc.latency_ms = attempts, (time.perf_counter() - started) * 1000
                raise
            else:
                response.attempts = attempts
                response.latency_ms = (time.perf_counter() - started) * 1000
                if response.status_code < 500 or attempts > max_retries:
                    return response
                logger.info("outbound %s answered %s, retrying", destination, response.status_code)
            if retryable is not None:
                if attempts > max_retries:
                    retryable.message = redact(retryable.message, _secrets(headers, signing_secret))
                    retryable.args = (retryable.message,)
                    retryable.attempts = attempts
                    retryable.latency_ms = (time.perf_counter() - started) * 1000
                    raise retryable
                logger.info("outbound %s failed (%s), retrying", destination, retryable.error_type)
            await asyncio.sleep(backoff_delay(retry_index=attempts - 1, base_s=retry_backoff_s))

    async def _attempt(
        self,
        method: str,
        target: _Target,
        *,
        content: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        max_response_bytes: int,
    ) -> OutboundResponse:
        destination = target.destination
        fields = _request_headers(method, target, headers, content)
        pool = self._connection_pool()
        attempt_started = time.perf_counter()
        try:
            # One wall-clock deadline for the whole attempt (pool wait, connect, TLS, request,
            # response), so that a server trickling one byte at a time cannot hold a rollout forever.
            async with asyncio.timeout(timeout_s):
                return await self._exchange(
                    pool, method, target, fields, content, max_response_bytes, attempt_started
                )
        except TimeoutError as exc:
            raise OutboundTimeoutError(f"{destination} did not answer within {timeout_s:g} s") from exc
        except h11.LocalProtocolError as exc:
            raise OutboundError(f"the request to {destination} cannot be sent: {exc}") from exc
        except ServerDisconnectedError as exc:
            raise OutboundConnectionError(
                f"could not complete the request to {destination}: "
                "the server closed the connection without answering"
            ) from exc
        except h11.RemoteProtocolError as exc:
            text = str(exc)
            if _BODY_CUT in text:
                raise OutboundConnectionError(
                    f"could not complete the request to {destination}: the server closed the connection "
                    "before the end of the response body"
                ) from exc
            text = _BYTEARRAY_REPR.sub(r"\1", text)  # h11 quotes the offending line as bytearray(b'...')
            raise InvalidResponseError(f"{destination} sent an invalid HTTP response: {text}") from exc
        except (httpcore2.NetworkError, httpcore2.TimeoutException, OSError) as exc:
            raise OutboundConnectionError(
                f"could not complete the request to {destination}: {_describe_os_error(exc)}"
            ) from exc

    async def _exchange(
        self,
        pool: ConnectionPool,
        method: str,
        target: _Target,
        fields: list[tuple[bytes, bytes]],
        content: bytes,
        max_response_bytes: int,
        attempt_started: float,
    ) -> OutboundResponse:
        raw_method = method.encode("ascii")
        while True:
            connection = await pool.acquire(target.key)
            reused = connection is not None
            reusable = False
            try:
                if connection is None:
                    # A new connection: resolved, vetted and connected only now (never per request).
                    connection = await self._open_connection(target)
                try:
                    head = await connection.request(raw_method, target.request_target, fields, content)
                except (ServerDisconnectedError, httpcore2.ReadError, httpcore2.WriteError):
                    if reused:
                        # Not a byte of an answer on a reused connection: the server closed it while
                        # it sat idle and our request crossed its FIN/RST. Send it again on another
                        # connection (each such failure discards one, so this ends with a fresh one).
                        logger.debug(
                            "outbound %s: kept-alive connection was closed, resending", target.destination
                        )
                        continue
                    raise
                result = await self._read_response(
                    connection, head, method, target.destination, max_response_bytes, attempt_started
                )
                reusable = True
                return result
            finally:
                # Whatever did not end with a complete response (refused, cut, cancelled) is closed.
                await pool.release(target.key, connection, reusable=reusable)

    async def _read_response(
        self,
        connection: HTTP11Connection,
        head: h11.Response,
        method: str,
        destination: str,
        max_response_bytes: int,
        attempt_started: float,
    ) -> OutboundResponse:
        status = head.status_code
        response_headers: dict[str, str] = {}
        for raw_name, raw_value in head.headers:  # h11 gives the names in lower case
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            previous = response_headers.get(name)
            response_headers[name] = value if previous is None else f"{previous}, {value}"
        if 300 <= status < 400:
            location = response_headers.get("location", "")
            raise RedirectRefusedError(
                f"{destination} answered {status} redirecting to "
                f"{describe_destination(location) if location else 'nowhere'}; "
                "redirects are not followed"
            )
        encoding = response_headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidResponseError(
                f"{destination} sent a {encoding}-encoded body although identity was requested"
            )
        declared = response_headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > max_response_bytes and method != "HEAD":
            raise ResponseTooLargeError(
                f"{destination} announced {int(declared)} bytes, over the {max_response_bytes}-byte limit"
            )
        try:
            body = await connection.read_body(max_response_bytes)
        except BodyTooLargeError as exc:
            raise ResponseTooLargeError(
                f"the response from {destination} exceeded the {max_response_bytes}-byte limit"
            ) from exc
        return OutboundResponse(
            status_code=status,
            headers=response_headers,
            body=body,
            latency_ms=(time.perf_counter() - attempt_started) * 1000,
            attempts=1,
        )


def _secrets(headers: Mapping[str, str], signing_secret: str | None) -> list[str]:
    """The values an error message must not echo (servers sometimes echo headers)."""
    return [*headers.values(), *([signing_secret] if signing_secret else [])]


def run_sync(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    """Run an async operation from synchronous code (the "Try it"/"Run grader" views).

    Inside a running loop (an async view) the work moves to a short-lived thread with its own loop.
    """

    async def main() -> T:
        return await coroutine_factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rft-outbound-sync") as pool:
        return pool.submit(asyncio.run, main()).result()


@dataclass
class SentRequest:
    """What was sent, for display: header values of secrets are masked."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: one server's Set-Cookie never follows later requests."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return

    def extract_cookies(self, response: Any, request: Any) -> None:
        return


def policy_http_client(
    policy: OutboundPolicy,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_connections: int = 20,
    ssl_context: ssl.SSLContext | None = None,
    **client_options: Any,
) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` on the same network backend as `OutboundClient`, for protocols that
    need httpx2 itself (the `mcp` SDK's streamable HTTP transport takes one): every connection is
    resolved once, vetted by `policy` and made to a vetted address; no proxy from the environment,
    no cookie jar, no redirects followed (a redirect would be vetted again at connect time anyway).
    Its connection pool is httpcore2's own: fine for a few long-lived sessions, not for the
    hundreds of concurrent tool calls `OutboundClient` serves."""
    transport = httpx2.AsyncHTTPTransport(verify=ssl_context or True, trust_env=False)
    # httpx2's transport takes no network backend: give it a pool that has ours.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=ssl_context or httpx2.create_ssl_context(trust_env=False),
        max_connections=max_connections,
        http1=True,
        http2=False,
        network_backend=VettedNetworkBackend(policy, connect_timeout_s=connect_timeout_s),
    )
    return httpx2.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        cookies=_NoCookies(),
        timeout=timeout_s,
        **client_options,
    )
