"""The spread channel: spread-transform dither modulation (STDM) on the raw weights.

Each weight is assigned, by the key, to one of K chips and given a sign. A chip's statistic is the
signed sum of its weights (each divided by its tensor's std) over sqrt(chip size): for any host this
is a unit-variance projection. Embedding moves the projection onto a keyed, dithered lattice whose
coset encodes the chip's bit; the move is spread evenly over the chip's weights, so the per-weight
change is tiny (``rms = strength``, in tensor-std units) while the host itself causes no interference
(it is quantized away, unlike additive spread spectrum). Sums over hundreds of weights average out
rounding, so the channel survives FP16 and INT8; embedding additionally simulates both conversions and
nudges the few weights nearest a rounding boundary until every chip decodes after them.

Chips ``0..n_pilot-1`` carry key-derived pilot bits (for the p-value), the rest carry the payload
frame repeated ``repeats`` times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sealinfer.watermark.keys import rng
from sealinfer.watermark.quant import SIMULATORS, fp16_into, int8_into, simulate_int8_at

N_PILOT = 256  # large models: more pilots = more evidence per weight under heavy noise
REPEATS = 3
SMALL_PILOT = 64
LARGE_MODEL = 1_000_000
MIN_CHIP = 24  # weights per chip below which the per-weight change would not stay small
BLOCK = 64  # weights per chip block (a run of one row) in large models


@dataclass
class SpreadLayout:
    """Every tensor is viewed as ``[rows, cols]`` (``cols`` = all but the first axis) and cut into blocks
    of ``blocks[t]`` consecutive weights of one row; a block belongs to one chip. Signs are per weight:
    a full +-1 array for small models, the product ``row_sign[i] * col_sign[j]`` for large ones, so a
    projection is a broadcast multiply and a reshape-sum, never a gather over every weight."""

    chips: list[np.ndarray]  # per tensor: chip id of each block, shape [rows, cols // block] (int32)
    signs: list[np.ndarray | tuple[np.ndarray, np.ndarray]]  # full [rows, cols] or (row_sign, col_sign)
    blocks: list[int]
    sizes: np.ndarray  # weights per chip
    dither: np.ndarray  # per chip, in [0, 1)
    bits: np.ndarray  # intended bit per chip (pilots filled in; payload chips filled by embed)
    n_pilot: int
    n_frame: int
    repeats: int

    @property
    def n_chips(self) -> int:
        return self.sizes.size

    def view(self, t: int, a: np.ndarray) -> np.ndarray:
        rows = self.chips[t].shape[0]
        return a.reshape(rows, -1)

    def signed_delta_rows(self, t: int, per_block: np.ndarray, r0: int, out: np.ndarray) -> np.ndarray:
        """Per weight of rows ``r0..``: sign * (value of its block), written into ``out`` (float32)."""
        s = self.signs[t]
        b = self.blocks[t]
        v = per_block.astype(np.float32)
        rows = v.shape[0]
        if isinstance(s, np.ndarray):
            np.multiply(v if b == 1 else np.repeat(v, b, axis=1), s[r0:r0 + rows], out=out)
            return out
        np.multiply((v * s[0][r0:r0 + rows, None])[:, :, None], s[1].reshape(1, -1, b), out=out.reshape(rows, -1, b))
        return out

    def sign_at(self, t: int, idx: np.ndarray) -> np.ndarray:
        s = self.signs[t]
        if isinstance(s, np.ndarray):
            return s.reshape(-1)[idx]
        cols = s[1].size
        return s[0][idx // cols] * s[1][idx % cols]

    def chip_at(self, t: int, idx: np.ndarray) -> np.ndarray:
        c = self.chips[t]
        cols = c.shape[1] * self.blocks[t]
        return c[idx // cols, (idx % cols) // self.blocks[t]]


def chip_plan(n_weights: int) -> tuple[int, int]:
    """(pilots, repeats) for a model of ``n_weights``: a pure function of the shapes, so detect agrees.

    Small models get few, large chips: the lattice step grows with sqrt(chip size) while one INT8
    rounding flip moves a chip by 1/sqrt(chip size), so only large chips can be steered exactly onto
    their lattice after quantization without costly flips. Large models can afford many pilots (which
    is what carries detection through heavy noise) and threefold repetition of every frame bit.
    """
    return (N_PILOT, REPEATS) if n_weights >= LARGE_MODEL else (SMALL_PILOT, 1)


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = int(shape[0]) if len(shape) else 1
    size = int(np.prod(shape))
    return rows, size // max(rows, 1)


def layout(key: bytes, shapes: list[tuple[int, ...]], n_frame: int) -> SpreadLayout:
    """Key-derived chip of every block and sign of every weight.

    Large models assign chips per block of up to ``BLOCK`` weights of one row and use rank-one signs,
    so deriving the layout costs O(blocks + rows + cols) and a projection is memory-bandwidth bound.
    Each chip still spans ~N/(K*BLOCK) blocks drawn from all tensors.
    """
    n_weights = int(sum(int(np.prod(s)) for s in shapes))
    n_pilot, repeats = chip_plan(n_weights)
    large = n_weights >= LARGE_MODEL
    n_chips = n_pilot + n_frame * repeats
    chips, signs, blocks = [], [], []
    sizes = np.zeros(n_chips, dtype=np.int64)
    for t, shape in enumerate(shapes):
        g = rng(key, f"spread/{t}/{'x'.join(map(str, shape))}")
        rows, cols = _rows_cols(shape)
        b = math.gcd(cols, BLOCK) if large else 1
        c = g.integers(0, n_chips, size=(rows, cols // b), dtype=np.int32)
        if large:
            rs = g.integers(0, 2, size=rows).astype(np.float32) * 2 - 1
            cs = g.integers(0, 2, size=cols).astype(np.float32) * 2 - 1
            signs.append((rs, cs))
        else:
            bits = np.unpackbits(np.frombuffer(g.bytes(-(-rows * cols // 8)), dtype=np.uint8))[: rows * cols]
            signs.append((bits.astype(np.float32) * 2 - 1).reshape(rows, cols))
        sizes += np.bincount(c.reshape(-1), minlength=n_chips).astype(np.int64) * b
        chips.append(c)
        blocks.append(b)
    g = rng(key, "spread/chips")
    dither = g.random(n_chips)
    bits = np.zeros(n_chips, dtype=np.uint8)
    bits[:n_pilot] = g.integers(0, 2, size=n_pilot, dtype=np.uint8)
    return SpreadLayout(chips, signs, blocks, sizes, dither, bits, n_pilot, n_frame, repeats)


def tensor_scale(w: np.ndarray) -> float:
    """Standard deviation of a tensor, in one fused pass-pair (float64 accumulation of float32 dots)."""
    x = w.reshape(-1)
    n = x.size
    if n == 0:
        return 1.0
    mean = float(x.sum(dtype=np.float64)) / n
    sq = float(np.dot(x, x)) / n
    s = math.sqrt(max(sq - mean * mean, 0.0))
    return s if s > 0 else 1.0


CHUNK = 1 << 16  # weights per slice in chunked passes: small enough to stay in L2 between steps


def _chunk_sums(lay: SpreadLayout, t: int, a: np.ndarray, sims: tuple[str | None, ...],
                absmax: float) -> list[np.ndarray]:
    """Signed block sums of tensor t as stored and/or as each conversion in ``sims`` would round it,
    computed slice by slice so every intermediate stays in cache (one read of the weights in all)."""
    x = lay.view(t, a)
    rows, cols = x.shape
    s = lay.signs[t]
    b = lay.blocks[t]
    step = max(1, CHUNK // max(cols, 1))
    out = [np.empty(lay.chips[t].shape, dtype=np.float64) for _ in sims]
    tmp = np.empty((min(step, rows), cols), dtype=np.float32)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        xs = x[r0:r1]
        ts = tmp[: r1 - r0]
        sgn = s[r0:r1] if isinstance(s, np.ndarray) else s[1][None, :]
        for i, sim in enumerate(sims):
            if sim is None:
                np.multiply(xs, sgn, out=ts)
            elif sim == "fp16":
                fp16_into(xs, ts, absmax)
                ts *= sgn
            else:
                int8_into(xs, absmax, ts)
                ts *= sgn
            y = ts.reshape(r1 - r0, -1, b).sum(axis=2, dtype=np.float64) if b > 1 else ts.astype(np.float64)
            if not isinstance(s, np.ndarray):
                y *= s[0][r0:r1, None]
            out[i][r0:r1] = y
    return out


def projections(lay: SpreadLayout, arrays: list[np.ndarray], scales: list[float] | None = None,
                sim: str | None = None) -> np.ndarray:
    """Chip statistics; ``scales`` (per-tensor std) may be passed in by embed, which knows them, to save
    a pass over the weights — detect always measures them on the model it is given. ``sim`` names a
    storage conversion to apply first."""
    return multi_projections(lay, arrays, scales, (sim,))[0]


def multi_projections(lay: SpreadLayout, arrays: list[np.ndarray], scales: list[float] | None,
                      sims: tuple[str | None, ...], absmax: list[float] | None = None) -> list[np.ndarray]:
    """``projections`` for several conversions at once, reading each tensor once."""
    acc = [np.zeros(lay.n_chips, dtype=np.float64) for _ in sims]
    for t, a in enumerate(arrays):
        m = (max(float(a.max()), -float(a.min())) if a.size else 0.0) if absmax is None else absmax[t]
        sums = _chunk_sums(lay, t, a, sims, m)
        for i, sim in enumerate(sims):
            if scales is not None:
                scale = scales[t]
            elif sim is None:
                scale = tensor_scale(a)
            else:
                scale = tensor_scale(simulate_int8_at(a, m) if sim == "int8" else SIMULATORS[sim][0](a))
            acc[i] += np.bincount(lay.chips[t].reshape(-1), weights=sums[i].reshape(-1), minlength=lay.n_chips) / scale
    root = np.sqrt(np.maximum(lay.sizes, 1))
    return [x / root for x in acc]


def steps(lay: SpreadLayout, strength: float) -> np.ndarray:
    """Lattice step per chip so that the per-weight rms change is ``strength`` (tensor-std units)."""
    return strength * np.sqrt(12.0 * np.maximum(lay.sizes, 1))


def phases(p: np.ndarray, step: np.ndarray, lay: SpreadLayout) -> np.ndarray:
    return np.mod(p / step - lay.dither, 1.0)


def decisions(p: np.ndarray, step: np.ndarray, lay: SpreadLayout) -> np.ndarray:
    ph = phases(p, step, lay)
    return ((ph >= 0.25) & (ph < 0.75)).astype(np.uint8)


def error_to_target(p: np.ndarray, step: np.ndarray, lay: SpreadLayout) -> np.ndarray:
    """Signed move that puts each projection on the nearest lattice point of its bit's coset."""
    u = p / step - lay.dither - lay.bits * 0.5
    return (np.round(u) - u) * step


def _frozen_per_block(lay: SpreadLayout, t: int, fz: np.ndarray | None) -> np.ndarray | None:
    if fz is None:
        return None
    idx = np.flatnonzero(fz)
    if idx.size == 0:
        return None
    c = lay.chips[t]
    cols = c.shape[1] * lay.blocks[t]
    blk = (idx // cols) * c.shape[1] + (idx % cols) // lay.blocks[t]
    return np.bincount(blk, minlength=c.size).reshape(c.shape)


def apply_moves(lay: SpreadLayout, arrays: list[np.ndarray], moves: np.ndarray,
                frozen: list[np.ndarray] | None = None, weights: np.ndarray | None = None,
                scales: list[float] | None = None, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Spread each chip's projection move over its weights, tensor ``t`` taking a share ``weights[t]``.

    With weight v_t for tensor t, a weight of chip k moves by ``move_k * sign * v_t * sqrt(n_k) / sum v``
    (in std units), which moves the projection by exactly ``move_k``; ``v_t`` proportional to
    ``N_t / sensitivity_t^2`` minimizes the output change (Lagrange), so insensitive tensors carry more.
    Frozen weights (a sparse few) are left alone and their share goes to the rest of their chip.
    """
    v = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    fzs = frozen or [None] * len(arrays)
    total = np.zeros(lay.n_chips)
    per_block_frozen = []
    for t, c in enumerate(lay.chips):
        fb = _frozen_per_block(lay, t, fzs[t])
        per_block_frozen.append(fb)
        live = np.full(c.shape, float(lay.blocks[t])) if fb is None else lay.blocks[t] - fb.astype(np.float64)
        total += v[t] * np.bincount(c.reshape(-1), weights=live.reshape(-1), minlength=lay.n_chips)
    per_weight = moves * np.sqrt(np.maximum(lay.sizes, 1)) / np.maximum(total, 1e-12)
    result = []
    for t, a in enumerate(arrays):
        scale = tensor_scale(a) if scales is None else scales[t]
        x = lay.view(t, a)
        dst = lay.view(t, out[t]) if out is not None else np.empty(x.shape, dtype=np.float32)
        per_block = per_weight[lay.chips[t]] * (v[t] * scale)
        rows, cols = x.shape
        step = max(1, CHUNK // max(cols, 1))
        for r0 in range(0, rows, step):  # slice by slice: the delta is added while still in cache
            r1 = min(rows, r0 + step)
            lay.signed_delta_rows(t, per_block[r0:r1], r0, dst[r0:r1])
            dst[r0:r1] += x[r0:r1]
        if fzs[t] is not None and per_block_frozen[t] is not None:
            idx = np.flatnonzero(fzs[t])
            dst.reshape(-1)[idx] = x.reshape(-1)[idx]
        result.append(dst.reshape(a.shape))
    return result


def bad_chips(p: np.ndarray, step: np.ndarray, lay: SpreadLayout, margin: float) -> np.ndarray:
    """Chips whose phase is not within ``0.25 - margin`` of their bit's lattice point."""
    ph = np.mod(p / step - lay.dither - lay.bits * 0.5, 1.0)
    dist = np.minimum(ph, 1.0 - ph)
    return dist > 0.25 - margin
