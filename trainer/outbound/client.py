"""The one HTTP client for everything rftweb sends out (tools, endpoint graders, model judges).

Safety is enforced where the socket is opened, not where the URL is parsed: before a connection is
opened the client resolves the host itself, checks *every* resolved address against the
`OutboundPolicy`, and then connects to one of the checked addresses. The HTTP layer still uses the
host name (Host header, TLS SNI and certificate verification), so nothing changes for the server, but
a DNS answer that changes between check and connect (rebinding) cannot reach a refused address: there
is no second lookup.

Also here: no redirects followed (a 3xx is an error: the target would escape the policy check of
the URL the user registered), no proxies from the environment, no cookie jar, a wall-clock deadline
per attempt, a response size cap enforced while the body streams in, and retries with exponential
backoff for 5xx, timeouts and connection errors. HTTP/1.1 itself (parsing, framing, the keep-alive
connection pool) is `trainer.outbound.http11`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from trainer.outbound import http11
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import SIGNATURE_HEADER, sign_body

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
    "Connection": "keep-alive",
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
        parsed = httpx.URL(url)
    except Exception:
        return "an invalid URL"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def display_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may carry secrets), for echoes in the UI."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "an invalid URL"
    return f"{describe_destination(url)}{parsed.path}"


def validate_outbound_url(url: str) -> httpx.URL:
    """The parsed URL if it is an absolute http(s) URL with a host and no credentials."""
    try:
        parsed = httpx.URL(url)
    except Exception as exc:
        raise InvalidURLError("not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidURLError("only http:// and https:// URLs can be called")
    if not parsed.host:
        raise InvalidURLError("the URL has no host")
    if parsed.userinfo:
        raise InvalidURLError("credentials in the URL are not allowed; use a header instead")
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


@dataclass(frozen=True, slots=True)
class _Target:
    """What one URL means for a request, parsed once per distinct URL (see `_target`)."""

    scheme: str
    host: str  # ASCII (IDNA) name or address literal without brackets: connect, policy, TLS SNI
    port: int
    request_target: str  # percent-encoded path and query
    host_header: str
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
        http11.check_field_value(request_target)
        http11.check_field_value(host_header)
    except (UnicodeDecodeError, http11.LocalProtocolError) as exc:
        raise InvalidURLError("not a valid URL") from exc
    if " " in request_target:
        raise InvalidURLError("not a valid URL")
    scheme = parsed.scheme
    port = parsed.port or (443 if scheme == "https" else 80)
    return _Target(
        scheme=scheme,
        host=host,
        port=port,
        request_target=request_target,
        host_header=host_header,
        destination=describe_destination(url),
        key=f"{scheme}://{host}:{port}",
    )


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_DEFAULT_HEADERS_LOWER = [(name.lower(), f"{name}: {value}") for name, value in DEFAULT_HEADERS.items()]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _request_message(
    method: str, target: _Target, headers: Mapping[str, str], content: bytes
) -> tuple[bytes, bool]:
    """The bytes of one HTTP/1.1 request and whether it asks the server to close the connection.

    Header names and values are checked (no line breaks or other control characters can smuggle a
    second header or request in); Content-Length and Transfer-Encoding are always the client's own.
    """
    http11.check_token(method, "method")
    names: set[str] = set()
    lines = [f"{method} {target.request_target} HTTP/1.1"]
    own: list[str] = []
    close = False
    for name, value in headers.items():
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            continue
        http11.check_token(name, "header name")
        http11.check_field_value(value)
        names.add(lower)
        own.append(f"{name}: {value}")
        if lower == "connection" and "close" in value.lower():
            close = True
    if "host" not in names:
        lines.append(f"Host: {target.host_header}")
    lines.extend(line for lower, line in _DEFAULT_HEADERS_LOWER if lower not in names)
    lines.extend(own)
    if content or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(content)}")
    lines.append("\r\n")
    head = "\r\n".join(lines).encode("utf-8")
    return (head + content if content else head), close


def _describe_os_error(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    name = type(exc).__name__
    return f"{name} ({text})" if text and "://" not in text else name


class OutboundClient:
    """An async, pooled, policy-enforcing HTTP/1.1 client.

    Requests go over `trainer.outbound.http11` connections: one bounded pool per event loop with
    at most `max_connections` connections over all origins, finished keep-alive connections reused
    per origin (closed after 5 s idle). A request on a reused connection that the server had already
    closed is sent again on a fresh connection, transparently. There is no cookie jar (one tool server
    cannot set cookies for later calls), no proxy from the environment and no redirect following.
    The pool is created lazily inside the running event loop (connections must not outlive or cross
    loops) and closed by `aclose()`; the client can be used again afterwards.
    """

    def __init__(
        self,
        *,
        policy: OutboundPolicy,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_keepalive_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`max_connections` bounds the open connections; `max_keepalive_connections` (default:
        `max_connections`) bounds the idle ones kept for reuse. `ssl_context` replaces the default
        verification context (certifi's CA bundle), for example to trust a private CA."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.policy = policy
        self.max_connections = max_connections
        self.max_keepalive_connections = (
            max_connections if max_keepalive_connections is None else max_keepalive_connections
        )
        self._pool: http11.ConnectionPool | None = None
        self._ssl_context = ssl_context

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # Building a context loads the CA bundle (tens of ms): one per client, shared by its connections.
            context = httpx.create_ssl_context(trust_env=False)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _connection_pool(self) -> http11.ConnectionPool:
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            # A pool from a finished loop cannot be reused (its sockets belong to that loop).
            pool = self._pool = http11.ConnectionPool(
                max_connections=self.max_connections, max_idle=self.max_keepalive_connections
            )
        return pool

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
        secrets = [*(headers or {}).values(), *([signing_secret] if signing_secret else [])]
        started = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            attempt_headers = dict(headers or {})
            if signing_secret:
                attempt_headers[SIGNATURE_HEADER] = sign_body(secret=signing_secret, body=content)
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
                exc.message = redact(exc.message, secrets)
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
                    retryable.message = redact(retryable.message, secrets)
                    retryable.args = (retryable.message,)
                    retryable.attempts = attempts
                    retryable.latency_ms = (time.perf_counter() - started) * 1000
                    raise retryable
                logger.info("outbound %s failed (%s), retrying", destination, retryable.error_type)
            await asyncio.sleep(backoff_delay(retry_index=attempts - 1, base_s=retry_backoff_s))

    async def _connect(self, target: _Target) -> http11.Connection:
        """Resolve once, vet every address, then connect to a vetted address (never resolves twice)."""
        name = target.host
        try:
            addresses = [str(ipaddress.ip_address(name))]
        except ValueError:
            try:
                addresses = await resolve_host(name, target.port)
            except OSError as exc:
                raise OutboundConnectionError(
                    f"could not complete the request to {target.destination}: "
                    f"could not resolve {name} ({exc.strerror or exc})"
                ) from exc
        if not addresses:
            raise OutboundConnectionError(f"{name} has no IPv4/IPv6 address")
        # Every answer must pass: a name that resolves to one public and one private address is
        # refused, otherwise an attacker picks which one we reach.
        for address in addresses:
            reason = self.policy.address_refusal(address, host=name)
            if reason is not None:
                logger.warning("outbound request to %s refused: %s is %s", name, address, reason)
                raise BlockedAddressError(
                    f"refused by the outbound policy: {name} resolves to {address}, which is {reason}"
                )
        ssl_context = self._tls_context() if target.scheme == "https" else None
        errors: list[OSError] = []
        for address in addresses:
            try:
                return await http11.open_connection(
                    address, target.port, ssl_context=ssl_context, server_hostname=name
                )
            except OSError as exc:
                errors.append(exc)
        raise OutboundConnectionError(
            f"could not complete the request to {target.destination}: could not connect, "
            + _describe_os_error(errors[-1])
        ) from errors[-1]

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
        try:
            message, close_after = _request_message(method, target, headers, content)
        except http11.LocalProtocolError as exc:
            raise OutboundError(f"the request to {destination} cannot be sent: {exc}") from exc
        pool = self._connection_pool()
        head_request = method == "HEAD"
        attempt_started = time.perf_counter()
        try:
            # One wall-clock deadline for the whole attempt (pool wait, connect, TLS, request,
            # response), so that a server trickling one byte at a time cannot hold a rollout forever.
            async with asyncio.timeout(timeout_s):
                while True:
                    connection, reused = await pool.acquire(
                        target.key, functools.partial(self._connect, target)
                    )
                    reusable = False
                    try:
                        try:
                            connection.write_request(message)
                            head = await connection.read_head(head_request=head_request)
                        except http11.ConnectionClosedError as exc:
                            if reused and exc.before_response:
                                # The server closed the kept-alive connection while it sat idle.
                                logger.debug(
                                    "outbound %s: kept-alive connection was closed, reconnecting", destination
                                )
                                continue
                            raise
                        status = head.status_code
                        if 300 <= status < 400:
                            location = head.headers.get("location", "")
                            raise RedirectRefusedError(
                                f"{destination} answered {status} redirecting to "
                                f"{describe_destination(location) if location else 'nowhere'}; "
                                "redirects are not followed"
                            )
                        encoding = head.headers.get("content-encoding", "identity").strip().lower()
                        if encoding not in ("", "identity"):
                            raise InvalidResponseError(
                                f"{destination} sent a {encoding}-encoded body although identity was requested"
                            )
                        body = await connection.read_body(head, max_bytes=max_response_bytes)
                        reusable = head.keep_alive and not close_after
                        return OutboundResponse(
                            status_code=status,
                            headers=head.headers,
                            body=body,
                            latency_ms=(time.perf_counter() - attempt_started) * 1000,
                            attempts=1,
                        )
                    finally:
                        pool.release(connection, reusable=reusable)
        except TimeoutError as exc:
            raise OutboundTimeoutError(f"{destination} did not answer within {timeout_s:g} s") from exc
        except http11.BodyTooLargeError as exc:
            if exc.declared is not None:
                raise ResponseTooLargeError(
                    f"{destination} announced {exc.declared} bytes, over the {max_response_bytes}-byte limit"
                ) from exc
            raise ResponseTooLargeError(
                f"the response from {destination} exceeded the {max_response_bytes}-byte limit"
            ) from exc
        except http11.RemoteProtocolError as exc:
            raise InvalidResponseError(f"{destination} sent an invalid HTTP response: {exc}") from exc
        except http11.ConnectionClosedError as exc:
            raise OutboundConnectionError(f"could not complete the request to {destination}: {exc}") from exc
        except OSError as exc:
            raise OutboundConnectionError(
                f"could not complete the request to {destination}: {_describe_os_error(exc)}"
            ) from exc


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
