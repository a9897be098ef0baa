"""The robust channel: few large pilot chips inside one tensor, read softly, for heavy additive noise.

Why a third channel: noise of 0.1 x std per weight adds N(0, 0.1^2) to every unit-variance chip
projection whatever the chip size, so a chip only survives if its lattice step is several tenths — that
is, if the chip is big and the mark per weight as strong as fidelity allows. With ``A = N s^2 / 0.01``
(``N`` weights changed by ``s`` std rms), ``K`` chips have step ``s * sqrt(12 N / K)`` and the soft score
``S = sum_k cos(2 pi (phase_k - bit_k / 2))`` has mean ``K exp(-3.29 K / A)``, best at ``K = A / 3.29``,
where ``-log p >= S^2 / K ~= A / 8.9``. So p <= 1e-9 (with the multiple-test corrections) needs
``A >~ 210``: the mark must put that much energy where the outputs do not feel it. Embedding therefore
shapes the move per weight by inverse sensitivity (``sensitivity.weight_costs``, capped) or, where that
falls short, by the Kronecker-factored output cost (``kfac``, ``shaped_embed``: any direction, only the chip
projections are fixed), picks the one tensor where the fidelity budget buys the most ``A`` and the
strongest level that fits. The detector is the same for both: it only reads the chip projections.

The detector knows neither the tensor nor the level: it scores every (tensor, level) of the fixed grid and
pays a Bonferroni factor for the number of tests. Each score has an exact null bound: under the null
each chip's phase is uniform (its dither is key-derived, independent of the weights), so each cosine has
moment generating function ``I0(lambda) <= exp(lambda^2 / 4)`` and Chernoff gives
``P(S >= t) <= exp(-t^2 / K)``. No Gaussian approximation is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sealinfer.watermark.keys import rng
from sealinfer.watermark.kfac import Shaping

MIN_TENSOR = 16_384  # weights: smaller tensors cannot hold a useful level and would only add tests
LEVELS = tuple(50.0 * 2 ** (i / 2) for i in range(10))  # target A (energy SNR against 0.1-std noise)
OPTIMAL_K = 3.29  # chips per unit of A (K = A / 3.29 maximizes the expected score under 0.1-std noise)
MIN_CHIPS = 8
MIN_CHIP_SIZE = 64
MICRO = 4096
CAP = 32.0  # largest per-weight share, relative to the median: bounded concentration
NOISE = 0.1


@dataclass
class RobustCode:
    """Per weight a sign and one of ``MICRO`` key-derived micro-chips; a level's chip is a run of
    micro-chips, so one pass over the weights serves every level (detection tries them all)."""

    micro: np.ndarray  # per weight, int64 in [0, MICRO)
    signs: np.ndarray  # per weight +-1 (float64)
    dithers: list[np.ndarray]  # per level, per chip, in [0, 1)
    bits: list[np.ndarray]  # per level, per chip pilot bit (0.0 / 1.0)

    def level(self, level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(chip of each micro-chip, dither per chip, pilot bit per chip, K) of one level."""
        k = self.dithers[level].size
        return (np.arange(MICRO) * k) // MICRO, self.dithers[level], self.bits[level], k


def n_chips(level: int, n: int) -> int:
    return int(np.clip(round(LEVELS[level] / OPTIMAL_K), MIN_CHIPS, max(MIN_CHIPS, n // MIN_CHIP_SIZE)))


def eligible(shapes: list[tuple[int, ...]]) -> list[int]:
    return [t for t, s in enumerate(shapes) if int(np.prod(s)) >= MIN_TENSOR]


def code(key: bytes, t: int, shape: tuple[int, ...]) -> RobustCode:
    g = rng(key, f"robust/{t}/{'x'.join(map(str, shape))}")
    n = int(np.prod(shape))
    r = g.integers(0, 2 * MICRO, size=n)  # one draw per weight: low bit the sign, the rest the micro-chip
    signs = (r & 1).astype(np.float64) * 2 - 1
    ks = [n_chips(level, n) for level in range(len(LEVELS))]
    dithers = [g.random(k) for k in ks]
    bits = [g.integers(0, 2, size=k).astype(np.float64) for k in ks]
    return RobustCode(r >> 1, signs, dithers, bits)


def _steps(level: int, n: int, sizes: np.ndarray) -> np.ndarray:
    s_eff = math.sqrt(NOISE**2 * LEVELS[level] / n)  # uniform-equivalent per-weight rms, in std units
    return s_eff * np.sqrt(12.0 * np.maximum(sizes, 1))


def _phases(p: np.ndarray, level: int, n: int, sizes: np.ndarray, dither: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Each chip's position in its lattice cell, in steps (0 = on its pilot bit's lattice point)."""
    return p / _steps(level, n, sizes) - dither - bits * 0.5


def _lattice_moves(p: np.ndarray, level: int, n: int, sizes: np.ndarray, dither: np.ndarray,
                   bits: np.ndarray) -> np.ndarray:
    """The projection change that puts every chip on its nearest lattice point of its pilot bit."""
    u = _phases(p, level, n, sizes, dither, bits)
    return (np.round(u) - u) * _steps(level, n, sizes)


def _signed(w: np.ndarray, rc: RobustCode) -> np.ndarray:
    std = float(np.std(w, dtype=np.float64)) or 1.0
    return rc.signs * w.reshape(-1).astype(np.float64) / std


def _micro_sums(rc: RobustCode, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(rc.micro, weights=y, minlength=MICRO), np.bincount(rc.micro, minlength=MICRO)


def _projections(sums: np.ndarray, sizes: np.ndarray, of_micro: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(projection per chip, chip sizes) from the per-micro-chip sums and sizes."""
    n = np.bincount(of_micro, weights=sizes, minlength=k)
    return np.bincount(of_micro, weights=sums, minlength=k) / np.sqrt(np.maximum(n, 1)), n


def shares(costs: np.ndarray, protect: np.ndarray) -> np.ndarray:
    """Per-weight share of a chip's move: inverse cost, capped at ``CAP`` x the median, zero where protected."""
    inv = 1.0 / costs.reshape(-1)
    v = np.minimum(inv / np.median(inv), CAP)
    v[protect.reshape(-1)] = 0.0
    return v


def embed(w: np.ndarray, rc: RobustCode, level: int, v: np.ndarray) -> np.ndarray:
    """Move every chip of ``level`` onto its pilot bit's lattice point, the move shared per ``v``."""
    of_micro, dither, bits, k = rc.level(level)
    chips = of_micro[rc.micro]
    std = float(np.std(w, dtype=np.float64)) or 1.0
    out = w.reshape(-1).astype(np.float64)
    for _ in range(2):  # the move changes the std a little: a second pass lands exactly
        p, sizes = _projections(*_micro_sums(rc, _signed(out, rc)), of_micro, k)
        move = _lattice_moves(p, level, w.size, sizes, dither, bits)
        total = np.bincount(chips, weights=v, minlength=k)
        per = move * np.sqrt(np.maximum(sizes, 1)) / np.maximum(total, 1e-12)
        out += per[chips] * v * rc.signs * std
        std = float(np.std(out)) or 1.0
    return out.astype(np.float32).reshape(w.shape)


def trial_change(w: np.ndarray, level_a: float, v: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random perturbation with the per-weight shape of a mark of energy ``level_a`` (for fidelity trials)."""
    g = np.random.default_rng(seed)
    s_eff = math.sqrt(NOISE**2 * level_a / w.size)
    # A chip move is uniform on +-step/2, i.e. rms s_eff*sqrt(n) per chip, shared as v / mean(v) per weight.
    r = g.uniform(-math.sqrt(3.0), math.sqrt(3.0), size=w.size) * np.where(g.random(w.size) < 0.5, -1.0, 1.0)
    scale = s_eff * float(np.std(w)) / max(float(v.mean()), 1e-12)
    return (w.reshape(-1) + r * v * scale).astype(np.float32).reshape(w.shape)


GRAM_CHUNK = 64  # chips per batch when forming the Gram system (bounds memory to 64 tensor copies)


def _shaped_basis(shaping: Shaping, keep: np.ndarray, chips: np.ndarray, coef: np.ndarray, k: int,
                  shape: tuple[int, int]) -> np.ndarray:
    """Gram matrix ``G[k, l] = <c_l, keep * (L^-1 c_k S^-1)>`` of the chip patterns ``c_k`` (``coef`` on
    chip ``k``'s weights): the projection change of chip ``l`` per unit weight of chip ``k``'s move."""
    rows, cols = shape
    gram = np.empty((k, k))
    for k0 in range(0, k, GRAM_CHUNK):
        ks = np.arange(k0, min(k, k0 + GRAM_CHUNK))
        pat = np.where(chips[None, :] == ks[:, None], coef[None, :], 0.0).reshape(ks.size, rows, cols)
        moved = (shaping.left @ pat @ shaping.right).reshape(ks.size, -1) * keep
        gram[ks] = np.stack([np.bincount(chips, weights=m * coef, minlength=k) for m in moved])
    return gram


def shaped_embed(w: np.ndarray, rc: RobustCode, level: int, shaping: Shaping, protect: np.ndarray,
                 moves: np.ndarray | None = None) -> np.ndarray:
    """``embed`` with the least-output-change move: ``dW = keep * (L^-1 U S^-1)``, ``U = sum mu_k c_k``,
    with ``mu`` solved so every chip lands (``moves`` overrides the chip moves, for fidelity trials).

    Protected weights are masked out of each chip's pattern before the Gram system is solved, so the
    constraints hold exactly with them fixed (slightly off the optimum, for a handful of weights)."""
    of_micro, dither, bits, k = rc.level(level)
    chips = of_micro[rc.micro]
    rows = w.shape[0]
    shape = (rows, w.size // rows)
    keep = ~protect.reshape(-1)
    out = w.reshape(-1).astype(np.float64)
    gram = None
    std0 = std = float(np.std(out)) or 1.0
    for _ in range(1 if moves is not None else 2):  # the move changes the std a little: a second pass lands
        p, sizes = _projections(*_micro_sums(rc, rc.signs * out / std), of_micro, k)
        move = _lattice_moves(p, level, w.size, sizes, dither, bits) if moves is None else moves
        coef = rc.signs / (std * np.sqrt(np.maximum(sizes, 1))[chips])
        if gram is None:
            gram = _shaped_basis(shaping, keep, chips, coef, k, shape)
        mu = np.linalg.solve(gram * (std0 / std) ** 2, move)
        u_mat = (mu[chips] * coef).reshape(shape)
        out += (shaping.left @ u_mat @ shaping.right).reshape(-1) * keep
        std = float(np.std(out)) or 1.0
    return out.astype(np.float32).reshape(w.shape)


def shaped_trial(w: np.ndarray, rc: RobustCode, level_a: float, shaping: Shaping, protect: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    """A shaped move of energy ``level_a`` with random chip moves (uniform over a cell), for fidelity trials."""
    level = int(np.argmin(np.abs(np.array(LEVELS) - level_a)))
    of_micro, _, _, k = rc.level(level)
    sizes = np.bincount(of_micro, weights=np.bincount(rc.micro, minlength=MICRO), minlength=k)
    step = math.sqrt(NOISE**2 * level_a / w.size) * np.sqrt(12.0 * np.maximum(sizes, 1))
    moves = np.random.default_rng(seed).uniform(-0.5, 0.5, size=k) * step
    return shaped_embed(w, rc, level, shaping, protect, moves)

@dataclass
class Score:
    log_p: float
    agree: int
    total: int
    score: float


def score(arrays: list[np.ndarray], key: bytes) -> Score:
    """Best (tensor, level) soft score, its exact null bound and the multiple-test correction."""
    tests = 0
    best = Score(0.0, 0, 0, 0.0)
    for t, a in enumerate(arrays):
        if a.size < MIN_TENSOR:
            continue
        rc = code(key, t, tuple(a.shape))
        sums, counts = _micro_sums(rc, _signed(a, rc))
        for level in range(len(LEVELS)):
            tests += 1
            of_micro, dither, bits, k = rc.level(level)
            p, sizes = _projections(sums, counts, of_micro, k)
            ph = _phases(p, level, a.size, sizes, dither, bits)
            s = float(np.sum(np.cos(2 * np.pi * ph)))
            log_p = -(s * s) / k if s > 0 else 0.0
            if log_p < best.log_p or best.total == 0:
                frac = np.mod(ph, 1.0)
                agree = int(np.count_nonzero(np.minimum(frac, 1 - frac) < 0.25))
                best = Score(log_p, agree, k, s / math.sqrt(k / 2))
    if tests:
        best.log_p = min(0.0, best.log_p + math.log(tests))
    return best
