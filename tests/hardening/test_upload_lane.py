"""Uploads run in a lane of their own (rftweb/upload_lane.py): a bounded number at a time, their bodies
spooled to disk by the event loop, then served whole by the web process's upload helper (or, small
ones, by the lane's own threads at a lower OS priority); a bounded queue, and 503 with Retry-After
past it, before the body is read; the pages' threads are never theirs."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import threading
import time
from http.cookies import SimpleCookie

import psutil
import pytest

from rftweb.request_guard import refuse
from rftweb.upload_lane import RETRY_AFTER_SECONDS, UploadLane

from .server import server_with_uploader, stream_request
from .test_request_bodies import MB, _jsonl_multipart, _upload


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def _call(app, body: bytes = b"{}") -> list[dict]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/datasets/",
        "query_string": b"",
        "headers": [(b"content-length", str(len(body)).encode())],
        "http_version": "1.1",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_the_lane_threads_run_at_a_lower_priority_than_the_pages():
    seen = []

    def wsgi(environ, start_response):
        seen.append(_thread_nice())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    lane = UploadLane(wsgi, workers=1, queue=0, nice=5, refuse=refuse)
    sent = asyncio.run(_call(lane))
    assert sent[0]["status"] == 200
    assert seen == [min(19, _thread_nice() + 5)]


def test_past_the_queue_an_upload_is_refused_at_once_and_the_app_never_sees_it():
    entered, release = threading.Event(), threading.Event()
    calls = []

    def wsgi(environ, start_response):
        calls.append(environ["PATH_INFO"])
        if len(calls) == 1:
            entered.set()
            release.wait(10)
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b"{}"]

    lane = UploadLane(wsgi, workers=1, queue=1, nice=0, refuse=refuse)

    async def scenario():
        first = asyncio.create_task(_call(lane))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        second = asyncio.create_task(_call(lane))  # waits for the lane's one thread
        await asyncio.sleep(0.05)
        third = await _call(lane)  # one running, one waiting: full
        assert len(calls) == 1
        release.set()
        return await first, await second, third

    first, second, third = asyncio.run(scenario())
    assert first[0]["status"] == 201 and second[0]["status"] == 201
    assert third[0]["status"] == 503
    assert (b"retry-after", str(RETRY_AFTER_SECONDS).encode()) in third[0]["headers"]
    assert "importing other uploads" in json.loads(third[1]["body"])["detail"]
    assert len(calls) == 2


def test_without_room_for_the_body_an_upload_gets_a_clear_507_and_the_app_never_sees_it(tmp_path):
    calls = []

    def wsgi(environ, start_response):
        calls.append(environ["PATH_INFO"])
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b"{}"]

    lane = UploadLane(wsgi, workers=1, queue=0, nice=0, refuse=refuse, spool_dir=str(tmp_path / "gone"))
    sent = asyncio.run(_call(lane, b"x" * 1000))
    assert sent[0]["status"] == 507
    assert "no room" in json.loads(sent[1]["body"])["detail"]
    assert calls == []


def test_a_small_body_is_served_from_its_spooled_file_by_a_lane_thread(tmp_path):
    seen = {}

    def wsgi(environ, start_response):
        seen["body"] = environ["wsgi.input"].read()
        seen["length"] = environ["CONTENT_LENGTH"]
        start_response("201 Created", [("Content-Type", "application/json"), ("Set-Cookie", " a=1; Path=/")])
        return [b'{"ok": true}']

    lane = UploadLane(wsgi, workers=1, queue=0, nice=0, refuse=refuse, spool_dir=str(tmp_path))
    body = b"y" * (3 * 1024 * 1024 + 7)  # past one spool write (1 MB)
    sent = asyncio.run(_call(lane, body))
    assert sent[0]["status"] == 201 and sent[1]["body"] == b'{"ok": true}'
    assert (b"set-cookie", b"a=1; Path=/") in sent[0]["headers"]  # Django's leading space stripped
    assert seen == {"body": body, "length": str(len(body))}
    assert list(tmp_path.iterdir()) == []  # the spooled body is gone


@pytest.fixture(scope="module")
def one_slot_server(django_db_setup, django_db_blocker, redis_url, tmp_path_factory):
    with server_with_uploader(
        django_db_blocker,
        redis_url,
        tmp_path_factory.mktemp("server"),
        username="uploader-lane",
        extra_env={"RFT_UPLOAD_CONCURRENCY": "1", "RFT_UPLOAD_QUEUE": "0"},
    ) as process:
        yield process


@pytest.mark.slow
@pytest.mark.django_db
def test_the_real_server_refuses_an_upload_while_its_lane_is_full_and_pages_still_answer(one_slot_server):
    server = one_slot_server
    boundary, parts, length = _jsonl_multipart(4 * MB, name="slow")
    paused, resume = threading.Event(), threading.Event()

    def slow_parts():  # a client on a slow line: half the file, then a pause
        for index, part in enumerate(parts):
            if index == 2:
                paused.set()
                resume.wait(30)
            yield part

    slow = {}

    def send_slow():
        slow["answer"] = stream_request(
            server.port,
            "POST",
            "/api/v1/datasets/",
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Accept": "application/json",
                "Authorization": f"Token {server.token}",
            },
            body_parts=slow_parts(),
            content_length=length,
        )

    thread = threading.Thread(target=send_slow)
    thread.start()
    try:
        assert paused.wait(30)
        time.sleep(0.5)  # the server holds the slow upload in its one lane thread
        busy = _upload(server, _jsonl_multipart(1 * MB, name="second"), token=server.token)
        assert busy.status == 503, busy.body[:300]
        assert busy.headers.get("retry-after") == str(RETRY_AFTER_SECONDS)
        assert "importing other uploads" in json.loads(busy.body)["detail"]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/accounts/login/")
        assert connection.getresponse().status == 200  # the pages' threads are free
    finally:
        resume.set()
        thread.join(60)
    assert slow["answer"].status == 201, slow["answer"].body[:300]
    # The lane frees the slow upload's place once the server has finished with it, a moment after the
    # client has its answer.
    for _ in range(20):
        again = _upload(server, _jsonl_multipart(1 * MB, name="third"), token=server.token)
        if again.status != 503:
            break
        time.sleep(0.1)
    assert again.status == 201, again.body[:300]


@pytest.fixture(scope="module")
def helper_server(django_db_setup, django_db_blocker, redis_url, tmp_path_factory):
    """A server with its own data folder, so that its spooled bodies can be seen (DATA_DIR/tmp)."""
    data_dir = tmp_path_factory.mktemp("helper-data")
    with server_with_uploader(
        django_db_blocker,
        redis_url,
        tmp_path_factory.mktemp("helper-server"),
        username="uploader-helper",
        extra_env={"RFTWEB_DATA_DIR": str(data_dir)},
    ) as process:
        process.spool_dir = data_dir / "tmp"
        yield process
    print(process.log_path.read_text(errors="replace")[-4000:])


def _helpers(server) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = psutil.Process(server.process.pid).children()
        if children:
            return children
        time.sleep(0.1)
    raise AssertionError("the server started no upload helper")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@pytest.mark.slow
@pytest.mark.django_db
def test_an_upload_is_served_by_the_helper_and_its_spooled_body_is_removed(helper_server):
    server = helper_server
    helpers = _helpers(server)  # started with the server, before any upload
    web = psutil.Process(server.process.pid)
    web_before, helpers_before = _cpu(web), sum(_cpu(helper) for helper in helpers)
    answer = _upload(server, _jsonl_multipart(24 * MB, name="through-the-helper"), token=server.token)
    assert answer.status == 201, answer.body[:300]
    dataset = json.loads(answer.body)["dataset"]
    assert dataset["status"] == "ready" and dataset["item_count"] > 2000
    web_cpu = _cpu(web) - web_before
    helper_cpu = sum(_cpu(helper) for helper in helpers) - helpers_before
    print(f"web process {web_cpu:.2f} CPU-s, helper {helper_cpu:.2f} CPU-s")
    # The web process only received the body; the helper parsed, hashed and imported it.
    assert helper_cpu > 2 * web_cpu
    assert list(server.spool_dir.iterdir()) == []  # neither the body nor Django's temporary file is left
    again = _upload(server, _jsonl_multipart(24 * MB, name="through-the-helper"), token=server.token)
    assert again.status == 409 and "already uploaded" in json.loads(again.body)["detail"]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_client_that_leaves_mid_body_leaves_no_spooled_file_and_frees_its_place(helper_server):
    server = helper_server
    boundary, parts, length = _jsonl_multipart(8 * MB, name="left")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        "POST /api/v1/datasets/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {server.token}\r\nAccept: application/json\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    sock.sendall(next(parts) + next(parts))  # the form's start and a first piece of the file
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(server.spool_dir.glob("upload-*")):
        time.sleep(0.05)
    assert list(server.spool_dir.glob("upload-*")), "the body was not being spooled"
    sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list(server.spool_dir.iterdir()):
        time.sleep(0.05)
    assert list(server.spool_dir.iterdir()) == []
    answer = _upload(server, _jsonl_multipart(2 * MB, name="after-the-leaver"), token=server.token)
    assert answer.status == 201, answer.body[:300]


@pytest.mark.slow
@pytest.mark.django_db
def test_the_upload_page_works_through_the_helper_with_its_session_and_csrf(helper_server, django_db_blocker):
    """The page's form (session, CSRF, a message for the next page in a cookie) served by the helper:
    the message it sets is what the web process shows next."""
    from django.contrib.auth import get_user_model

    from tests.foundation.realtime_support import session_cookie_for

    server = helper_server
    with django_db_blocker.unblock():
        session = session_cookie_for(get_user_model().objects.get(username="uploader-helper"))
    csrf = "k" * 32
    cookies = f"sessionid={session}; csrftoken={csrf}"
    _, file_parts, _ = _jsonl_multipart(3 * MB, name="from-the-page")
    boundary = "pageboundary42"
    fields = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("csrfmiddlewaretoken", csrf), ("name", "from the page"), ("split", "train"))
    )
    file_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="page.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    inner = b"".join(file_parts)  # the file's own multipart: keep only its JSONL lines
    jsonl = inner[inner.index(b"\r\n\r\n", inner.index(b'name="file"')) + 4 : inner.rindex(b"\r\n--")]
    body = fields + file_head + jsonl + f"\r\n--{boundary}--\r\n".encode()
    answer = stream_request(
        server.port,
        "POST",
        "/datasets/upload/",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": cookies},
        body_parts=[body],
        content_length=len(body),
    )
    assert len(jsonl) > 2 * MB  # past RFT_IMPORT_HELPER_MIN_BYTES: served by the helper
    assert answer.status == 302, answer.body[:300]
    page = answer.headers["location"]
    assert page.startswith("/datasets/")
    message = SimpleCookie(answer.headers["set-cookie"])["messages"].value
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", page, headers={"Cookie": f"sessionid={session}; messages={message}"})
    shown = connection.getresponse()
    assert shown.status == 200
    assert "Imported “from the page”" in shown.read().decode()


@pytest.mark.slow
@pytest.mark.django_db
def test_after_its_helper_is_killed_an_upload_gets_a_clear_error_and_the_next_one_a_new_helper(helper_server):
    server = helper_server
    killed = _helpers(server)
    for helper in killed:
        helper.kill()  # as the out-of-memory killer would
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(helper) for helper in killed):
        time.sleep(0.05)
    time.sleep(0.5)  # the pool notices its process is gone
    failed = _upload(server, _jsonl_multipart(2 * MB, name="helper-gone"), token=server.token)
    assert failed.status == 500, failed.body[:300]
    assert "nothing was stored" in json.loads(failed.body)["detail"]
    assert list(server.spool_dir.glob("upload-*")) == []
    again = _upload(server, _jsonl_multipart(5 * MB, name="new-helper"), token=server.token)  # a new file
    assert again.status == 201, again.body[:300]
    assert json.loads(again.body)["dataset"]["status"] == "ready"
    assert {helper.pid for helper in _helpers(server)}.isdisjoint({helper.pid for helper in killed})


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
