"""Key handling: every keyed choice of the scheme comes from HKDF-SHA256 of the watermark key.

Positions, signs, dithers and pilot bits are drawn from numpy generators (Philox) seeded with 256
bits of HKDF output, one generator per purpose (``info`` label). That is sound here because the
stream is used for *selection*, not secrecy: an attacker who does not know the key sees the mark
only as a sub-noise perturbation spread over every weight; the security rests on the 256-bit HKDF
seed being unguessable, and Philox is a counter-based generator whose outputs pass BigCrush, so
every position/dither is statistically independent of the host weights — which is exactly what the
null distribution used for p-values assumes. No cipher or MAC is built from the generator.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealinfer.watermark.errors import WatermarkKeyError

SCHEME = "sealinfer-wm-v2"  # v2: row-block chips, canonical row-subset lattice, robust channel
MIN_KEY_BYTES = 16


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise WatermarkKeyError(
            f"The watermark key must be bytes, not {type(key).__name__}.",
            hint="Pass the 32 raw bytes from the keyring (kr.secret('watermark')) or a --key-file.",
        )
    key = bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise WatermarkKeyError(
            f"The watermark key is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed.",
            hint="Use a 32-byte random key (the keyring's 'watermark' secret).",
        )
    return key


def derive_seed(key: bytes, label: str) -> int:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=SCHEME.encode(), info=label.encode())
    return int.from_bytes(hkdf.derive(key), "big")


def rng(key: bytes, label: str) -> np.random.Generator:
    """A generator for one purpose (``label``); distinct labels give independent streams."""
    return np.random.Generator(np.random.Philox(derive_seed(key, label)))


def whitening_bits(key: bytes, n: int) -> np.ndarray:
    """Key-derived bits XORed onto the payload so the embedded bits look random whatever the payload."""
    return rng(key, "payload-whitening").integers(0, 2, size=n, dtype=np.uint8)
