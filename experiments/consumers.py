"""WebSocket: /ws/runs/<id>/?after=<seq> streams a run's events, with nothing lost on reconnect."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import realtime, selectors
from .selectors import playground as playground_selectors

CLOSE_FORBIDDEN = 4403
REPLAY_BATCH = 2000
CATCH_UP_SECONDS = 5.0


class RunEventsConsumer(AsyncJsonWebsocketConsumer):
    """Join the run's group first, then send what is stored after `after`, then stream.

    Joining before reading means an event committed during the replay is either in the replay or
    arrives through the group; `last_seq` drops the duplicates, and a jump in seq (a frame the
    channel layer lost) is filled from the database. Redis pub/sub loses the frames published while
    a web process's connection to Redis is down or being re-established: when the lost ones are the
    last, no later frame shows the gap, so a watcher that heard nothing for CATCH_UP_SECONDS asks the
    database whether the run went on without it.
    """

    run_id: int
    last_seq: int = 0
    group_name: str | None = None
    heard = False
    catch_up: asyncio.Task | None = None

    async def connect(self) -> None:
        await self.accept()
        user = self.scope.get("user")
        self.run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        allowed = bool(user and user.is_authenticated) and await database_sync_to_async(
            selectors.user_can_view_run
        )(user=user, run_id=self.run_id)
        if not allowed:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.last_seq = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_seq = 0
        self.group_name = realtime.run_group_name(self.run_id)
        self.sending = asyncio.Lock()
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        async with self.sending:
            await self._send_stored_after(self.last_seq)
        self.catch_up = asyncio.create_task(self._catch_up_when_idle())

    async def dispatch(self, message: dict) -> None:
        # A run's frames are most of what a watcher receives (one per recorded step) and none of
        # them touches the database: channels' dispatch would first close old database connections
        # on a thread of their own, a thread hop per frame per watcher. The gap filling reads the
        # database through database_sync_to_async, which closes old connections itself.
        if message.get("type") == realtime.RUN_EVENTS_MESSAGE_TYPE:
            await self.run_events(message)
            return
        await super().dispatch(message)

    async def disconnect(self, code: int) -> None:
        if self.catch_up is not None:
            self.catch_up.cancel()
        if self.group_name:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def _catch_up_when_idle(self) -> None:
        while True:
            await asyncio.sleep(CATCH_UP_SECONDS)
            if self.heard:
                self.heard = False
                continue
            last_seq = await database_sync_to_async(selectors.run_last_seq)(run_id=self.run_id)
            if last_seq > self.last_seq:
                async with self.sending:
                    await self._send_stored_after(self.last_seq)

    async def receive_json(self, content, **kwargs) -> None:
        # Clients only listen; a {"type": "ping"} gets a pong so that they can tell a stale socket.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "last_seq": self.last_seq})

    async def run_events(self, message: dict) -> None:
        self.heard = True
        async with self.sending:
            if message["last"] <= self.last_seq:
                return
            if message["first"] > self.last_seq + 1:
                await self._send_stored_after(self.last_seq)
                if message["last"] <= self.last_seq:
                    return
            if message["first"] == self.last_seq + 1:
                # The usual case: the frame as the publisher encoded it.
                await self.send(text_data=message["frame"])
                self.last_seq = message["last"]
                return
            events = [
                event for event in orjson.loads(message["frame"])["events"] if event["seq"] > self.last_seq
            ]
            await self._send_events(events)

    async def _send_stored_after(self, after: int) -> None:
        while True:
            events = await database_sync_to_async(selectors.run_events_after)(
                run_id=self.run_id, after=after, limit=REPLAY_BATCH
            )
            if events:
                await self._send_events(events)
                after = self.last_seq
            if len(events) < REPLAY_BATCH:
                return

    async def _send_events(self, events: list[dict]) -> None:
        self.last_seq = events[-1]["seq"]
        await self.send_json({"type": "events", "events": events})


class PlaygroundConsumer(AsyncJsonWebsocketConsumer):
    """/ws/playground/<id>/: joins the session's group, then starts the session (so no token is sent
    before this socket listens); a finished session is sent whole. {"type": "stop"} stops it."""

    session_id: int
    group_name: str | None = None

    async def connect(self) -> None:
        from .services import playground as playground_services

        await self.accept()
        user = self.scope.get("user")
        self.session_id = int(self.scope["url_route"]["kwargs"]["session_id"])
        allowed = bool(user and user.is_authenticated) and await database_sync_to_async(
            playground_selectors.user_can_view_session
        )(user=user, session_id=self.session_id)
        if not allowed:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group_name = realtime.playground_group_name(self.session_id)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        session = await database_sync_to_async(self._session)()
        if session.is_finished:
            await self.send_json(
                {
                    "type": "snapshot",
                    "status": session.status,
                    "result": session.result,
                    "error": session.error,
                }
            )
            return
        started = await database_sync_to_async(playground_services.start_session)(session_id=self.session_id)
        await self.send_json({"type": "joined", "status": "queued" if started else session.status})

    def _session(self):
        from .models import PlaygroundSession

        return PlaygroundSession.objects.get(pk=self.session_id)

    async def disconnect(self, code: int) -> None:
        if self.group_name:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        from .services import playground as playground_services

        if isinstance(content, dict) and content.get("type") == "stop":
            await database_sync_to_async(playground_services.request_stop)(session_id=self.session_id)
            await self.send_json({"type": "stopping"})
        elif isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def playground_events(self, message: dict) -> None:
        await self.send_json({"type": "events", "events": message["events"]})
