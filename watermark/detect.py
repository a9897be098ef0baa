"""``detect`` and ``verify_commitment``: blind, keyed detection with an exact p-value."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import onnx

from sealinfer.watermark import canonicalize, codec, lattice, robust, spread
from sealinfer.watermark.common import STRENGTH, STRENGTH_LEVELS, carriers
from sealinfer.watermark.errors import PayloadMismatchError, WatermarkError, WatermarkNotFoundError
from sealinfer.watermark.keys import SCHEME, check_key
from sealinfer.watermark.report import DEFAULT_THRESHOLD_P, Detection

LN10 = math.log(10.0)


class _Channel:
    def __init__(self, name: str, log_p: float, agree: int, total: int, frame_bits: np.ndarray | None,
                 score: float | None = None) -> None:
        self.name, self.log_p, self.agree, self.total, self.frame_bits = name, log_p, agree, total, frame_bits
        self.score = codec.z_score(agree, total) if score is None else score


def _spread_channel(arrays: list[np.ndarray], shapes: list[tuple[int, ...]], key: bytes, n_frame: int) -> _Channel:
    lay = spread.layout(key, shapes, n_frame)
    if int(lay.sizes.min()) < spread.MIN_CHIP:
        return _Channel("spread", 0.0, 0, 0, None)
    p = spread.projections(lay, arrays)
    best: tuple[int, np.ndarray] | None = None
    for level in STRENGTH_LEVELS:  # the strength embed settled on is not stored: test each, pay for it below
        d = spread.decisions(p, spread.steps(lay, STRENGTH * level), lay)
        agree = int(np.count_nonzero(d[: lay.n_pilot] == lay.bits[: lay.n_pilot]))
        if best is None or agree > best[0]:  # the binomial tail falls with agreement: most agreeing is best
            best = (agree, d)
    assert best is not None
    agree, d = best
    idx = np.arange(lay.n_chips - lay.n_pilot) % n_frame
    ones = np.bincount(idx, weights=d[lay.n_pilot:], minlength=n_frame)
    votes = np.bincount(idx, minlength=n_frame)
    log_p = min(0.0, codec.binom_log_sf(agree, lay.n_pilot) + math.log(len(STRENGTH_LEVELS)))  # Bonferroni
    return _Channel("spread", log_p, agree, lay.n_pilot, codec.majority(ones, votes))


def _lattice_channel(model: onnx.ModelProto, arrays: list[np.ndarray], refs: list[Any], key: bytes,
                     n_frame: int) -> _Channel:
    pairs = canonicalize.find_pairs(model, refs)
    subsets, _ = canonicalize.row_subsets(arrays, pairs, lattice.MAX_ROW_SUBSET)
    tally = lattice.LatticeTally()
    for t, sub in enumerate(subsets):
        code = lattice.tensor_code(key, t, (sub.raw_rows.size, sub.cols), n_frame)
        lattice.tally_tensor(sub.extract(arrays[t]), code, n_frame, tally)
    assert tally.ones is not None and tally.votes is not None
    return _Channel("lattice", codec.binom_log_sf(tally.pilot_agree, tally.pilot_total), tally.pilot_agree,
                    tally.pilot_total, codec.majority(tally.ones, tally.votes))


def detect(model: onnx.ModelProto, key: bytes, *, payload_bits: int = codec.PAYLOAD_BITS,
           threshold_p: float = DEFAULT_THRESHOLD_P) -> Detection:
    """Look for the mark of ``key`` in ``model`` (float, FP16 or INT8 weights) without the original."""
    key = check_key(key)
    if payload_bits % 8 or not 8 <= payload_bits <= 2048:
        raise WatermarkError(f"payload_bits={payload_bits} is not a whole number of bytes in 8..2048.",
                             hint="Use the n_bits recorded in the receipt (256).")
    ws = carriers(model)
    n_frame = codec.frame_bits(payload_bits)
    shapes = [tuple(a.shape) for a in ws.arrays]
    channels = [_spread_channel(ws.arrays, shapes, key, n_frame),
                _lattice_channel(model, ws.arrays, ws.refs, key, n_frame)]
    if sum(a.size for a in ws.arrays) < spread.LARGE_MODEL:  # embed adds the robust channel to these only
        rs = robust.score(ws.arrays, key)
        channels.append(_Channel("robust", rs.log_p, rs.agree, rs.total, None, rs.score))
    best = min(channels, key=lambda c: c.log_p)
    log_p = min(0.0, best.log_p + math.log(len(channels)))  # Bonferroni over channels
    detected = log_p <= math.log(threshold_p)
    payload = None
    if detected:  # the first channel (by evidence) whose frame carries a valid keyed tag
        for ch in sorted(channels, key=lambda c: c.log_p):
            if ch.frame_bits is not None:
                payload = codec.decode(ch.frame_bits, key, payload_bits)
                if payload is not None:
                    break
    return Detection(
        detected=detected,
        payload=payload,
        bit_error_rate=1.0 - best.agree / best.total if best.total else 1.0,
        p_value=math.exp(log_p),
        score=best.score,
        threshold_p=threshold_p,
        log10_p=log_p / LN10,
        channel=best.name,
    )


def verify_commitment(model: onnx.ModelProto, key: bytes, commitment: dict[str, Any]) -> Detection:
    """Detect and check the payload against a signed commitment; raise unless both hold (fail closed)."""
    scheme = commitment.get("scheme") if isinstance(commitment, dict) else None
    if scheme != SCHEME:
        raise WatermarkNotFoundError(
            f"The watermark commitment is for scheme {scheme!r}, not {SCHEME!r}.",
            hint="Re-seal the model with this version of sealinfer.",
        )
    try:
        threshold = float(commitment["threshold_p"])
        n_bits = int(commitment["n_bits"])
        digest = str(commitment["payload_sha256"])
    except (KeyError, TypeError, ValueError):
        raise WatermarkNotFoundError("The watermark commitment is incomplete.",
                                     hint="It needs scheme, payload_sha256, threshold_p and n_bits.") from None
    det = detect(model, key, payload_bits=n_bits, threshold_p=threshold)
    if not det.detected:
        raise WatermarkNotFoundError(
            f"No watermark for this key (p = {det.p_value:.3g}, threshold {threshold:.0e}).",
            hint="The model is not the one that was sealed, or the watermark key differs (check the key id).",
        )
    if det.payload is None or hashlib.sha256(det.payload).hexdigest() != digest:
        raise PayloadMismatchError(
            "A watermark is present but its payload does not match the signed commitment.",
            hint="This is a different site's copy (or a tampered one): do not load it; investigate.",
        )
    return det
