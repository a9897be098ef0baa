"""Segmented AES-256-GCM: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015).

This is the construction behind Tink's ``StreamingAead`` and age's payload: the plaintext is cut
into fixed-size segments, each sealed with AES-GCM under a nonce made of a random prefix, the segment
counter and a last-segment flag. So reordering (counter), truncation (flag), splicing from another
artifact (per-artifact key and prefix) and any bit flip (GCM tag) are detected segment by segment.

The per-artifact payload key is HKDF-SHA256(DEK, salt, info) and the AAD of every segment is the
digest of the signed manifest, which binds the payload to its header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealinfer.runtime.errors import IntegrityError

TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7  # 7 + 4 (counter) + 1 (last flag) = the 12-byte GCM nonce
SALT_BYTES = 16
DEFAULT_SEGMENT_SIZE = 1 << 20
MAX_SEGMENTS = 2**32 - 1
_PAYLOAD_INFO = b"sealinfer payload v1"
_COMMIT_INFO = b"sealinfer key commitment v1"


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def key_commitment(data_key: bytes, salt: bytes) -> bytes:
    """A value that pins the data key: stored in the signed manifest.

    GCM is not key-committing, and each recipient unwraps its own copy of the DEK, so without this a
    malicious wrapper could hand two recipients different keys for the same signed header.
    """
    return _hkdf(data_key, salt, _COMMIT_INFO)


@dataclass(frozen=True, slots=True)
class StreamParams:
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    aad: bytes  # digest of the signed manifest

    def segment_count(self, plaintext_size: int) -> int:
        # An empty payload is still one (empty, last) segment, so truncation to zero is detectable.
        return max(1, -(-plaintext_size // self.segment_size))

    def ciphertext_size(self, plaintext_size: int) -> int:
        return plaintext_size + TAG_BYTES * self.segment_count(plaintext_size)


class _Segments:
    def __init__(self, data_key: bytes, params: StreamParams) -> None:
        if len(params.nonce_prefix) != NONCE_PREFIX_BYTES:
            raise ValueError("nonce prefix must be 7 bytes")
        self._aead = AESGCM(_hkdf(data_key, params.salt, _PAYLOAD_INFO))
        self._params = params

    def _nonce(self, index: int, last: bool) -> bytes:
        if index > MAX_SEGMENTS:
            raise ValueError("too many segments")
        return self._params.nonce_prefix + struct.pack(">IB", index, 1 if last else 0)


class StreamEncryptor(_Segments):
    """Encrypts segments in order; the caller says which one is last."""

    def __init__(self, data_key: bytes, params: StreamParams) -> None:
        super().__init__(data_key, params)
        self._next = 0
        self._finished = False

    def encrypt_segment(self, plaintext: bytes | memoryview, *, last: bool) -> bytes:
        if self._finished:
            raise ValueError("stream already finished")
        if not last and len(plaintext) != self._params.segment_size:
            raise ValueError("only the last segment may be short")
        out = self._aead.encrypt(self._nonce(self._next, last), bytes(plaintext), self._params.aad)
        self._next += 1
        self._finished = last
        return out


class StreamDecryptor(_Segments):
    """Decrypts segments in order, into caller-provided buffers; fails closed on any tampering."""

    def __init__(self, data_key: bytes, params: StreamParams, segment_count: int) -> None:
        super().__init__(data_key, params)
        self._count = segment_count

    def decrypt_segment_into(self, index: int, ciphertext: bytes | memoryview, out: memoryview) -> int:
        """Decrypt segment ``index`` into ``out``; return the plaintext length.

        On failure ``out`` is zeroed before ``IntegrityError`` is raised, so no unauthenticated
        plaintext survives in the caller's buffer.
        """
        last = index == self._count - 1
        n = len(ciphertext) - TAG_BYTES
        if n < 0:
            raise IntegrityError(
                f"Payload segment {index} is shorter than its authentication tag.",
                hint="The artifact is truncated or damaged; restore it from a trusted copy.",
            )
        target = out[:n]
        try:
            self._aead.decrypt_into(self._nonce(index, last), ciphertext, self._params.aad, target)
        except InvalidTag:
            target[:] = bytes(n)
            raise IntegrityError(
                f"Payload segment {index} of {self._count} failed authentication "
                "(altered, reordered, truncated or spliced).",
                hint="Do not use this artifact; restore it from a trusted copy and re-verify.",
            ) from None
        return n

    def decrypt_segment(self, index: int, ciphertext: bytes | memoryview) -> bytes:
        buf = bytearray(max(0, len(ciphertext) - TAG_BYTES))
        self.decrypt_segment_into(index, ciphertext, memoryview(buf))
        return bytes(buf)


def iter_segment_sizes(plaintext_size: int, segment_size: int) -> Iterator[tuple[int, int]]:
    """(index, plaintext length) of each segment of a payload of ``plaintext_size`` bytes."""
    count = max(1, -(-plaintext_size // segment_size))
    for i in range(count):
        yield i, min(segment_size, plaintext_size - i * segment_size)
