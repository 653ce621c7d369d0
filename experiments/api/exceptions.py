from __future__ import annotations

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..services.rate_limits import RateLimited


def exception_handler(exc, context):
    """DRF's handler, plus: a per-user rate limit hit in a service is 429 with Retry-After."""
    if isinstance(exc, RateLimited):
        return Response(
            {"detail": str(exc)},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(exc.retry_after)},
        )
    return drf_exception_handler(exc, context)
