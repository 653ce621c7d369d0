"""Bounded server memory for any request body: the real server process, its RSS measured while huge
bodies stream in (issue 13, item 1)."""

from __future__ import annotations

import json

import pytest

from .server import PeakRss, repeated, server_with_uploader, stream_request

# django_db: so that the test database is set up; the server process sees what the fixture commits.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

MB = 1024 * 1024
GROWTH_LIMIT = 100 * MB
BLOCK = b"x" * MB


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, redis_url, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("server")
    with server_with_uploader(django_db_blocker, redis_url, log_dir, username="uploader-rss") as process:
        # Warm up (imports, connections) so that what is measured next is the requests themselves.
        answer = _upload(process, _jsonl_multipart(2 * MB), token=process.token)
        assert answer.status == 201, answer.body[:500]
        yield process
    print(process.log_path.read_text(errors="replace")[-4000:])


def _measure(server, send):
    baseline = server.rss()
    with PeakRss(server.process.pid) as peak:
        answer = send()
    growth = peak.peak - baseline
    print(
        f"status {answer.status}, sent {answer.sent_bytes / MB:.0f} MB in {answer.seconds:.1f} s, "
        f"rss {baseline / MB:.0f} -> peak {peak.peak / MB:.0f} MB (+{growth / MB:.0f} MB)"
    )
    return answer, growth


def _upload(server, multipart, *, token=None, chunked=False):
    boundary, parts, length = multipart
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    return stream_request(
        server.port,
        "POST",
        "/api/v1/datasets/",
        headers=headers,
        body_parts=parts,
        content_length=None if chunked else length,
    )


def _jsonl_multipart(size: int, *, name: str = "big"):
    """A multipart body with a valid JSONL file of about `size` bytes, streamed (never built whole)."""
    boundary = "rftwebboundary7d1f"
    line = (
        json.dumps(
            {
                "messages": [{"role": "user", "content": "Which file computes totals? " + "pad " * 2000}],
                "answer": "a",
            }
        ).encode()
        + b"\n"
    )
    lines = max(1, size // len(line))
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    per_part = 100

    def parts():
        yield head
        for start in range(0, lines, per_part):
            yield line * min(per_part, lines - start)
        yield tail

    return boundary, parts(), len(head) + lines * len(line) + len(tail)


def test_a_1_gb_upload_with_content_length_is_refused_at_once(server):
    answer, growth = _measure(
        server,
        lambda: stream_request(
            server.port,
            "POST",
            "/api/v1/datasets/",
            headers={
                "Authorization": f"Token {server.token}",
                "Content-Type": "multipart/form-data; boundary=b",
            },
            body_parts=repeated(BLOCK, 1024 * MB),
            content_length=1024 * MB,
        ),
    )
    assert answer.status == 413
    assert "larger than the limit" in json.loads(answer.body)["detail"]
    assert answer.sent_bytes < 64 * MB  # answered from the headers, not after the body
    assert growth < GROWTH_LIMIT


def test_a_1_gb_chunked_upload_is_cut_at_the_limit(server):
    answer, growth = _measure(
        server,
        lambda: stream_request(
            server.port,
            "POST",
            "/api/v1/datasets/",
            headers={
                "Authorization": f"Token {server.token}",
                "Content-Type": "multipart/form-data; boundary=b",
            },
            body_parts=repeated(BLOCK, 1024 * MB),
            content_length=None,
        ),
    )
    assert answer.status == 413
    # Counted as it arrived and cut at the 512 MB limit (+ framing), not read to its end.
    assert answer.sent_bytes < 700 * MB
    assert growth < GROWTH_LIMIT


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_200_mb_anonymous_post_to_the_api_is_refused_unread(server, chunked):
    answer, growth = _measure(
        server,
        lambda: stream_request(
            server.port,
            "POST",
            "/api/v1/datasets/",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            body_parts=repeated(BLOCK, 200 * MB),
            content_length=None if chunked else 200 * MB,
        ),
    )
    assert answer.status == 403
    assert json.loads(answer.body)["detail"] == "Authentication credentials were not provided."
    assert answer.sent_bytes < 64 * MB
    assert growth < GROWTH_LIMIT


def test_a_made_up_token_counts_as_anonymous(server):
    answer, growth = _measure(
        server,
        lambda: stream_request(
            server.port,
            "POST",
            "/api/v1/datasets/",
            headers={"Authorization": "Token rft_madeup", "Content-Type": "multipart/form-data; boundary=b"},
            body_parts=repeated(BLOCK, 200 * MB),
            content_length=200 * MB,
        ),
    )
    assert answer.status == 403
    assert answer.sent_bytes < 64 * MB
    assert growth < GROWTH_LIMIT


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_200_mb_anonymous_post_to_the_login_page_is_refused(server, chunked):
    answer, growth = _measure(
        server,
        lambda: stream_request(
            server.port,
            "POST",
            "/accounts/login/",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body_parts=repeated(b"username=a&password=" + b"p" * (MB - 20), 200 * MB),
            content_length=None if chunked else 200 * MB,
        ),
    )
    assert answer.status == 413
    # The login form's limit is RFT_MAX_REQUEST_BYTES (10 MB): refused at once, or cut just past it.
    assert answer.sent_bytes < 64 * MB
    assert growth < GROWTH_LIMIT


def test_an_anonymous_post_to_a_page_is_sent_to_the_login_page_unread(server):
    answer = stream_request(
        server.port,
        "POST",
        "/tools/new/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body_parts=repeated(BLOCK, 5 * MB),
        content_length=5 * MB,
    )
    assert answer.status == 302
    assert answer.headers["location"] == "/accounts/login/?next=/tools/new/"
    assert answer.sent_bytes < 5 * MB


def test_a_100_mb_valid_upload_still_imports(server):
    answer, growth = _measure(
        server, lambda: _upload(server, _jsonl_multipart(100 * MB, name="hundred"), token=server.token)
    )
    assert answer.status == 201, answer.body[:500]
    body = json.loads(answer.body)
    assert body["dataset"]["item_count"] > 10_000
    assert growth < GROWTH_LIMIT
