"""/ws/runs/<id>/: refuses strangers (4403), delivers an owner's events, and a reconnect loses nothing."""

import pytest
from asgiref.sync import sync_to_async

from experiments.services import runs as run_services
from tests.factories import RunFactory, UserFactory

from .realtime_support import receive_events, run_socket, session_cookie_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_url")]


@sync_to_async
def make_run_and_sessions():
    owner, stranger = UserFactory(username="owner"), UserFactory(username="stranger")
    run = RunFactory(owner=owner)
    return run, session_cookie_for(owner), session_cookie_for(stranger)


@sync_to_async
def start_and_record(run_id: int, steps: range):
    if steps.start == 1:
        run_services.acquire_lease(run_id=run_id, worker_id="w")
    for step in steps:
        run_services.record_metrics(run_id=run_id, step=step, metrics={"reward": step / 10}, lease_owner="w")


async def assert_refused(communicator):
    connected, _ = await communicator.connect()
    assert connected  # accepted, then closed with the application code so that browsers can read it
    closing = await communicator.receive_output(timeout=5)
    assert closing == {"type": "websocket.close", "code": 4403}
    await communicator.wait()


async def test_anonymous_user_is_refused_with_4403():
    run, _, _ = await make_run_and_sessions()
    await assert_refused(run_socket(run.pk, session=None))


async def test_another_users_run_is_refused_with_4403():
    run, _, stranger_session = await make_run_and_sessions()
    await assert_refused(run_socket(run.pk, session=stranger_session))


async def test_owner_receives_stored_then_live_events_and_a_reconnect_gets_exactly_the_missed_ones():
    run, owner_session, _ = await make_run_and_sessions()
    await start_and_record(run.pk, range(1, 3))  # seq 1 = running, 2..3 = steps 1..2

    socket = run_socket(run.pk, session=owner_session)
    connected, _ = await socket.connect()
    assert connected
    replayed = await receive_events(socket, count=3)
    assert [event["seq"] for event in replayed] == [1, 2, 3]
    assert replayed[0]["kind"] == "status" and replayed[0]["payload"]["status"] == "running"

    await start_and_record(run.pk, range(3, 4))  # live through the Redis channel layer
    live = await receive_events(socket, count=1)
    assert live[0]["seq"] == 4 and live[0]["payload"]["metrics"] == {"reward": 0.3}
    last_seen = live[-1]["seq"]
    await socket.disconnect()

    await start_and_record(run.pk, range(4, 7))  # missed while disconnected: seq 5, 6, 7

    again = run_socket(run.pk, session=owner_session, after=last_seen)
    connected, _ = await again.connect()
    assert connected
    missed = await receive_events(again, count=3)
    assert [event["seq"] for event in missed] == [5, 6, 7]
    assert [event["step"] for event in missed] == [4, 5, 6]
    assert await again.receive_nothing(timeout=0.5)
    await again.disconnect()


@pytest.mark.slow
async def test_an_idle_subscriber_still_receives_after_the_blocking_receive_times_out():
    # channels_redis blocks 5 s per receive; redis-py 8's default socket timeout is also 5 s, which
    # used to kill an idle consumer. Stay idle longer than that, then expect the event.

    run, owner_session, _ = await make_run_and_sessions()
    socket = run_socket(run.pk, session=owner_session)
    connected, _ = await socket.connect()
    assert connected
    assert await socket.receive_nothing(timeout=12)
    await start_and_record(run.pk, range(1, 2))
    events = await receive_events(socket, count=2)
    assert [event["seq"] for event in events] == [1, 2]
    await socket.disconnect()


def _record(run_id: int, steps: range) -> None:
    from django.db import connection

    try:
        if steps.start == 1:
            run_services.acquire_lease(run_id=run_id, worker_id="w")
        for step in steps:
            run_services.record_metrics(
                run_id=run_id, step=step, metrics={"reward": step / 10}, lease_owner="w"
            )
    finally:
        connection.close()


@pytest.fixture
def lose_frames(monkeypatch):
    """Frames of the given seqs never reach Redis: what a web process misses while its connection to
    Redis is down (pub/sub keeps nothing for an absent subscriber). The events are stored all the same."""
    from experiments import realtime

    lost: set[int] = set()
    publish = realtime.publish_run_events

    def lossy(*, run_id, events):
        kept = [event for event in events if event["seq"] not in lost]
        if kept:
            publish(run_id=run_id, events=kept)

    monkeypatch.setattr(realtime, "publish_run_events", lossy)
    return lost


async def test_a_frame_lost_in_the_middle_is_filled_from_the_database_when_the_next_arrives(lose_frames):
    run, owner_session, _ = await make_run_and_sessions()
    socket = run_socket(run.pk, session=owner_session, after=0)
    connected, _ = await socket.connect()
    assert connected
    assert await socket.receive_nothing(timeout=0.3)
    lose_frames.update({3, 4})  # steps 2 and 3

    await sync_to_async(_record)(run.pk, range(1, 6))  # seq 1 = running, 2..6 = steps 1..5

    events = await receive_events(socket, count=6, timeout=10)
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5, 6]
    assert await socket.receive_nothing(timeout=0.5)  # nothing twice
    await socket.disconnect()


async def test_a_watcher_whose_last_frames_were_lost_still_gets_every_point(lose_frames, monkeypatch):
    """The last frames are lost, so no later frame shows the gap: the watcher finds it from the
    database once it has heard nothing for a while."""
    from experiments import consumers

    monkeypatch.setattr(consumers, "CATCH_UP_SECONDS", 0.5)
    run, owner_session, _ = await make_run_and_sessions()
    socket = run_socket(run.pk, session=owner_session, after=0)
    connected, _ = await socket.connect()
    assert connected
    assert await socket.receive_nothing(timeout=0.3)
    lose_frames.update(range(5, 22))  # steps 4..20

    await sync_to_async(_record)(run.pk, range(1, 21))  # seq 1 = running, 2..21 = steps 1..20

    events = await receive_events(socket, count=21, timeout=10)
    assert [event["seq"] for event in events] == list(range(1, 22))
    assert [event["step"] for event in events[1:]] == list(range(1, 21))
    assert await socket.receive_nothing(timeout=1.2)  # nothing twice
    await socket.disconnect()
