"""The app's side of outbound HTTP: the SSRF policy as configured in Django settings.

The client, policy and tool executor themselves live in `trainer.outbound` (no Django there).
"""

from django.conf import settings

from trainer.outbound.policy import OutboundPolicy


def policy_from_settings() -> OutboundPolicy:
    """The policy configured in Django settings (RFT_OUTBOUND_ALLOW_LOOPBACK, RFT_OUTBOUND_ALLOWLIST)."""
    allowlist = getattr(settings, "RFT_OUTBOUND_ALLOWLIST", ()) or ()
    if isinstance(allowlist, str):
        allowlist = [part for part in allowlist.replace(",", " ").split() if part]
    return OutboundPolicy(
        allow_loopback=bool(getattr(settings, "RFT_OUTBOUND_ALLOW_LOOPBACK", False)),
        allowlist=tuple(allowlist),
    )
