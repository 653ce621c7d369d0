from __future__ import annotations

from django.db.models import QuerySet

from ..models import ApiToken


def tokens_for(*, user) -> QuerySet[ApiToken]:
    """A user's own tokens, newest first, revoked and expired ones included (shown as such)."""
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-pk")
