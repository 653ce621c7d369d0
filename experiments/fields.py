"""Model fields whose values are encrypted at rest with the FIELD_ENCRYPTION_KEYS (Fernet).

The database only ever holds ciphertext; the key list supports rotation (the first key encrypts,
every key decrypts).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@functools.cache
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: secrets cannot be stored.")
    return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt_value(value: Any) -> str:
    return fernet().encrypt(orjson.dumps(value)).decode()


def decrypt_value(token: str) -> Any:
    try:
        return orjson.loads(fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS (was a key removed?)."
        ) from exc


class EncryptedJSONField(models.TextField):
    """Any JSON-serialisable value (a str, a dict of header values, ...), stored as a Fernet token."""

    description = "JSON value encrypted at rest"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return None
        return decrypt_value(value)

    def to_python(self, value: Any) -> Any:
        return value

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return encrypt_value(value)


def mask_secret(value: str | None) -> str:
    """How a stored secret is shown back: never the value, at most its last four characters."""
    from trainer.outbound.client import mask_secret as mask

    return mask(value) if value else ""
