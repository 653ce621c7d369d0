"""Per-user rate limits on expensive actions and the cap on a user's queued + running runs.

The counts live in Redis (the `limits` library's moving window), so every web process and worker
shares them. The rates are settings (RFT_RATE_LIMITS, in `limits`' "N/minute" syntax); over a rate,
an action raises RateLimited, which the API and the pages answer with 429 and Retry-After.
"""

from __future__ import annotations

import functools
import math
import time

from django.conf import settings
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

ACTION_NAMES = {
    "tool_try": "tool tries (Try it)",
    "grader_run": "grader runs (Run grader)",
    "readiness": "readiness checks",
    "audit": "grader audits",
    "run_launch": "run launches",
}


class RateLimited(Exception):
    """Too many of one action: the message says the limit and when to try again."""

    def __init__(self, *, action: str, rate: str, retry_after: int) -> None:
        self.action = action
        self.retry_after = retry_after
        super().__init__(
            f"Too many {ACTION_NAMES.get(action, action)}: the limit is {_describe(rate)}. "
            f"Try again in {_seconds(retry_after)}."
        )


@functools.cache
def _limiter(redis_url: str, prefix: str) -> MovingWindowRateLimiter:
    if redis_url.startswith("unix://"):
        redis_url = "redis+unix://" + redis_url.removeprefix("unix://")
    return MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix=prefix))


def check_rate(*, user, action: str) -> None:
    """Count one `action` by `user`; raise RateLimited (counting nothing) when over the limit."""
    rate = settings.RFT_RATE_LIMITS.get(action)
    if not rate or user is None or not getattr(user, "pk", None):
        return
    limit = parse(rate)
    prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', 'rftweb')}:rate"
    limiter = _limiter(settings.REDIS_URL, prefix)
    key = (action, str(user.pk))
    if limiter.hit(limit, *key):
        return
    stats = limiter.get_window_stats(limit, *key)
    raise RateLimited(action=action, rate=rate, retry_after=max(1, math.ceil(stats.reset_time - time.time())))


def _describe(rate: str) -> str:
    limit = parse(rate)
    unit = limit.GRANULARITY.name
    per = f"per {unit}" if limit.multiples == 1 else f"per {limit.multiples} {unit}s"
    return f"{limit.amount} {per}"


def _seconds(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{math.ceil(seconds / 60)} minutes"
