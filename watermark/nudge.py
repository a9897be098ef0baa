"""Keeping the spread channel decodable after FP16 and INT8 storage: a projection tracker and nudges.

After marking, some chips would decode wrongly once the weights are rounded to FP16 or to INT8 (a
rounding error per weight of up to half a level adds up over a chip). Rather than strengthen the whole
mark, embedding flips a few weights that sit just beside a rounding boundary — the cheapest change that
moves a chip's rounded projection — and tracks every projection incrementally while doing so, so a
100M-weight model is read only once per conversion.
"""

from __future__ import annotations

import numpy as np

from sealinfer.watermark.quant import SIMULATORS, simulate_int8_at
from sealinfer.watermark.spread import SpreadLayout, bad_chips, error_to_target, multi_projections

MAX_NUDGE_PRICE = 3.0  # relative to the median tensor's per-weight output sensitivity
MAX_FLIP_COST = 0.25  # of a rounding level
FLIP_OVERSHOOT = 0.01  # of a level: past the boundary by far more than float32 rounding, no further
NUDGE_BUDGET = 4_000_000  # candidate weights examined per nudge pass, over all tensors


class Tracker:
    """Chip projections of the weights as they are and as each storage conversion would round them,
    kept current under sparse edits (rounding flips), so nudging never re-reads every weight.

    INT8 rounding depends on the tensor's max-abs; edits never touch a tensor's largest weights, so the
    per-tensor max recorded here stays the one the conversion will use."""

    def __init__(self, lay: SpreadLayout, arrays: list[np.ndarray], scales: list[float],
                 p_float: np.ndarray | None = None) -> None:
        self.lay, self.scales = lay, scales
        self.absmax = [max(float(a.max()), -float(a.min())) if a.size else 0.0 for a in arrays]
        names = list(SIMULATORS)
        todo: tuple[str | None, ...] = (*names, None) if p_float is None else tuple(names)
        got = multi_projections(lay, arrays, scales, todo, self.absmax)
        self.p = {"float": got[-1] if p_float is None else p_float.copy()}
        self.p.update(zip(names, got[: len(names)], strict=True))

    def _sim(self, name: str, t: int, x: np.ndarray) -> np.ndarray:
        if name == "int8":
            return simulate_int8_at(x, self.absmax[t])
        return SIMULATORS[name][0](x)

    def edit(self, t: int, idx: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        lay = self.lay
        ch = lay.chip_at(t, idx)
        coef = lay.sign_at(t, idx).astype(np.float64) / (self.scales[t] * np.sqrt(np.maximum(lay.sizes[ch], 1)))
        self.p["float"] += np.bincount(ch, weights=coef * (new.astype(np.float64) - old), minlength=lay.n_chips)
        for name in SIMULATORS:
            d = self._sim(name, t, new).astype(np.float64) - self._sim(name, t, old)
            self.p[name] += np.bincount(ch, weights=coef * d, minlength=lay.n_chips)


def nudge(lay: SpreadLayout, arrays: list[np.ndarray], sim: str, tracker: Tracker, step: np.ndarray,
          margin: float, frozen: list[np.ndarray], price_scale: np.ndarray | None = None,
          round_no: int = 0) -> int:
    """Move the cheapest weights across a rounding boundary of ``sim`` until failing chips decode.

    Candidates from all tensors compete per chip on cost per unit of projection gain (both in
    tensor-std units), so the fix lands where it disturbs the function least. Large models examine a
    rotating sample of at most ``NUDGE_BUDGET`` weights of the failing chips: a chip of 10^5 weights
    has far more boundary-adjacent weights than it needs. ``arrays`` are edited in place, the tracker
    follows, and flipped weights are added to ``frozen``. Returns the number of chips that were failing.
    """
    _, neighbours = SIMULATORS[sim]
    p = tracker.p[sim]
    bad = bad_chips(p, step, lay, margin)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return 0
    need = error_to_target(p, step, lay)  # signed projection change wanted per chip
    n_total = sum(a.size for a in arrays)
    parts = []
    for t, a in enumerate(arrays):
        if price_scale is not None and price_scale[t] > MAX_NUDGE_PRICE:
            continue  # a tensor this sensitive is never worth a rounding flip
        c = lay.chips[t]
        b = lay.blocks[t]
        blk = np.flatnonzero(bad[c.reshape(-1)])
        if blk.size == 0:
            continue
        budget = max(NUDGE_BUDGET * a.size // n_total, 4096)
        if blk.size * b > budget:
            stride = -(-blk.size * b // budget)
            blk = blk[round_no % stride::stride]
        nbr = c.shape[1]
        cols = nbr * b
        start = (blk // nbr) * cols + (blk % nbr) * b
        sel = (start[:, None] + np.arange(b)).reshape(-1) if b > 1 else start
        flat = a.reshape(-1)
        absmax = tracker.absmax[t]
        vals = flat[sel]
        keep = ~frozen[t].reshape(-1)[sel] & (np.abs(vals) < 0.99 * absmax)  # the max sets the INT8 scale
        sel, vals = sel[keep], vals[keep]
        if sel.size == 0:
            continue
        ch = lay.chip_at(t, sel)
        up_step, up_cost, down_step, down_cost = neighbours(vals, absmax)
        up = (need[ch] * lay.sign_at(t, sel)) > 0  # does moving this weight up raise its chip's projection?
        move = np.where(up, up_step, down_step)
        cost = np.where(up, up_cost, down_cost)
        std = tracker.scales[t]
        gain = move / (std * np.sqrt(lay.sizes[ch]))
        # A flip must not overshoot the target, and only weights already near a rounding boundary are
        # cheap enough to flip (cost below a quarter level).
        # Big chips have plenty of weights right at a boundary: consider only those (cheaper and faster).
        cap = np.clip(200.0 / lay.sizes[ch], 0.02, MAX_FLIP_COST)
        ok = (gain > 0) & (gain < 2 * np.abs(need[ch])) & (cost <= cap * move)
        sign = np.where(up, 1.0, -1.0)
        delta = sign * (cost + FLIP_OVERSHOOT * move)  # land just past the boundary
        ps = 1.0 if price_scale is None else float(price_scale[t])
        price = ps * (cost / std) / gain
        parts.append((np.full(int(ok.sum()), t), sel[ok], ch[ok], gain[ok], price[ok], delta[ok]))
    if not parts:
        return n_bad
    tt, idx, ch, gain, price, delta = (np.concatenate(v) for v in zip(*parts, strict=True))
    order = np.lexsort((price, ch))
    ch_o, gain_o = ch[order], gain[order]
    cum = np.cumsum(gain_o)
    first = np.searchsorted(ch_o, ch_o, side="left")
    before = cum - gain_o - np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
    take = order[before + gain_o / 2 < np.abs(need[ch_o])]  # stop at the flip that lands nearest
    for t in np.unique(tt[take]):
        m = take[tt[take] == t]
        flat = arrays[t].reshape(-1)
        old = flat[idx[m]]
        new = old + delta[m].astype(np.float32)
        flat[idx[m]] = new
        tracker.edit(int(t), idx[m], old, new)
        frozen[t].reshape(-1)[idx[m]] = True  # each weight flips at most once: fixes cannot pile up
    return n_bad
