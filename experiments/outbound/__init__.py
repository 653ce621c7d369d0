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
