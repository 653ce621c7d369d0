"""The app's side of outbound HTTP: the policy from Django settings. The client, the SSRF policy, signing
and the tool executor live in the Django-free `trainer.outbound`, shared with `python -m trainer`."""

from __future__ import annotations

from trainer.outbound.policy import OutboundPolicy


def policy_from_settings() -> OutboundPolicy:
    """The policy configured in Django settings (RFT_OUTBOUND_ALLOW_LOOPBACK, RFT_OUTBOUND_ALLOWLIST)."""
    from django.conf import settings

    allowlist = getattr(settings, "RFT_OUTBOUND_ALLOWLIST", ()) or ()
    if isinstance(allowlist, str):
        allowlist = [part for part in allowlist.replace(",", " ").split() if part]
    return OutboundPolicy(
        allow_loopback=bool(getattr(settings, "RFT_OUTBOUND_ALLOW_LOOPBACK", False)),
        allowlist=tuple(allowlist),
    )


def check_outbound_url(value: str) -> None:
    """The outbound URL rule (`trainer.outbound.client.validate_outbound_url`) as a Django validator,
    for forms, serializers and services: the same rule the client applies when it calls the URL."""
    from django.core.exceptions import ValidationError

    from trainer.outbound.client import OutboundError, validate_outbound_url

    try:
        validate_outbound_url(value)
    except OutboundError as exc:
        raise ValidationError(exc.message[:1].upper() + exc.message[1:] + ".", code="outbound_url") from exc
