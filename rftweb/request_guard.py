"""An ASGI middleware in front of Django that judges a request from its headers before its body is read.

Django's ASGI handler reads the whole body (spooled to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE)
before any middleware, authentication or view runs. Behind a server that streams bodies (uvicorn
pauses reading the socket until the app asks for more), this guard makes sure a body is only read
when it may be:

- a path that needs a login, asked by a client without a valid session or token, is refused (403 for
  the API, a redirect to the login page otherwise) without reading a byte of the body;
- a declared Content-Length over the path's limit is answered 413 at once;
- a body without a length (Transfer-Encoding: chunked) is counted as it arrives and cut at the limit
  with a 413.

The limit is RFT_MAX_UPLOAD_BYTES (plus the multipart framing) on the upload URLs named in
RFT_UPLOAD_URL_NAMES, RFT_MAX_REQUEST_BYTES everywhere else. Refusals close the connection, so that
the server does not go on receiving (and discarding) the rest of a large body.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from urllib.parse import quote

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.shortcuts import resolve_url
from django.urls import Resolver404, resolve

from experiments.import_helper import page_started

# Room for the multipart boundaries and the other form fields around an upload's file.
MULTIPART_OVERHEAD_BYTES = 1024 * 1024
# Bodies up to this size are left to Django's own checks (CSRF, authentication) as usual.
SMALL_BODY_BYTES = 64 * 1024


class RequestBodyGuard:
    """`app` serves every request with a declared length (or none); `chunked_app`, when given, the
    ones whose body comes chunked (a WSGI app cannot read a body of unknown length); `upload_app`, when
    given, those with a declared length to an upload URL (rftweb/upload_lane.py)."""

    def __init__(self, app, *, chunked_app=None, upload_app=None):
        self.app = app
        self.chunked_app = chunked_app or app
        self.upload_app = upload_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        try:
            declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            return await refuse(send, 400, "The Content-Length header is not a number.")
        if declared is None and not chunked:
            page_started()
            return await self.app(scope, receive, send)  # no body
        path = scope.get("path", "")
        match = _resolve(path)
        limit = _limit_for(match)
        api = path.startswith("/api/") or "application/json" in headers.get("accept", "")
        if declared is not None and declared > limit:
            return await refuse(send, 413, _too_large(limit), api=api)
        if (chunked or (declared or 0) > SMALL_BODY_BYTES) and _needs_login(
            match.func if match is not None else None
        ):
            # Its own sync thread, as Django gives each request: not the process's shared one.
            async with ThreadSensitiveContext():
                authenticated = await _authenticated(headers)
            if not authenticated:
                return await _refuse_anonymous(scope, send, path)
        if declared is not None:  # the server stops at Content-Length
            if (
                self.upload_app is not None
                and match is not None
                and match.url_name in settings.RFT_UPLOAD_URL_NAMES
            ):
                return await self.upload_app(scope, receive, send, api=api)
            page_started()
            return await self.app(scope, receive, send)
        return await self._counted(scope, receive, send, limit, api=api)

    async def _counted(self, scope, receive, send, limit: int, *, api: bool):
        received = 0
        cut = False
        started = False

        async def counting_receive():
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django's body reader stops on a disconnect without answering; we answer.
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.chunked_app(scope, counting_receive, watching_send)
        if cut and not started:
            await refuse(send, 413, _too_large(limit), api=api)


def _headers(scope) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        values[key] = f"{values[key]}; {text}" if key == "cookie" and key in values else text
    return values


def _resolve(path: str):
    try:
        return resolve(path)
    except Resolver404:
        return None


def _limit_for(match) -> int:
    if match is not None and match.url_name in settings.RFT_UPLOAD_URL_NAMES:
        return settings.RFT_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES
    return settings.RFT_MAX_REQUEST_BYTES


def _needs_login(view) -> bool:
    if view is None:
        return True
    cls = getattr(view, "cls", None)
    if cls is not None:
        # An API view (DRF marks them all login_required=False: they answer 401/403 themselves).
        from rest_framework.permissions import AllowAny

        return not any(permission is AllowAny for permission in getattr(cls, "permission_classes", ()))
    return getattr(view, "login_required", True) is not False


async def _authenticated(headers: dict[str, str]) -> bool:
    """A valid token, or a session that belongs to a user; Django checks both again in full later."""
    authorization = headers.get("authorization", "").split()
    if len(authorization) == 2 and authorization[0].lower() in ("token", "bearer"):
        from experiments.services.api_tokens import key_is_valid

        return await key_is_valid(authorization[1])
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: no session
        return False
    morsel = cookie.get(settings.SESSION_COOKIE_NAME)
    if morsel is None or not morsel.value:
        return False
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore(morsel.value)
    session = await store.aload()
    return bool(session.get("_auth_user_id"))


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit // (1024 * 1024)} MB; nothing was stored."


async def _refuse_anonymous(scope, send, path: str):
    if path.startswith("/api/"):
        return await refuse(send, 403, "Authentication credentials were not provided.", api=True)
    query = scope.get("query_string", b"").decode("latin-1")
    target = path + (f"?{query}" if query else "")
    location = f"{resolve_url(settings.LOGIN_URL)}?next={quote(target)}"
    await send(
        {
            "type": "http.response.start",
            "status": 302,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"content-length", b"0"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def refuse(send, status: int, message: str, *, api: bool = True, headers: list | None = None):
    if api:
        # `detail` as the API answers errors; `errors` as the upload page's script reads them.
        body = json.dumps({"detail": message, "errors": {"__all__": [message]}}).encode()
        content_type = b"application/json"
    else:
        body = message.encode()
        content_type = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: close instead of draining it for keep-alive.
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
