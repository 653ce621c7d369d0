"""The one HTTP client for everything rftweb sends out (tools, endpoint graders, model judges).

Safety is enforced where the socket is opened, not where the URL is parsed: a custom httpcore network
backend resolves the host itself, checks *every* resolved address against the `OutboundPolicy`, and
then connects to one of the checked addresses. The HTTP layer still uses the host name (Host header,
TLS SNI and certificate verification), so nothing changes for the server, but a DNS answer that
changes between check and connect (rebinding) cannot reach a refused address: there is no second
lookup.

Also here: no redirects followed (a 3xx is an error: the target would escape the policy check of
the URL the user registered), no proxies from the environment, a wall-clock deadline per attempt,
a response size cap enforced while the body streams in, and retries with exponential backoff for
5xx, timeouts and connection errors.
"""

from __future__ import annotations

import asyncio
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

import httpcore
import httpx

from experiments.outbound.policy import OutboundPolicy
from experiments.outbound.signing import SIGNATURE_HEADER, sign_body

logger = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "rftweb/0.1 (+agent-rft)"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
MAX_BACKOFF_S = 8.0
MASK = "••••"
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_POOL_SHARDS = 256  # one connection each by default
# What httpx.AsyncClient would send by default, but never compressed (the size cap counts raw bytes).
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


class PolicyNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves, vets every address, then connects to a vetted address (never resolves twice)."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = host.strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(name))]
        except ValueError:
            try:
                addresses = await resolve_host(name, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"could not resolve {name}: {exc.strerror or exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{name} has no IPv4/IPv6 address")
        # Every answer must pass: a name that resolves to one public and one private address is
        # refused, otherwise an attacker picks which one we reach.
        for address in addresses:
            reason = self._policy.address_refusal(address, host=name)
            if reason is not None:
                logger.warning("outbound request to %s refused: %s is %s", name, address, reason)
                raise BlockedAddressError(
                    f"refused by the outbound policy: {name} resolves to {address}, which is {reason}"
                )
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are not reachable through the outbound client")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class PolicyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the connection pool rebuilt on the policy-checking network backend."""

    def __init__(
        self, *, policy: OutboundPolicy, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # Building an SSL context loads the CA bundle (tens of ms); the shards of a client share one.
        if ssl_context is None:
            ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # httpx builds its pool privately and offers no network_backend argument; replacing the pool
        # is the documented-by-source way to route connects through our backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=PolicyNetworkBackend(policy),
        )


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


class _ShardSet:
    """The pool shards of one `OutboundClient` in one event loop.

    Each shard is a `PolicyTransport` with its own small connection pool, created on first use. A request
    goes to a free shard whose last request went to the same origin (its kept-alive connection is
    reused), else to the shard with the fewest requests in flight (ties rotate).
    """

    def __init__(self, *, count: int, make_transport: Callable[[], PolicyTransport]) -> None:
        self.loop = asyncio.get_running_loop()
        self.transports: list[PolicyTransport | None] = [None] * count
        self.in_flight = [0] * count
        self._origin: list[str | None] = [None] * count
        self._free_by_origin: dict[str, set[int]] = {}  # shards with nothing in flight, by last origin
        self._make_transport = make_transport
        self._next = 0

    def acquire(self, origin: str) -> tuple[int, PolicyTransport]:
        free = self._free_by_origin.get(origin)
        if free:
            index = free.pop()
        else:
            count = len(self.in_flight)
            start = self._next
            self._next = (start + 1) % count
            index, load = start, self.in_flight[start]
            for offset in range(1, count):
                if load == 0:
                    break
                candidate = (start + offset) % count
                if self.in_flight[candidate] < load:
                    index, load = candidate, self.in_flight[candidate]
            previous = self._origin[index]
            if load == 0 and previous is not None:
                self._free_by_origin[previous].discard(index)
        self._origin[index] = origin
        self.in_flight[index] += 1
        transport = self.transports[index]
        if transport is None:
            transport = self.transports[index] = self._make_transport()
        return index, transport

    def release(self, index: int) -> None:
        self.in_flight[index] -= 1
        if self.in_flight[index] == 0:
            self._free_by_origin.setdefault(self._origin[index] or "", set()).add(index)


class OutboundClient:
    """An async, pooled, policy-enforcing HTTP client.

    Connections are spread over `pool_shards` independent transports, each with its own connection
    pool of `max_connections / pool_shards` connections (see `_ShardSet` for which shard a request
    takes). One httpcore pool does not scale to hundreds of concurrent requests: each time a request
    enters or a response closes it re-examines every connection (a readability syscall per idle one)
    for every queued request, and its keep-alive check counts all connections per idle one, so one
    wave of 256 concurrent tool calls cost seconds of CPU in the pool alone. Many one-connection pools
    keep that work constant per request.

    Requests go straight to the transport, not through an `httpx.AsyncClient`: the client layer
    would only add work this client does not want (redirect and auth flows, a cookie jar that would
    let one tool server set cookies for later calls, header merging). The transports are created
    lazily inside the running event loop (they must not outlive or cross loops) and closed by
    `aclose()`.
    """

    def __init__(
        self,
        *,
        policy: OutboundPolicy,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_keepalive_connections: int | None = None,
        pool_shards: int = DEFAULT_POOL_SHARDS,
    ) -> None:
        """`max_connections` and `max_keepalive_connections` (default: `max_connections`) are totals
        over all shards.

        httpcore closes a connection that goes idle whenever its pool holds more connections than the
        keep-alive limit (it compares the pool's size, not its idle count, with the limit), so a
        keep-alive limit below the connection limit makes a busy pool reconnect for nearly every
        request; the default keeps them equal. Idle connections still close after 5 s.
        """
        if max_connections < 1 or pool_shards < 1:
            raise ValueError("max_connections and pool_shards must be at least 1")
        self.policy = policy
        self._shard_count = min(pool_shards, max_connections)
        keepalive = max_connections if max_keepalive_connections is None else max_keepalive_connections
        self._limits = httpx.Limits(
            max_connections=-(-max_connections // self._shard_count),
            max_keepalive_connections=-(-keepalive // self._shard_count) if keepalive > 0 else 0,
        )
        self._shards: _ShardSet | None = None
        self._ssl_context: ssl.SSLContext | None = None

    def _new_transport(self) -> PolicyTransport:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return PolicyTransport(policy=self.policy, limits=self._limits, ssl_context=self._ssl_context)

    def _shard_set(self) -> _ShardSet:
        loop = asyncio.get_running_loop()
        if self._shards is None or self._shards.loop is not loop:
            # Clients from a finished loop cannot be reused (their sockets belong to that loop).
            self._shards = _ShardSet(count=self._shard_count, make_transport=self._new_transport)
        return self._shards

    async def aclose(self) -> None:
        shards, self._shards = self._shards, None
        for transport in shards.transports if shards is not None else []:
            if transport is None:
                continue
            try:
                await transport.aclose()
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
        validate_outbound_url(url)
        destination = describe_destination(url)
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
                    url,
                    content=content,
                    headers=attempt_headers,
                    timeout_s=timeout_s,
                    max_response_bytes=max_response_bytes,
                    destination=destination,
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

    async def _attempt(
        self,
        method: str,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
        max_response_bytes: int,
        destination: str,
    ) -> OutboundResponse:
        request_headers = httpx.Headers(DEFAULT_HEADERS)
        request_headers.update(headers)
        shards = self._shard_set()
        shard, transport = shards.acquire(destination)
        attempt_started = time.perf_counter()
        try:
            # httpx timeouts bound each socket operation; the outer deadline bounds the whole attempt
            # so that a server trickling one byte at a time cannot hold a rollout forever.
            async with asyncio.timeout(timeout_s):
                request = httpx.Request(
                    method,
                    url,
                    content=content,
                    headers=request_headers,
                    extensions={"timeout": httpx.Timeout(timeout_s).as_dict()},
                )
                response = await transport.handle_async_request(request)
                response.request = request
                try:
                    if 300 <= response.status_code < 400:
                        location = response.headers.get("location", "")
                        raise RedirectRefusedError(
                            f"{destination} answered {response.status_code} redirecting to "
                            f"{describe_destination(location) if location else 'nowhere'}; "
                            "redirects are not followed"
                        )
                    encoding = response.headers.get("content-encoding", "identity").strip().lower()
                    if encoding not in ("", "identity"):
                        raise InvalidResponseError(
                            f"{destination} sent a {encoding}-encoded body although identity was requested"
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_response_bytes:
                        raise ResponseTooLargeError(
                            f"{destination} announced {int(declared)} bytes, over the {max_response_bytes}-byte limit"
                        )
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > max_response_bytes:
                            raise ResponseTooLargeError(
                                f"the response from {destination} exceeded the {max_response_bytes}-byte limit"
                            )
                    return OutboundResponse(
                        status_code=response.status_code,
                        headers={key.lower(): value for key, value in response.headers.items()},
                        body=bytes(body),
                        latency_ms=(time.perf_counter() - attempt_started) * 1000,
                        attempts=1,
                    )
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise OutboundTimeoutError(f"{destination} did not answer within {timeout_s:g} s") from exc
        except httpx.UnsupportedProtocol as exc:
            raise InvalidURLError("only http:// and https:// URLs can be called") from exc
        except (httpx.TransportError, httpcore.ConnectError) as exc:
            raise OutboundConnectionError(
                f"could not complete the request to {destination}: {type(exc).__name__}"
                + (f" ({exc})" if str(exc) and "://" not in str(exc) else "")
            ) from exc
        finally:
            shards.release(shard)


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
