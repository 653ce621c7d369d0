"""The API tokens page and the login lockout in Chromium, through the real server process."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery staple"

# Playwright's sync API keeps an event loop running in this thread; the test's ORM calls are plain
# synchronous calls all the same.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def log_in(page, server, username, password):
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_create_copy_and_revoke_a_token(page, daphne, transactional_db, screenshot_dir):
    user = UserFactory(username=f"tokens-{uuid.uuid4().hex[:6]}", password=PASSWORD)
    log_in(page, daphne, user.username, PASSWORD)
    page.wait_for_url(f"{daphne.url}/")
    page.click("text=Tokens")
    page.wait_for_url(f"{daphne.url}/account/tokens/")
    assert "No tokens yet." in page.inner_text("main")

    page.fill("input[name=name]", "CI pipeline")
    page.click("button:has-text('Create token')")
    key = page.input_value("input[aria-label='The new token']")
    assert key.startswith("rft_") and len(key) > 40
    assert "it will not be shown again" in page.inner_text(".new-token")
    page.screenshot(path=str(screenshot_dir / "hardening-token-created.png"), full_page=True)

    # The key works against the API (a second page, without the session).
    response = page.context.request.get(
        f"{daphne.url}/api/v1/runs/", headers={"Authorization": f"Token {key}"}
    )
    assert response.status == 200

    page.reload()  # the browser sends the form again: no second token, and the key is not shown again
    assert key not in page.content()
    assert "This form was already sent" in page.inner_text(".error-box")
    page.goto(f"{daphne.url}/account/tokens/")
    assert key not in page.content()
    assert page.locator("tbody tr").count() == 1
    row = page.locator("tbody tr", has_text="CI pipeline")
    assert "active" in row.inner_text()
    row.locator("button:has-text('Revoke')").click()
    page.wait_for_selector("text=no longer works")
    assert "revoked" in page.locator("tbody tr", has_text="CI pipeline").inner_text()
    page.screenshot(path=str(screenshot_dir / "hardening-token-revoked.png"), full_page=True)
    response = page.context.request.get(
        f"{daphne.url}/api/v1/runs/", headers={"Authorization": f"Token {key}", "Cookie": ""}
    )
    assert response.status in (401, 403)


def test_the_login_page_says_when_it_is_locked(page, daphne, transactional_db, screenshot_dir):
    from axes.utils import reset

    user = UserFactory(username=f"locked-{uuid.uuid4().hex[:6]}", password=PASSWORD)
    try:
        for _ in range(9):  # the server's limit is the default, 10
            log_in(page, daphne, user.username, "wrong")
            assert "Please enter a correct username and password" in page.inner_text(".error-box")
        log_in(page, daphne, user.username, "wrong again")
        message = page.inner_text(".error-box")
        assert "Too many failed sign-in attempts" in message and "Try again in 15 minutes" in message
        page.screenshot(path=str(screenshot_dir / "hardening-login-locked.png"), full_page=True)
        log_in(page, daphne, user.username, PASSWORD)  # the right password is refused while locked
        assert "Too many failed sign-in attempts" in page.inner_text(".error-box")
    finally:
        # 127.0.0.1 is every browser test's address: unlock it for the tests after this one.
        reset(ip="127.0.0.1")
        reset(username=user.username)
