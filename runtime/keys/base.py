"""Interfaces named for what they promise (after Tink): wrap data keys, sign, verify.

A ``KeyProvider`` holds key-encryption keys (KEKs) and never hands them out: callers give it a
256-bit data key (DEK) and get back a ``WrappedKey`` (RFC 5649 AES key wrap with padding), or give
it a ``WrappedKey`` and get the DEK back. The local keyring does the wrap in this process; the
PKCS#11 provider does it inside the token, where the KEK is non-extractable.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from sealinfer.runtime.errors import HeaderError

WRAP_ALGORITHM = "AES-KWP"  # RFC 5649 (NIST SP 800-38F KWP), FIPS-approved
DATA_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """One recipient of an artifact: the DEK wrapped under one KEK."""

    provider: str  # "keyring" | "pkcs11"
    kek_id: str
    wrapped: bytes
    algorithm: str = WRAP_ALGORITHM

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "kek_id": self.kek_id,
            "algorithm": self.algorithm,
            "wrapped": base64.b64encode(self.wrapped).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WrappedKey:
        try:
            wrapped = strict_b64decode(data["wrapped"])
            return cls(
                provider=str(data["provider"]),
                kek_id=str(data["kek_id"]),
                wrapped=wrapped,
                algorithm=str(data["algorithm"]),
            )
        except (KeyError, TypeError) as exc:
            raise HeaderError(
                f"A recipient entry in the header is malformed ({exc}).",
                hint="The artifact is damaged; restore it from a trusted copy.",
            ) from None


def strict_b64decode(text: object) -> bytes:
    """Decode base64 and insist it is the one canonical encoding of its bytes.

    Lenient decoders ignore unused trailing bits, so a flipped bit there would go unnoticed.
    """
    if not isinstance(text, str):
        raise HeaderError("Expected a base64 string in the header.", hint="The artifact is damaged.")
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise HeaderError("Invalid base64 in the header.", hint="The artifact is damaged.") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise HeaderError("Non-canonical base64 in the header.", hint="The artifact is damaged.")
    return raw


class KeyProvider(ABC):
    """Wraps and unwraps data keys under key-encryption keys it never reveals."""

    #: Provider name recorded in each ``WrappedKey`` ("keyring", "pkcs11").
    name: str

    @abstractmethod
    def wrap_data_key(self, kek_id: str, data_key: bytes) -> WrappedKey:
        """Wrap ``data_key`` under KEK ``kek_id``.

        Raises ``KeyNotFoundError`` for an unknown id, ``KeyRevokedError`` for a revoked or retired
        KEK (new wraps only go to active KEKs).
        """

    @abstractmethod
    def unwrap_data_key(self, wrapped: WrappedKey) -> bytes:
        """Return the DEK inside ``wrapped``.

        Raises ``KeyNotFoundError`` if this provider lacks the KEK, ``KeyRevokedError`` if it is
        revoked, ``UnwrapError`` if the wrapped bytes fail their integrity check.
        """

    @abstractmethod
    def has_kek(self, kek_id: str) -> bool:
        """True if this provider holds KEK ``kek_id`` (revoked or not)."""

    @abstractmethod
    def default_kek_id(self) -> str:
        """The active KEK that new artifacts are wrapped for when no recipient is named."""
