"""Reading FP16 and INT8 weights back as float32, and simulating those conversions.

Two layouts are read: onnxruntime ``quantize_dynamic`` (``<name>_quantized`` int8 initializer feeding
MatMulInteger/ConvInteger, with ``<name>_scale`` and ``<name>_zero_point`` beside it) and the QDQ
layout (``DequantizeLinear(int8 initializer, scale, zero_point)`` feeding a float op). FP16 weights
arrive through ``Cast`` nodes and are simply widened.

The simulators reproduce what those conversions do to a float32 tensor (round-to-nearest-even to
FP16; symmetric per-tensor int8 with ``scale = max|w| / 127``, the ``quantize_dynamic`` default) so
that embedding can check — and, where needed, nudge — the mark to decode bit-exactly after them.
"""

from __future__ import annotations

import numpy as np

INT8_QMAX = 127.0


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1) -> np.ndarray:
    """``(q - zero_point) * scale`` with per-tensor or per-axis parameters (DequantizeLinear semantics)."""
    qf = q.astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (qf - zp.reshape(())) * scale.reshape(())
    shape = [1] * q.ndim
    shape[axis] = -1
    return (qf - zp.reshape(shape)) * scale.reshape(shape)


def int8_scale(w: np.ndarray) -> float:
    m = float(np.max(np.abs(w))) if w.size else 0.0
    return m / INT8_QMAX if m > 0 else 1.0


def simulate_int8(w: np.ndarray) -> np.ndarray:
    m = float(np.max(np.abs(w))) if w.size else 0.0
    return simulate_int8_at(w, m)


def simulate_int8_at(w: np.ndarray, absmax: float) -> np.ndarray:
    """INT8 rounding of (part of) a tensor whose max-abs, which sets the scale, is ``absmax``."""
    return int8_into(np.asarray(w, dtype=np.float32), absmax, np.empty(np.shape(w), dtype=np.float32))


def int8_into(w: np.ndarray, absmax: float, out: np.ndarray) -> np.ndarray:
    """``simulate_int8_at`` written into ``out`` (same float32 operations: w / scale, rint, clip, * scale)."""
    scale = np.float32(absmax / INT8_QMAX if absmax > 0 else 1.0)
    np.divide(w, scale, out=out)
    np.rint(out, out=out)
    np.clip(out, -INT8_QMAX, INT8_QMAX, out=out)
    out *= scale
    return out


FP16_MIN_NORMAL = 0x38800000  # float32 bits of 2^-14: below it FP16 is subnormal (fixed 2^-24 spacing)
FP16_MAX = 65504.0


def fp16_into(w: np.ndarray, out: np.ndarray, absmax: float) -> np.ndarray:
    """``simulate_fp16`` written into ``out`` (float32, same shape), ~3x faster than two numpy casts.

    In FP16's normal range, rounding a float32 to FP16 and back is round-to-nearest-even of the 23-bit
    significand to 10 bits, done here on the bits; the few weights below 2^-14 (FP16 subnormals) go
    through numpy's cast, and a tensor reaching FP16's overflow range (or holding inf/nan) goes through
    it entirely. Equal to ``w.astype(float16).astype(float32)`` bit for bit.
    """
    if not absmax < FP16_MAX:  # also catches nan
        np.copyto(out, w.astype(np.float16))
        return out
    v = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    u = out.view(np.uint32)
    np.right_shift(v, 13, out=u)
    u &= np.uint32(1)
    u += np.uint32(0xFFF)
    u += v
    u &= np.uint32(0xFFFFE000)
    small = np.flatnonzero((v & np.uint32(0x7FFFFFFF)) < np.uint32(FP16_MIN_NORMAL))
    if small.size:
        flat = out.reshape(-1)
        flat[small] = w.reshape(-1)[small].astype(np.float16).astype(np.float32)
    return out


def simulate_fp16(w: np.ndarray) -> np.ndarray:
    return w.astype(np.float16).astype(np.float32)


def int8_neighbours(w: np.ndarray, absmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rounding neighbours of the weights ``w`` of a tensor whose max-abs (which sets the scale) is ``absmax``.

    Returns ``(up_step, up_cost, down_step, down_cost)``: moving the float weight just past the boundary
    changes its quantized value by ``up_step`` (>0) at a float cost of ``up_cost``, likewise downwards.
    """
    scale = np.float32(absmax / INT8_QMAX if absmax > 0 else 1.0)
    q = np.rint(w / scale)
    up_cost = ((q + 0.5) * scale - w).astype(np.float32)
    down_cost = (w - (q - 0.5) * scale).astype(np.float32)
    step = np.full(w.shape, scale, dtype=np.float32)
    # Levels at the clip limits cannot move outwards.
    up_step = np.where(q >= INT8_QMAX, 0.0, step).astype(np.float32)
    down_step = np.where(q <= -INT8_QMAX, 0.0, step).astype(np.float32)
    return up_step, up_cost, down_step, down_cost


def fp16_neighbours(w: np.ndarray, absmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    h = w.astype(np.float16)
    up = np.nextafter(h, np.float16(np.inf)).astype(np.float32)
    down = np.nextafter(h, np.float16(-np.inf)).astype(np.float32)
    hf = h.astype(np.float32)
    up_step = up - hf
    down_step = hf - down
    up_cost = (hf + up_step / 2) - w
    down_cost = w - (hf - down_step / 2)
    return up_step, up_cost, down_step, down_cost


SIMULATORS = {
    "fp16": (simulate_fp16, fp16_neighbours),
    "int8": (simulate_int8, int8_neighbours),
}
