"""Payload framing, repetition coding and the exact null distributions used for p-values.

The frame is a length byte, the payload zero-padded to ``payload_bits`` and a 32-bit keyed tag
(HMAC-SHA256 under the watermark key); the frame is XORed with key-derived bits so every embedded bit
is balanced whatever the payload. A frame whose tag does not verify decodes to ``None``: detection can
then still say "this is our model" (pilots) without ever naming a wrong payload. Redundancy is
layered: each frame bit is repeated ``R`` times in the spread channel (majority vote) and spread over
hundreds of weights in the lattice channel; the signed commitment's SHA-256 then catches any residual
error (``verify_commitment``).

Detection never looks at the payload: key-derived *pilot* symbols are embedded beside it, and under the
null hypothesis (unmarked model, or wrong key) each pilot decision is an independent fair coin because
its dither is uniform and independent of the weights. The pilot agreement count is therefore exactly
Binomial(n, 1/2); its upper tail is computed in log space so p-values far below 1e-300 stay exact or,
past float range, are replaced by the (larger, hence conservative) Chernoff bound.
"""

from __future__ import annotations

import math
from hmac import compare_digest as hmac_compare

import numpy as np
from cryptography.hazmat.primitives import hashes, hmac
from scipy.stats import binom

from sealinfer.watermark.errors import PayloadError
from sealinfer.watermark.keys import whitening_bits

PAYLOAD_BITS = 256
LENGTH_BITS = 8
TAG_BYTES = 4  # keyed check: a misread payload is reported as unknown, never as someone else's text


def frame_bits(payload_bits: int = PAYLOAD_BITS) -> int:
    return LENGTH_BITS + payload_bits + 8 * TAG_BYTES


def _tag(key: bytes, head: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(b"sealinfer-wm-v1/payload-tag" + head)
    return mac.finalize()[:TAG_BYTES]


def check_payload(payload: bytes, payload_bits: int = PAYLOAD_BITS) -> bytes:
    if not isinstance(payload, bytes | bytearray):
        raise PayloadError(f"The payload must be bytes, not {type(payload).__name__}.", hint="Encode text as UTF-8.")
    cap = payload_bits // 8
    if not 1 <= len(payload) <= cap:
        raise PayloadError(
            f"The payload is {len(payload)} bytes; the scheme carries 1 to {cap} bytes.",
            hint="Use e.g. a 16-byte owner id + a 16-byte site fingerprint, or hash longer text first.",
        )
    return bytes(payload)


def encode(payload: bytes, key: bytes, payload_bits: int = PAYLOAD_BITS) -> np.ndarray:
    """The whitened frame (length byte + padded payload) as a uint8 0/1 array."""
    payload = check_payload(payload, payload_bits)
    head = bytes([len(payload)]) + payload.ljust(payload_bits // 8, b"\0")
    raw = head + _tag(key, head)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    return bits ^ whitening_bits(key, bits.size)


def decode(bits: np.ndarray, key: bytes, payload_bits: int = PAYLOAD_BITS) -> bytes | None:
    """Inverse of ``encode``; ``None`` unless the keyed tag and length check out (nothing trustworthy)."""
    plain = np.asarray(bits, dtype=np.uint8) ^ whitening_bits(key, frame_bits(payload_bits))
    raw = np.packbits(plain).tobytes()
    head, tag = raw[: 1 + payload_bits // 8], raw[1 + payload_bits // 8:]
    n = head[0]
    if not 1 <= n <= payload_bits // 8 or not hmac_compare(_tag(key, head), tag):
        return None
    return head[1 : 1 + n]


def majority(votes_for_one: np.ndarray, votes_total: np.ndarray) -> np.ndarray:
    """Majority decision per bit (ties, which need an even count, go to 0)."""
    return (2 * votes_for_one > votes_total).astype(np.uint8)


def binom_log_sf(k: int, n: int) -> float:
    """``log P(X >= k)`` for ``X ~ Binomial(n, 1/2)``; conservative Chernoff bound past float range."""
    if n <= 0 or k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    val = float(binom.logsf(k - 1, n, 0.5))
    if math.isfinite(val):
        return min(0.0, val)
    q = k / n  # Chernoff: P(X >= qn) <= exp(-n KL(q || 1/2)), an upper bound, so never overclaims.
    kl = (q * math.log(2 * q) if q > 0 else 0.0) + ((1 - q) * math.log(2 * (1 - q)) if q < 1 else 0.0)
    return -n * kl


def z_score(k: int, n: int) -> float:
    return (k - n / 2) / math.sqrt(n / 4) if n > 0 else 0.0
