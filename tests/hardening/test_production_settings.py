"""Production settings refuse to start without their services (issue 13, item 5)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
}


def start(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`manage.py check --deploy` in a fresh process with exactly these variables."""
    # DJANGO_ALLOW_ASYNC_UNSAFE: set by the browser tests for their own process, not a deployment's.
    dropped = ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
    clean = {key: value for key, value in os.environ.items() if key not in dropped}
    clean.update({"DJANGO_SETTINGS_MODULE": "rftweb.settings.production", **SECRETS, **env})
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/rftweb"}, "REDIS_URL"),
        ({}, "DATABASE_URL"),
    ],
    ids=["no-database-url", "no-redis-url", "neither"],
)
def test_production_refuses_to_start_without_its_services(env, missing):
    result = start(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{missing} must be set in production" in result.stderr


def test_production_starts_with_both_and_check_deploy_is_clean():
    result = start(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/rftweb", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_embedded_setup_is_an_explicit_opt_in():
    result = start({"RFTWEB_EMBEDDED_SERVICES": "1"})
    assert result.returncode == 0, result.stderr
