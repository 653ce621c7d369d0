"""The playground end to end: a real Celery worker plays a checkpoint and the base model, every token
streamed over the real WebSocket (Daphne) to a client, the `peek` tool called on the demo server,
both graded; and Stop."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from django.test import Client

from experiments.models import DatasetItem, PlaygroundSession, PlaygroundStatus
from experiments.services import playground
from trainer.toy import swatch

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def _follow(
    url: str, cookie: str, origin: str, *, stop_after_join: bool = False, timeout_s: float = 120
):
    frames = []
    async with websockets.connect(
        url, additional_headers={"Cookie": f"sessionid={cookie}", "Origin": origin}
    ) as socket:
        async with asyncio.timeout(timeout_s):
            while True:
                frame = json.loads(await socket.recv())
                frames.append(frame)
                if frame["type"] == "joined" and stop_after_join:
                    await socket.send(json.dumps({"type": "stop"}))
                if frame["type"] == "snapshot":
                    return frames
                if frame["type"] == "events" and any(
                    e["side"] == "session" and e["status"] in ("succeeded", "stopped", "failed")
                    for e in frame["events"]
                ):
                    return frames
    return frames


def _events(frames):
    return [event for frame in frames if frame["type"] == "events" for event in frame["events"]]


def test_a_rollout_streams_token_by_token_with_real_tool_calls_and_grades(
    daphne, celery_worker_factory, playground_run, demo_tools
):
    worker = celery_worker_factory(queues="default", name="playground")
    item = DatasetItem.objects.filter(dataset=playground_run.eval_dataset).order_by("index").first()
    session = playground.create_session(
        owner=playground_run.owner, run=playground_run, step=10, item_id=item.pk
    )
    assert session.status == PlaygroundStatus.CREATED  # nothing runs until someone listens
    host = daphne.url.removeprefix("http://")
    try:
        frames = asyncio.run(
            _follow(f"ws://{host}/ws/playground/{session.pk}/", _cookie(playground_run.owner), daphne.url)
        )
    except Exception:
        print(worker.log()[-6000:])
        raise
    assert frames[0] == {"type": "joined", "status": "queued"}
    events = _events(frames)
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, none twice
    assert seqs == list(range(1, len(seqs) + 1))  # none lost
    answer = item.data["answer"]
    for side in ("adapter", "base"):
        mine = [event for event in events if event["side"] == side]
        kinds = [event["kind"] for event in mine]
        assert kinds[0] == "loaded" and kinds[-1] == "done", mine
        # Turn 1 streams the tool call's tokens, the call runs, turn 2 streams the answer.
        assert (
            kinds.index("turn") < kinds.index("token") < kinds.index("tool_call") < kinds.index("tool_result")
        )
        assert (
            kinds.index("tool_result") < len(kinds) - 1 - kinds[::-1].index("token") < kinds.index("graded")
        )
        tokens = [event["text"] for event in mine if event["kind"] == "token"]
        assert len(tokens) > 3  # token by token, not one block per turn
        result = next(event for event in mine if event["kind"] == "tool_result")
        assert result["name"] == "peek" and result["ok"] and result["output"] == swatch(answer)
        done = next(event for event in mine if event["kind"] == "done")
        assert done["final_answer"] == answer
        # The call went over HTTP to the demo server, under this rollout's trace id.
        assert [call["tool"] for call in demo_tools.httpd.state.calls(done["trace_id"])] == ["peek"]
        # What streamed is what the rollout holds: the answer turn's tokens spell the final answer.
        streamed = "".join(tokens)
        assert answer in streamed and "peek" in streamed
        graded = next(event for event in mine if event["kind"] == "graded")
        assert graded["score"] == 1.0
    session.refresh_from_db()
    assert session.status == PlaygroundStatus.SUCCEEDED
    assert session.result["adapter"]["score"] == session.result["base"]["score"] == 1.0

    # A reload of a finished session gets it whole.
    again = asyncio.run(
        _follow(f"ws://{host}/ws/playground/{session.pk}/", _cookie(playground_run.owner), daphne.url)
    )
    assert again[0]["type"] == "snapshot" and again[0]["result"]["base"]["final_answer"] == answer


def test_stop_ends_the_session_and_others_cannot_listen(daphne, celery_worker_factory, playground_run):
    from tests.factories import UserFactory

    worker = celery_worker_factory(queues="default", name="playground-stop")
    stranger_cookie = _cookie(UserFactory(username="stranger"))
    owner_cookie = _cookie(playground_run.owner)
    session = playground.create_session(
        owner=playground_run.owner, run=playground_run, step=None, prompt="What is the secret colour?"
    )
    assert session.messages[0]["role"] == "system" and session.messages[-1]["content"].startswith("What")
    host = daphne.url.removeprefix("http://")
    try:
        frames = asyncio.run(
            _follow(
                f"ws://{host}/ws/playground/{session.pk}/",
                owner_cookie,
                daphne.url,
                stop_after_join=True,
            )
        )
    except Exception:
        print(worker.log()[-6000:])
        raise
    assert any(frame["type"] == "stopping" for frame in frames)
    session.refresh_from_db()
    assert session.status == PlaygroundStatus.STOPPED
    events = _events(frames)
    assert not any(event["kind"] == "done" for event in events)  # neither side ran to its end

    async def stranger():
        async with websockets.connect(
            f"ws://{host}/ws/playground/{session.pk}/",
            additional_headers={
                "Cookie": f"sessionid={stranger_cookie}",
                "Origin": daphne.url,
            },
        ) as socket:
            await socket.recv()

    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        asyncio.run(stranger())
    assert closed.value.rcvd.code == 4403
    assert PlaygroundSession.objects.count() == 1
