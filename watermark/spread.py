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

from dataclasses import dataclass

import numpy as np

from sealinfer.watermark.keys import rng
from sealinfer.watermark.quant import SIMULATORS

N_PILOT = 256  # large models: more pilots = more evidence per weight under heavy noise
REPEATS = 3
SMALL_PILOT = 64
LARGE_MODEL = 1_000_000
MAX_NUDGE_PRICE = 3.0  # relative to the median tensor's per-weight output sensitivity
MAX_FLIP_COST = 0.25  # of a rounding level
MIN_CHIP = 24  # weights per chip below which the per-weight change would not stay small
BLOCK = 64  # weights per chip block in large models


@dataclass
class SpreadLayout:
    chips: list[np.ndarray]  # per tensor: chip id of each block of ``block`` consecutive elements (int32)
    signs: list[np.ndarray]  # per tensor: +-1 per element (float32)
    sizes: np.ndarray  # weights per chip
    dither: np.ndarray  # per chip, in [0, 1)
    bits: np.ndarray  # intended bit per chip (pilots filled in; payload chips filled by embed)
    n_pilot: int
    n_frame: int
    repeats: int
    block: int = 1

    @property
    def n_chips(self) -> int:
        return self.sizes.size

    def element_chips(self, t: int) -> np.ndarray:
        c = self.chips[t]
        return c if self.block == 1 else np.repeat(c, self.block)[: self.signs[t].size]

    def block_sums(self, t: int, x: np.ndarray) -> np.ndarray:
        """Sum ``x`` (one value per element of tensor t) within each block."""
        if self.block == 1:
            return x
        nb = self.chips[t].size
        if x.size != nb * self.block:
            x = np.concatenate([x, np.zeros(nb * self.block - x.size, dtype=x.dtype)])
        return x.reshape(nb, self.block).sum(axis=1, dtype=np.float64)


def chip_plan(n_weights: int) -> tuple[int, int]:
    """(pilots, repeats) for a model of ``n_weights``: a pure function of the shapes, so detect agrees.

    Small models get few, large chips: the lattice step grows with sqrt(chip size) while one INT8
    rounding flip moves a chip by 1/sqrt(chip size), so only large chips can be steered exactly onto
    their lattice after quantization without costly flips. Large models can afford many pilots (which
    is what carries detection through heavy noise) and threefold repetition of every frame bit.
    """
    return (N_PILOT, REPEATS) if n_weights >= LARGE_MODEL else (SMALL_PILOT, 1)


def layout(key: bytes, shapes: list[tuple[int, ...]], n_frame: int) -> SpreadLayout:
    """Key-derived chip of every block and sign of every weight.

    Large models assign chips per block of ``BLOCK`` consecutive weights (signs stay per weight), so a
    projection is a contiguous reshape-and-sum instead of a scatter over every weight: the 100M-weight
    case becomes memory-bandwidth bound. Each chip still spans ~N/(K*BLOCK) blocks from all tensors.
    """
    n_weights = int(sum(int(np.prod(s)) for s in shapes))
    n_pilot, repeats = chip_plan(n_weights)
    block = BLOCK if n_weights >= LARGE_MODEL else 1
    n_chips = n_pilot + n_frame * repeats
    chips, signs = [], []
    sizes = np.zeros(n_chips, dtype=np.int64)
    for t, shape in enumerate(shapes):
        g = rng(key, f"spread/{t}/{'x'.join(map(str, shape))}")
        size = int(np.prod(shape))
        nb = -(-size // block)
        c = g.integers(0, n_chips, size=nb, dtype=np.int32)
        bits = np.unpackbits(np.frombuffer(g.bytes(-(-size // 8)), dtype=np.uint8))[:size]
        s = bits.astype(np.float32) * 2 - 1
        lengths = np.full(nb, block, dtype=np.int64)
        lengths[-1] = size - (nb - 1) * block
        sizes += np.bincount(c, weights=lengths, minlength=n_chips).astype(np.int64)
        chips.append(c)
        signs.append(s)
    g = rng(key, "spread/chips")
    dither = g.random(n_chips)
    bits = np.zeros(n_chips, dtype=np.uint8)
    bits[:n_pilot] = g.integers(0, 2, size=n_pilot, dtype=np.uint8)
    return SpreadLayout(chips, signs, sizes, dither, bits, n_pilot, n_frame, repeats, block)


def tensor_scale(w: np.ndarray) -> float:
    s = float(np.std(w, dtype=np.float64))
    return s if s > 0 else 1.0


def projections(lay: SpreadLayout, arrays: list[np.ndarray], scales: list[float] | None = None) -> np.ndarray:
    """Chip statistics; ``scales`` (per-tensor std) may be passed in by embed, which knows them, to save
    a pass over the weights — detect always measures them on the model it is given."""
    acc = np.zeros(lay.n_chips, dtype=np.float64)
    for t, (a, c, s) in enumerate(zip(arrays, lay.chips, lay.signs, strict=True)):
        x = lay.block_sums(t, a.reshape(-1) * s)
        scale = tensor_scale(a) if scales is None else scales[t]
        acc += np.bincount(c, weights=x, minlength=lay.n_chips) / scale
    return acc / np.sqrt(np.maximum(lay.sizes, 1))


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


def apply_moves(lay: SpreadLayout, arrays: list[np.ndarray], moves: np.ndarray,
                frozen: list[np.ndarray] | None = None, weights: np.ndarray | None = None,
                scales: list[float] | None = None) -> list[np.ndarray]:
    """Spread each chip's projection move over its weights, tensor ``t`` taking a share ``weights[t]``.

    With weight v_t for tensor t, a weight of chip k moves by ``move_k * sign * v_t * sqrt(n_k) / sum v``
    (in std units), which moves the projection by exactly ``move_k``; ``v_t`` proportional to
    ``N_t / sensitivity_t^2`` minimizes the output change (Lagrange), so insensitive tensors carry more.
    """
    v = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = np.zeros(lay.n_chips)
    for t, (c, fz) in enumerate(zip(lay.chips, frozen or [None] * len(arrays), strict=True)):
        alive = np.ones(lay.signs[t].size) if fz is None else (~fz.reshape(-1)).astype(np.float64)
        live = lay.block_sums(t, alive)
        total += v[t] * np.bincount(c, weights=live, minlength=lay.n_chips)
    per_weight = (moves * np.sqrt(np.maximum(lay.sizes, 1)) / np.maximum(total, 1e-12)).astype(np.float32)
    out = []
    for t, (a, s) in enumerate(zip(arrays, lay.signs, strict=True)):
        c = lay.element_chips(t)
        scale = tensor_scale(a) if scales is None else scales[t]
        delta = (per_weight[c] * (s * np.float32(v[t] * scale))).astype(np.float32)
        if frozen is not None:
            delta[frozen[t].reshape(-1)] = 0.0
        out.append((a.reshape(-1) + delta).reshape(a.shape))
    return out


def bad_chips(p: np.ndarray, step: np.ndarray, lay: SpreadLayout, margin: float) -> np.ndarray:
    """Chips whose phase is not within ``0.25 - margin`` of their bit's lattice point."""
    ph = np.mod(p / step - lay.dither - lay.bits * 0.5, 1.0)
    dist = np.minimum(ph, 1.0 - ph)
    return dist > 0.25 - margin


def nudge(lay: SpreadLayout, arrays: list[np.ndarray], sim: str, step: np.ndarray, margin: float,
          frozen: list[np.ndarray], price_scale: np.ndarray | None = None,
          scales: list[float] | None = None) -> tuple[list[np.ndarray], int]:
    """Move the cheapest weights across a rounding boundary of ``sim`` until failing chips decode.

    Candidates from all tensors compete per chip on cost per unit of projection gain (both in
    tensor-std units), so the fix lands where it disturbs the function least. Flipped weights are added
    to ``frozen`` (updated in place). Returns the new arrays and the number of chips that were failing.
    """
    simulate, neighbours = SIMULATORS[sim]
    simmed = [simulate(a) for a in arrays]
    p = projections(lay, simmed, scales)
    bad = bad_chips(p, step, lay, margin)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return arrays, 0
    need = error_to_target(p, step, lay)  # signed projection change wanted per chip
    parts = []
    for t, (a, s) in enumerate(zip(arrays, lay.signs, strict=True)):
        if price_scale is not None and price_scale[t] > MAX_NUDGE_PRICE:
            continue  # a tensor this sensitive is never worth a rounding flip
        blocks = np.flatnonzero(bad[lay.chips[t]])
        if blocks.size == 0:
            continue
        flat = a.reshape(-1)
        if lay.block == 1:
            sel = blocks
        else:
            sel = (blocks[:, None] * lay.block + np.arange(lay.block)).ravel()
            sel = sel[sel < flat.size]
        absmax = float(np.max(np.abs(flat)))
        vals = flat[sel]
        keep = ~frozen[t].reshape(-1)[sel] & (np.abs(vals) < 0.99 * absmax)  # the max sets the INT8 scale
        sel, vals = sel[keep], vals[keep]
        if sel.size == 0:
            continue
        c = lay.chips[t][sel // lay.block]
        up_step, up_cost, down_step, down_cost = neighbours(vals, absmax)
        ch = c
        up = (need[ch] * s[sel]) > 0  # does moving this weight up raise its chip's projection?
        move = np.where(up, up_step, down_step)
        cost = np.where(up, up_cost, down_cost)
        std = tensor_scale(simmed[t]) if scales is None else scales[t]
        gain = move / (std * np.sqrt(lay.sizes[ch]))
        # A flip must not overshoot the target, and only weights already near a rounding boundary are
        # cheap enough to flip (cost below a quarter level).
        # Big chips have plenty of weights right at a boundary: consider only those (cheaper and faster).
        cap = np.clip(200.0 / lay.sizes[ch], 0.02, MAX_FLIP_COST)
        ok = (gain > 0) & (gain < 2 * np.abs(need[ch])) & (cost <= cap * move)
        sign = np.where(up, 1.0, -1.0)
        delta = sign * (cost + 0.05 * move)  # land 5% of a level past the boundary
        ps = 1.0 if price_scale is None else float(price_scale[t])
        price = ps * (cost / std) / gain
        parts.append((np.full(int(ok.sum()), t), sel[ok], ch[ok], gain[ok], price[ok], delta[ok]))
    if not parts:
        return arrays, n_bad
    tt, idx, ch, gain, price, delta = (np.concatenate(v) for v in zip(*parts, strict=True))
    order = np.lexsort((price, ch))
    ch_o, gain_o = ch[order], gain[order]
    cum = np.cumsum(gain_o)
    first = np.searchsorted(ch_o, ch_o, side="left")
    before = cum - gain_o - np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    take = order[before + gain_o / 2 < np.abs(need[ch_o])]  # stop at the flip that lands nearest
    out = [a.copy() for a in arrays]
    for t in np.unique(tt[take]):
        m = take[tt[take] == t]
        flat = out[t].reshape(-1)
        flat[idx[m]] += delta[m].astype(np.float32)
        frozen[t].reshape(-1)[idx[m]] = True  # each weight flips at most once: fixes cannot pile up
    return out, n_bad
