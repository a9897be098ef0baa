"""HMAC-SHA256 through ``cryptography``: key-file, recipient-list and PIN authenticators."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """The 32-byte HMAC-SHA256 tag of ``data`` under ``key``."""
    mac = _hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


__all__ = ["hmac_sha256"]
