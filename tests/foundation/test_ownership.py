"""Every page and API needs a login, and user A can neither read nor change user B's objects."""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from experiments.services.api_tokens import create_token
from tests.factories import DatasetFactory, GraderFactory, RunFactory, ToolFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def bob():
    return UserFactory(username="bob")


@pytest.fixture
def bobs_objects(bob):
    return {
        "dataset": DatasetFactory(owner=bob, name="bob-data"),
        "tool": ToolFactory(
            owner=bob, name="bob_tool", headers={"Authorization": "Bearer bob-secret-value-123"}
        ),
        "grader": GraderFactory(owner=bob, name="bob-grader"),
        "run": RunFactory(owner=bob, name="bob-run"),
    }


@pytest.mark.parametrize(
    "path", ["/", "/datasets/", "/tools/", "/graders/", "/runs/", "/compare/", "/runs/1/"]
)
def test_pages_redirect_anonymous_users_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_answers_and_login_shows_the_dashboard(client, alice):
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "correct horse battery staple"}, follow=True
    )
    assert response.status_code == 200
    assert b"Dashboard" in response.content
    assert response.context["user"].username == "alice"


@pytest.mark.parametrize("path", ["/api/v1/runs/", "/api/v1/tools/", "/api/v1/datasets/", "/api/schema/"])
def test_api_refuses_anonymous_requests(path):
    response = APIClient().get(path)
    assert response.status_code in (401, 403)


def test_pages_do_not_show_other_users_objects(client, alice, bobs_objects):
    client.force_login(alice)
    assert client.get(f"/runs/{bobs_objects['run'].pk}/").status_code == 404
    for path, name in [
        ("/runs/", "bob-run"),
        ("/datasets/", "bob-data"),
        ("/tools/", "bob_tool"),
        ("/graders/", "bob-grader"),
    ]:
        response = client.get(path)
        assert response.status_code == 200
        assert name.encode() not in response.content
    response = client.get(f"/compare/?runs={bobs_objects['run'].pk}")
    assert b"bob-run" not in response.content
    assert b"Not found or not yours" in response.content


def test_owner_sees_own_run_page(client, bob, bobs_objects):
    client.force_login(bob)
    response = client.get(f"/runs/{bobs_objects['run'].pk}/")
    assert response.status_code == 200
    assert b"bob-run" in response.content


def test_api_hides_and_protects_other_users_objects(alice, bobs_objects):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {create_token(user=alice, name='test').key}")
    for kind in ("runs", "datasets", "tools", "graders"):
        listing = api.get(f"/api/v1/{kind}/").json()
        assert listing["count"] == 0, kind
        assert api.get(f"/api/v1/{kind}/{bobs_objects[kind[:-1]].pk}/").status_code == 404, kind
    tool = bobs_objects["tool"]
    assert (
        api.patch(f"/api/v1/tools/{tool.pk}/", {"description": "hijacked"}, format="json").status_code == 404
    )
    assert api.delete(f"/api/v1/tools/{tool.pk}/").status_code == 404
    tool.refresh_from_db()
    assert tool.description != "hijacked"
    assert api.get(f"/api/v1/runs/{bobs_objects['run'].pk}/events/").status_code == 404


def test_staff_see_everything(bobs_objects):
    staff = UserFactory(username="staff", is_staff=True)
    api = APIClient()
    api.force_authenticate(staff)
    assert api.get("/api/v1/runs/").json()["count"] == 1


def test_tool_header_values_are_encrypted_at_rest_and_never_echoed(alice):
    api = APIClient()
    api.force_authenticate(alice)
    secret = "Bearer sk-live-abcdefghijklmnop-9876"
    response = api.post(
        "/api/v1/tools/",
        {
            "name": "search",
            "description": "Search",
            "parameters": {"type": "object", "properties": {}},
            "url": "https://tools.example.com/search",
            "headers": {"Authorization": secret},
            "signing_secret": "whsec-0123456789abcdef",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert secret not in response.content.decode()
    assert response.json()["headers_masked"] == {"Authorization": "••••9876"}
    assert "whsec-0123456789abcdef" not in api.get(f"/api/v1/tools/{response.json()['id']}/").content.decode()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT headers, signing_secret FROM experiments_tool WHERE id = %s", [response.json()["id"]]
        )
        raw_headers, raw_secret = cursor.fetchone()
    assert secret not in raw_headers and "sk-live" not in raw_headers
    assert "whsec" not in raw_secret
    assert raw_headers.startswith("gAAAA")  # a Fernet token
