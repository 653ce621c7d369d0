"""API tokens: create (the token is returned once), revoke, and authenticate a presented token."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ..models import ApiToken

TOKEN_PREFIX = "rft_"
MAX_TOKENS_PER_USER = 50


class TokenError(Exception):
    """Something the user can fix; the message is written for them."""


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    key: str  # the secret itself: shown to the user once, never stored


def token_digest(key: str) -> str:
    # The keys are 256 random bits: a plain SHA-256 is as strong as a slow hash here, and lookups
    # by digest stay one indexed query.
    return hashlib.sha256(key.encode()).hexdigest()


def create_token(*, user, name: str, days: int | None = None) -> NewToken:
    name = (name or "").strip()
    if not name:
        raise TokenError("Give the token a name (what will use it), so that you can tell it apart later.")
    if len(name) > 100:
        raise TokenError("The name is longer than 100 characters.")
    now = timezone.now()
    if ApiToken.objects.usable(now=now).filter(user=user).count() >= MAX_TOKENS_PER_USER:
        raise TokenError(f"You already have {MAX_TOKENS_PER_USER} active tokens: revoke one first.")
    days = settings.RFT_API_TOKEN_DAYS if days is None else days
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[: len(TOKEN_PREFIX) + 6],
        digest=token_digest(key),
        expires_at=now + timedelta(days=days) if days > 0 else None,
    )
    return NewToken(token=token, key=key)


def revoke_token(*, user, token_id: int) -> ApiToken:
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise TokenError("No such token.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


# last_used_at is written at most this often per token: not a write on every API call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate_key(key: str):
    """The user a presented token belongs to, or None (unknown, revoked or expired)."""
    now = timezone.now()
    token = ApiToken.objects.usable(now=now).select_related("user").filter(digest=token_digest(key)).first()
    if token is None:
        return None
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


async def key_is_valid(key: str) -> bool:
    """For the request guard, before a body is read: does this token authenticate anyone?"""
    return await ApiToken.objects.usable(now=timezone.now()).filter(digest=token_digest(key)).aexists()
