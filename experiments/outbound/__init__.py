"""All outbound HTTP of rftweb: the SSRF policy, the client that enforces it, signing, tool calls."""

from experiments.outbound.client import (
    BlockedAddressError,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    run_sync,
)
from experiments.outbound.policy import OutboundPolicy, policy_from_settings
from experiments.outbound.signing import sign_body, verify_signature
from experiments.outbound.tools import HttpToolExecutor, ToolEndpoint, try_tool_call

__all__ = [
    "BlockedAddressError",
    "HttpToolExecutor",
    "OutboundClient",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "ToolEndpoint",
    "policy_from_settings",
    "run_sync",
    "sign_body",
    "try_tool_call",
    "verify_signature",
]
