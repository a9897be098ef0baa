"""The lattice channel: fine dithered quantization of every canonical weight.

Each canonical weight (divided by its tensor's max-abs) is moved to the nearest point of a keyed,
dithered lattice of step ``STEP`` whose coset encodes one bit: half the weights carry key-derived
pilot bits, the rest carry the payload frame (hundreds of weights per bit, majority vote). The step is
2^-16 of the tensor's largest weight — a change far below anything that affects outputs — yet ~250
float32 ulps, so the bits survive every exact or near-exact transformation: copying, re-export,
hidden-unit permutation and positive rescaling (canonical form), and magnitude pruning (surviving
weights are untouched; the canonical scales are row maxima, which pruning keeps). It does not survive
noise or quantization; the spread channel covers those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sealinfer.watermark.keys import rng

STEP = 2.0**-16
MAX_ROW_SUBSET = 1 << 18  # canonical values per tensor that carry the lattice (whole rows)


@dataclass
class LatticeCode:
    dither: np.ndarray  # float32 in [0, 1)
    code: np.ndarray  # int16: < n_frame -> payload bit index; >= n_frame -> pilot, bit = code - n_frame


def tensor_code(key: bytes, t: int, shape: tuple[int, ...], n_frame: int) -> LatticeCode:
    g = rng(key, f"lattice/{t}/{'x'.join(map(str, shape))}")
    size = int(np.prod(shape))
    # 32 key-derived bits per weight: the top 16 are the dither (a multiple of 2^-16, exactly uniform for a
    # half-cell decision), then bit 0 picks pilot (half the weights), bit 1 the pilot bit, the rest the frame bit.
    r = np.frombuffer(g.bytes(4 * size), dtype="<u4")
    dither = (r >> 16).astype(np.float32) * np.float32(2.0**-16)
    low = (r & 0xFFFF).astype(np.int32)
    code = np.where((low & 1) == 1, n_frame + ((low >> 1) & 1), (low >> 2) % n_frame).astype(np.int16)
    return LatticeCode(dither, code)


def tensor_max(c: np.ndarray) -> float:
    m = float(np.max(np.abs(c))) if c.size else 0.0
    return m if m > 0 else 1.0


def embed_tensor(c: np.ndarray, lc: LatticeCode, frame: np.ndarray, protect: np.ndarray) -> np.ndarray:
    n_frame = frame.size
    m = tensor_max(c)
    y = c.reshape(-1).astype(np.float64) / m
    bits = np.where(lc.code >= n_frame, lc.code - n_frame, frame[np.minimum(lc.code, n_frame - 1)])
    off = lc.dither.astype(np.float64) + 0.5 * bits
    target = (np.round(y / STEP - off) + off) * STEP
    out = np.where(protect.reshape(-1), y, target) * m
    return out.astype(np.float32).reshape(c.shape)


@dataclass
class LatticeTally:
    pilot_agree: int = 0
    pilot_total: int = 0
    ones: np.ndarray | None = None
    votes: np.ndarray | None = None


def tally_tensor(c: np.ndarray, lc: LatticeCode, n_frame: int, tally: LatticeTally) -> None:
    # float32 is enough here: |y| / STEP <= 2^16 leaves 2^-7 of a cell of resolution for a 1/4-cell test.
    ph = c.reshape(-1) * np.float32(1.0 / (STEP * tensor_max(c)))
    ph -= lc.dither
    ph -= np.floor(ph)
    bit = (ph >= 0.25) & (ph < 0.75)
    pilot = lc.code >= n_frame
    pilot_bit = (lc.code - n_frame) == 1
    tally.pilot_agree += int(np.count_nonzero(pilot & (bit == pilot_bit)))
    tally.pilot_total += int(np.count_nonzero(pilot))
    if tally.ones is None or tally.votes is None:
        tally.ones = np.zeros(n_frame, dtype=np.int64)
        tally.votes = np.zeros(n_frame, dtype=np.int64)
    idx = np.where(pilot, n_frame, lc.code)  # pilots land in an overflow bin that is dropped
    tally.ones += np.bincount(idx[bit], minlength=n_frame + 1)[:n_frame]
    tally.votes += np.bincount(idx, minlength=n_frame + 1)[:n_frame]
