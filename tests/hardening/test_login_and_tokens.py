"""Login and token brute-force lockout (django-axes on the Redis cache), expiring and revocable API tokens
(issue 13, item 2)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from experiments.models import ApiToken
from experiments.services.api_tokens import create_token, token_digest
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
WRONG_LOGIN = "Please enter a correct username and password."
COOL_OFF_S = 2


@pytest.fixture(autouse=True)
def lockout_settings(settings):
    from django.core.cache import caches

    # Counted where the app counts: the shared Redis cache.
    assert type(caches["default"]).__name__ == "RedisCache"
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(seconds=COOL_OFF_S)


@pytest.fixture
def user():
    # Unique names and addresses: the counts live in the shared Redis, not in a per-test database.
    return UserFactory(username=f"ada-{uuid.uuid4().hex[:8]}", password=PASSWORD)


def address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def login(client, username, password, ip):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_login_page_locks_an_address_out_and_lets_the_right_password_in_after_the_window(client, user):
    ip = address()
    wrong_password = login(client, user.username, "nope", ip)
    unknown_user = login(client, "nobody-" + uuid.uuid4().hex[:6], "nope", ip)
    for response in (wrong_password, unknown_user):
        assert response.status_code == 200
        assert WRONG_LOGIN in response.content.decode()
    # The same words for an unknown user and a wrong password: nothing tells which usernames exist.
    assert (
        wrong_password.context["form"].non_field_errors() == unknown_user.context["form"].non_field_errors()
    )
    assert login(client, user.username, "nope again", ip).status_code == 429  # the third: locked

    locked = login(client, user.username, PASSWORD, ip)  # even the right password, while locked
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(COOL_OFF_S)
    assert "Too many failed sign-in attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session

    time.sleep(COOL_OFF_S + 0.5)
    assert login(client, user.username, PASSWORD, ip).status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_one_account_is_locked_whatever_the_address(client, user):
    for _ in range(2):
        assert login(client, user.username, "nope", address()).status_code == 200
    # The failure that reaches the limit is already answered with the lockout.
    assert login(client, user.username, "nope", address()).status_code == 429
    locked = login(client, user.username, PASSWORD, address())
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == COOL_OFF_S


def test_one_address_is_locked_whatever_the_account(client, user):
    ip = address()
    for index in range(3):
        login(client, f"guess-{index}-{uuid.uuid4().hex[:6]}", "nope", ip)
    assert login(client, user.username, PASSWORD, ip).status_code == 429
    # Another address is not affected.
    assert login(client, user.username, PASSWORD, address()).status_code == 302


def test_token_endpoint_locks_out_with_json_and_retry_after_then_works_again(user):
    api = APIClient()
    ip = address()
    failures = [
        api.post("/api/v1/auth/token/", {"username": user.username, "password": "nope"}, REMOTE_ADDR=ip)
        for _ in range(2)
    ]
    failures.append(
        api.post(
            "/api/v1/auth/token/",
            {"username": "ghost-" + uuid.uuid4().hex[:6], "password": "x"},
            REMOTE_ADDR=ip,
        )
    )
    assert [response.status_code for response in failures] == [400, 400, 429]
    # One message for a wrong password and an unknown user.
    assert failures[0].json()["detail"] == failures[1].json()["detail"]
    unknown = api.post("/api/v1/auth/token/", {"username": "ghost-x", "password": "x"}, REMOTE_ADDR=address())
    assert unknown.status_code == 400
    assert unknown.json()["detail"] == failures[0].json()["detail"]

    locked = api.post(
        "/api/v1/auth/token/", {"username": user.username, "password": PASSWORD}, REMOTE_ADDR=ip
    )
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(COOL_OFF_S)
    assert "Too many failed sign-in attempts" in locked.json()["detail"]
    assert not ApiToken.objects.filter(user=user).exists()

    time.sleep(COOL_OFF_S + 0.5)
    created = api.post(
        "/api/v1/auth/token/", {"username": user.username, "password": PASSWORD, "name": "ci"}, REMOTE_ADDR=ip
    )
    assert created.status_code == 201
    key = created.json()["token"]
    assert created.json()["name"] == "ci"
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/datasets/").status_code == 200


def test_tokens_expire(user, settings):
    settings.RFT_API_TOKEN_DAYS = 30
    new = create_token(user=user, name="script")
    assert timedelta(days=29) < new.token.expires_at - timezone.now() <= timedelta(days=30)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {new.key}")
    assert api.get("/api/v1/runs/").status_code == 200
    ApiToken.objects.filter(pk=new.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = api.get("/api/v1/runs/")
    assert refused.status_code in (401, 403)
    assert "expired or revoked" in refused.json()["detail"]


def test_only_a_digest_is_stored():
    user = UserFactory()
    new = create_token(user=user, name="x")
    row = ApiToken.objects.get(pk=new.token.pk)
    assert row.digest == token_digest(new.key)
    assert new.key not in {row.digest, row.prefix, row.name}
    assert new.key.startswith(row.prefix)


def test_tokens_page_shows_a_new_token_once_lists_and_revokes(client, user):
    client.force_login(user)
    form = client.get("/account/tokens/")
    nonce = form.context["nonce"]
    created = client.post("/account/tokens/", {"name": "CI pipeline", "nonce": nonce})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    token = ApiToken.objects.get(user=user)
    key = created.context["new_token"].key
    assert key in created.content.decode()
    assert "it will not be shown again" in created.content.decode()

    # The same form sent again (a reload): no second token.
    again = client.post("/account/tokens/", {"name": "CI pipeline", "nonce": nonce})
    assert again.status_code == 400 and "This form was already sent" in again.content.decode()
    assert key not in again.content.decode()
    assert ApiToken.objects.filter(user=user).count() == 1

    listing = client.get("/account/tokens/")
    page = listing.content.decode()
    assert key not in page  # shown once
    assert "CI pipeline" in page and f"{token.prefix}…" in page and "active" in page

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/tools/").status_code == 200

    revoked = client.post(f"/account/tokens/{token.pk}/revoke/", follow=True)
    assert "no longer works" in revoked.content.decode()
    assert "revoked" in revoked.content.decode()
    assert api.get("/api/v1/tools/").status_code in (401, 403)


def test_a_user_cannot_revoke_or_see_anothers_token(client, user):
    other = UserFactory()
    theirs = create_token(user=other, name="theirs")
    client.force_login(user)
    assert "theirs" not in client.get("/account/tokens/").content.decode()
    client.post(f"/account/tokens/{theirs.token.pk}/revoke/")
    theirs.token.refresh_from_db()
    assert theirs.token.revoked_at is None


def test_a_token_needs_a_name(client, user):
    client.force_login(user)
    response = client.post("/account/tokens/", {"name": "  ", "nonce": "n1"})
    assert response.status_code == 400
    assert "Give the token a name" in response.content.decode()
    assert not ApiToken.objects.filter(user=user).exists()
