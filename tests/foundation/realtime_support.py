"""Helpers to open the real ASGI app's run-events WebSocket as a given user."""

from __future__ import annotations

from channels.testing import WebsocketCommunicator
from django.test import Client

from rftweb.asgi import application


def session_cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def run_socket(run_id: int, *, session: str | None, after: int | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    query = f"?after={after}" if after is not None else ""
    return WebsocketCommunicator(application, f"/ws/runs/{run_id}/{query}", headers=headers)


async def receive_events(
    communicator: WebsocketCommunicator, *, count: int, timeout: float = 10.0
) -> list[dict]:
    """Read frames until `count` events arrived; return them in the order received."""
    events: list[dict] = []
    while len(events) < count:
        frame = await communicator.receive_json_from(timeout=timeout)
        assert frame["type"] == "events"
        events.extend(frame["events"])
    return events
