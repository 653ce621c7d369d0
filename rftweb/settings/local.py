"""The embedded default: one machine, no system services.

SQLite and the embedded Redis live in the data directory; secrets are generated on first start
and kept there (mode 0600) unless the environment provides them; loopback tool URLs are allowed
so the bundled demo tool server works.
"""

from __future__ import annotations

import json
import os
import secrets

from cryptography.fernet import Fernet

from .base import *  # noqa: F403
from .base import DATA_DIR, env

DEBUG = env.bool("DEBUG", default=True)


def _local_secrets() -> dict[str, str]:
    path = DATA_DIR / "local-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    values = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


_generated = _local_secrets()
SECRET_KEY = env.str("SECRET_KEY", default="") or _generated["SECRET_KEY"]
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[]) or [_generated["FIELD_ENCRYPTION_KEY"]]
RFT_OUTBOUND_ALLOW_LOOPBACK = env.bool("RFT_OUTBOUND_ALLOW_LOOPBACK", default=True)
WHITENOISE_AUTOREFRESH = True
