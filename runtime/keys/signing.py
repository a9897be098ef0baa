"""Ed25519 signing (Tink's PublicKeySign / PublicKeyVerify) with key ids and a trust store."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sealinfer.runtime.errors import InvalidSignatureError, KeyRevokedError, UntrustedSignerError


def public_key_fingerprint(public_key_bytes: bytes) -> str:
    """Short stable identifier of a public key, shown next to key ids so operators can compare."""
    return hashlib.sha256(public_key_bytes).hexdigest()[:16]


class Signer:
    """Signs with one Ed25519 private key. The key never leaves this object."""

    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self._key_id = key_id
        self._private_key = private_key

    @classmethod
    def generate(cls, key_id: str) -> Signer:
        return cls(key_id, Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def public_key_bytes(self) -> bytes:
        return self._private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self._key_id!r})"


@dataclass
class TrustStore:
    """Public keys this deployment trusts, by key id, and the ids that were revoked."""

    trusted: dict[str, bytes] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, keys: Mapping[str, bytes], revoked: set[str] | None = None) -> TrustStore:
        return cls(dict(keys), set(revoked or ()))

    def add(self, key_id: str, public_key_bytes: bytes) -> None:
        self.trusted[key_id] = public_key_bytes

    def verify(self, key_id: str, signature: bytes, data: bytes) -> None:
        """Return silently if ``signature`` over ``data`` is valid by trusted key ``key_id``.

        Raises ``KeyRevokedError``, ``UntrustedSignerError`` or ``InvalidSignatureError``.
        """
        if key_id in self.revoked:
            raise KeyRevokedError(
                f"Signer key {key_id!r} has been revoked.",
                hint="Re-seal the model with a current signing key (sealinfer seal).",
            )
        public = self.trusted.get(key_id)
        if public is None:
            raise UntrustedSignerError(
                f"Signer key {key_id!r} is not in the trusted-signers list.",
                hint="Import the signer's public key with `sealinfer keys trust` if you trust it.",
            )
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
        except InvalidSignature:
            raise InvalidSignatureError(
                f"The signature by {key_id!r} does not match the signed data.",
                hint="The data was altered after signing; do not use it. Restore a trusted copy.",
            ) from None
