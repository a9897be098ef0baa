"""Small parts: payload framing, p-values, canonical form, rounding simulators."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import quantize_dynamic

from sealinfer.watermark import canonicalize, codec, quant
from sealinfer.watermark.graph import read_weights


def test_watermark_frame_round_trip_and_whitening():
    key = b"k" * 32
    for payload in (b"a", b"owner|site", bytes(range(32))):
        bits = codec.encode(payload, key)
        assert bits.size == 296
        assert codec.decode(bits, key) == payload
    # whitening: an all-zero payload does not embed (mostly) zero bits
    assert 0.3 < codec.encode(b"\0" * 32, key).mean() < 0.7
    assert codec.decode(codec.encode(b"abc", key), b"x" * 32) != b"abc"


def test_watermark_binomial_tail_exact_and_conservative():
    assert codec.binom_log_sf(0, 64) == 0.0
    assert math.isclose(codec.binom_log_sf(64, 64), 64 * math.log(0.5), rel_tol=1e-9)
    # past float range the Chernoff bound is used: finite, monotone, never smaller than the truth
    a, b = codec.binom_log_sf(900_000, 1_000_000), codec.binom_log_sf(950_000, 1_000_000)
    assert math.isfinite(a) and math.isfinite(b) and b < a < -1e5
    for k in (40, 48, 56):  # where both are finite, the exact value is at most the bound
        q = k / 64
        chernoff = -64 * (q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q)))
        assert codec.binom_log_sf(k, 64) <= chernoff


def test_watermark_pilot_null_is_fair_coin():
    """The null the p-values rest on: with a random key, pilot agreement ~ Binomial(n, 1/2)."""
    from sealinfer.watermark import lattice

    g = np.random.default_rng(0)
    c = g.standard_normal((64, 128)).astype(np.float32)
    fracs = []
    for _ in range(200):
        tally = lattice.LatticeTally()
        lattice.tally_tensor(c, lattice.tensor_code(g.bytes(32), 0, c.shape, 296), 296, tally)
        fracs.append(tally.pilot_agree / tally.pilot_total)
    z = (np.mean(fracs) - 0.5) / (0.5 / math.sqrt(4096 * 200))
    assert abs(z) < 4


def test_watermark_canonical_form_is_invariant():
    g = np.random.default_rng(1)
    a = g.standard_normal((16, 8)).astype(np.float32)
    b = g.standard_normal((4, 16)).astype(np.float32)
    pairs = [canonicalize.Pair(0, 1, 1)]
    ca, _ = canonicalize.to_canonical([a, b], pairs)
    perm = g.permutation(16)
    s = np.exp(g.uniform(-2, 2, 16)).astype(np.float32)
    cb, tf = canonicalize.to_canonical([(a * s[:, None])[perm], (b / s[None, :])[:, perm]], pairs)
    for x, y in zip(ca, cb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    back = canonicalize.from_canonical(cb, tf)
    np.testing.assert_allclose(back[0], (a * s[:, None])[perm], rtol=1e-6)


def test_watermark_row_subsets_are_slices_of_the_canonical_form():
    """The fast path (first canonical rows, never materializing the rest) equals slicing ``to_canonical``,
    is invariant to permutation + rescaling, and writes back exactly what it extracted."""
    g = np.random.default_rng(2)
    a = g.standard_normal((16, 8)).astype(np.float32)
    b = g.standard_normal((4, 16)).astype(np.float32)
    pairs = [canonicalize.Pair(0, 1, 1)]
    full, _ = canonicalize.to_canonical([a, b], pairs)
    subs, protect = canonicalize.row_subsets([a, b], pairs, max_elements=40)
    assert [s.raw_rows.size for s in subs] == [5, 2]
    for t, (x, sub) in enumerate(zip([a, b], subs, strict=True)):
        np.testing.assert_allclose(sub.extract(x), full[t].reshape(full[t].shape[0], -1)[: sub.raw_rows.size],
                                   rtol=1e-6, atol=1e-7)
    assert protect[0].sum(axis=1).tolist() == [2] * 16  # each unit's two largest incoming weights
    perm = g.permutation(16)
    s = np.exp(g.uniform(-2, 2, 16)).astype(np.float32)
    attacked = [(a * s[:, None])[perm], (b / s[None, :])[:, perm]]
    subs2, _ = canonicalize.row_subsets(attacked, pairs, max_elements=40)
    for x, y, s1, s2 in zip([a, b], attacked, subs, subs2, strict=True):
        np.testing.assert_allclose(s1.extract(x), s2.extract(y), rtol=1e-6, atol=1e-7)
    raw = a.copy()
    new = subs[0].extract(a) + np.float32(1e-3)
    subs[0].write(raw, new)
    np.testing.assert_allclose(subs[0].extract(raw), new, rtol=1e-6)


def test_watermark_robust_score_null_is_conservative():
    """The robust channel's p-value (Chernoff bound exp(-S^2/K) per test, Bonferroni over tensors x levels)
    never claims more than it should on unmarked weights: P(p <= alpha) <= alpha."""
    from sealinfer.watermark import robust

    g = np.random.default_rng(3)
    w = [g.standard_normal((64, 512)).astype(np.float32)]
    log_ps = np.array([robust.score(w, g.bytes(32)).log_p for _ in range(400)])
    for alpha in (0.5, 0.2, 0.05):
        assert np.mean(log_ps <= math.log(alpha)) <= alpha
    assert log_ps.min() > math.log(1e-4)


def test_watermark_fast_fp16_rounding_is_bit_exact():
    g = np.random.default_rng(4)
    w = np.concatenate([g.standard_normal(200_000) * 0.05, g.standard_normal(1000) * 1e-5,
                        [0.0, -0.0, 6.1035156e-05, 6.1035e-05, -2.0**-24, 2.0**-25, 65503.0, 1.0 + 2.0**-11,
                         1.0 + 3 * 2.0**-11, -(1.0 + 2.0**-11)]]).astype(np.float32)
    out = np.empty_like(w)
    quant.fp16_into(w, out, float(np.abs(w).max()))
    np.testing.assert_array_equal(out.view(np.uint32), w.astype(np.float16).astype(np.float32).view(np.uint32))
    big = np.array([70000.0, 1.0, np.inf], dtype=np.float32)  # overflow range: numpy's cast throughout
    got = quant.fp16_into(big, np.empty_like(big), float("inf"))
    assert np.array_equal(got, big.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("sim", ["fp16", "int8"])
def test_watermark_simulators_match_real_conversions(built, tmp_path, sim):
    model = built["mlp"].model
    ws = read_weights(model)
    if sim == "int8":
        src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic(str(src), str(dst))
        real = read_weights(onnx.load(str(dst))).arrays
        simmed = [quant.simulate_int8(a) for a in ws.arrays]
    else:
        real = [a.astype(np.float16).astype(np.float32) for a in ws.arrays]
        simmed = [quant.simulate_fp16(a) for a in ws.arrays]
    for r, s in zip(real, simmed, strict=True):
        np.testing.assert_array_equal(r, s)
