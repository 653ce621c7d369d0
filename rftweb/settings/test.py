"""Test settings: the real PostgreSQL and Redis on localhost when they answer, else the embedded default.

DATABASE_URL / REDIS_URL in the environment win; RFTWEB_TEST_EMBEDDED=1 forces SQLite + embedded Redis.
"""

from __future__ import annotations

import os
import socket

from .base import *  # noqa: F403
from .base import BASE_DIR, celery_broker_url, channel_layer_hosts, env

DATA_DIR = BASE_DIR / "data" / "test"
STATIC_ROOT = None
DEBUG = False
SECRET_KEY = "test-secret-key-not-for-production-" + "x" * 30
# Fixed, so that the worker and server processes the tests start can read what the tests stored.
FIELD_ENCRYPTION_KEYS = ["dGVzdC1vbmx5LWZpZWxkLWVuY3J5cHRpb24ta2V5LTA="]
RFT_OUTBOUND_ALLOW_LOOPBACK = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_embedded = env.bool("RFTWEB_TEST_EMBEDDED", default=False)

# Test sessions running at the same time on one machine (and the worker processes each one
# starts, which inherit the variable) get their own test database, channel-layer prefix and
# broker key prefix, so that they never see each other's rows, events or tasks.
TEST_NAMESPACE = os.environ.setdefault("RFTWEB_TEST_NAMESPACE", str(os.getpid()))
# Run folders and uploads are keyed by ids that concurrent sessions share: keep them apart too.
# (Built models under DATA_DIR/models stay shared: they are the same for everyone.)
MEDIA_ROOT = DATA_DIR / "sessions" / TEST_NAMESPACE / "uploads"
RFT_RUNS_DIR = DATA_DIR / "sessions" / TEST_NAMESPACE / "runs"

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": env.db("DATABASE_URL")}
elif not _embedded and _answers("127.0.0.1", 5432):
    DATABASES = {"default": env.db_url_config("postgres://postgres@127.0.0.1:5432/rftweb")}
    DATABASES["default"]["TEST"] = {"NAME": f"test_rftweb_{TEST_NAMESPACE}"}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "rftweb.sqlite3"),
            # A file, not :memory:, so that worker processes started by tests see the same data.
            "TEST": {"NAME": str(DATA_DIR / f"test-rftweb-{TEST_NAMESPACE}.sqlite3")},
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
DATABASES["default"]["CONN_MAX_AGE"] = 0

if os.environ.get("REDIS_URL"):
    REDIS_URL = os.environ["REDIS_URL"]
    REDIS_IS_EMBEDDED = False
elif not _embedded and _answers("127.0.0.1", 6379):
    REDIS_URL = "redis://127.0.0.1:6379/9"
    REDIS_IS_EMBEDDED = False
else:
    REDIS_URL = f"unix://{DATA_DIR / 'redis' / 'redis.sock'}"
    REDIS_IS_EMBEDDED = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": channel_layer_hosts(REDIS_URL), "prefix": f"rftweb-test-{TEST_NAMESPACE}"},
    }
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"rftweb-test-{TEST_NAMESPACE}",
        "OPTIONS": {"pool_class": "rftweb.redis_pool.ProcessWideConnectionPool"},
    }
}
CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
    "global_keyprefix": f"rftweb-test-{TEST_NAMESPACE}:",
}
RFT_HEARTBEAT_SECONDS = 1
RFT_LEASE_TIMEOUT_SECONDS = 4
# The lost-run sweep runs every second in tests that start a beat scheduler.
CELERY_BEAT_SCHEDULE = {
    "sweep-lost-runs": {"task": "experiments.tasks.sweep_lost_runs", "schedule": 1.0},
    "sweep-environment-ends": {"task": "experiments.tasks.sweep_environment_ends", "schedule": 1.0},
}
RFT_ENVIRONMENT_LEASE_SECONDS = 3
