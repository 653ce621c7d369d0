"""Production: every secret and service comes from the environment, and a missing one stops start-up."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import env

# Without these a deployment would quietly run on a SQLite file and the embedded Redis socket inside
# the container, and lose its data with it. RFTWEB_EMBEDDED_SERVICES=1 is the explicit opt-in to that.
if not env.bool("RFTWEB_EMBEDDED_SERVICES", default=False):
    for variable, what in (("DATABASE_URL", "the PostgreSQL database"), ("REDIS_URL", "the Redis server")):
        if not env.str(variable, default=""):
            raise ImproperlyConfigured(
                f"{variable} must be set in production (the URL of {what}); to run on the embedded "
                "SQLite file and Redis socket instead, set RFTWEB_EMBEDDED_SERVICES=1."
            )

if env.bool("DEBUG", default=False):
    raise ImproperlyConfigured("DEBUG must be off in production settings.")
DEBUG = False

SECRET_KEY = env.str("SECRET_KEY", default="")
if len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure"):
    raise ImproperlyConfigured("SECRET_KEY must be set to a random value of at least 50 characters.")
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEYS must be set (comma-separated Fernet keys, separate from SECRET_KEY)."
    )

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
