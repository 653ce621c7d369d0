"""Stripe-style request signatures: `X-RFT-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The MAC covers `"<t>.<raw body>"`, so a receiver that checks it knows the body came from a holder of
the secret and, with the timestamp inside the MAC, can refuse replays older than its tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-RFT-Signature"
DEFAULT_TOLERANCE_S = 300


def compute_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of "<timestamp>.<body>"."""
    message = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_body(*, secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-RFT-Signature header value for `body`."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={compute_signature(secret=secret, timestamp=ts, body=body)}"


def parse_signature_header(header: str) -> tuple[int | None, list[str]]:
    """(timestamp, [v1 signatures]) from a header value; several v1 entries allow secret rotation."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return None, []
        elif key == "v1":
            signatures.append(value.strip().lower())
    return timestamp, signatures


def verify_signature(
    *,
    secret: str,
    body: bytes,
    header: str | None,
    tolerance_s: float | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when `header` carries a valid v1 signature of `body` made within `tolerance_s`."""
    if not header:
        return False
    timestamp, signatures = parse_signature_header(header)
    if timestamp is None or not signatures:
        return False
    if tolerance_s is not None:
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance_s:
            return False
    expected = compute_signature(secret=secret, timestamp=timestamp, body=body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)
