"""System checks: outbound URLs from settings obey the same URL rule as those users register."""

from __future__ import annotations

from django.conf import settings
from django.core import checks

# Server-wide default endpoints (a setting that is absent or empty is simply not used).
OUTBOUND_URL_SETTINGS = ("RFT_JUDGE_BASE_URL", "RFT_EMBEDDINGS_BASE_URL")


@checks.register(checks.Tags.compatibility)
def check_outbound_url_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from trainer.outbound.client import OutboundError, validate_outbound_url

    problems = []
    for name in OUTBOUND_URL_SETTINGS:
        value = getattr(settings, name, None)
        if not value:
            continue
        try:
            validate_outbound_url(value)
        except OutboundError as exc:
            problems.append(
                checks.Error(
                    f"{name} is not a usable outbound URL: {exc.message}.",
                    hint="Set it to an absolute http:// or https:// URL without credentials (or leave it empty).",
                    id="experiments.E001",
                )
            )
    return problems
