"""All outbound HTTP of rftweb: the SSRF policy, the client that enforces it, signing, tool calls.

Django-free, so that `python -m trainer` calls tools through the same code as the app; the app builds
its `OutboundPolicy` from settings in `experiments.outbound`.
"""

from trainer.outbound.client import (
    BlockedAddressError,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    policy_http_client,
    run_sync,
    validate_outbound_url,
)
from trainer.outbound.policy import OutboundPolicy
from trainer.outbound.signing import sign_body, verify_signature
from trainer.outbound.tools import HttpToolExecutor, ToolEndpoint, try_tool_call

__all__ = [
    "BlockedAddressError",
    "HttpToolExecutor",
    "OutboundClient",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "ToolEndpoint",
    "policy_http_client",
    "run_sync",
    "sign_body",
    "try_tool_call",
    "validate_outbound_url",
    "verify_signature",
]
