"""No false claims: wrong keys and independently trained unmarked models never reach the threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sealinfer import watermark as wm
from sealinfer.tests.watermark.conftest import KEY, rand_keys


def _summary(label: str, log10_ps: list[float], scores: list[float]) -> None:
    lp = np.array(log10_ps)
    sc = np.array(scores)
    q = np.quantile(lp, [0.0, 0.001, 0.01, 0.5])
    print(f"\n{label}: n={lp.size}  min log10 p={q[0]:.2f}  0.1%={q[1]:.2f}  1%={q[2]:.2f}  median={q[3]:.2f}  "
          f"max score z={sc.max():.2f}  mean z={sc.mean():.2f}")


@pytest.mark.slow
def test_watermark_wrong_keys_never_detect(marked):
    """1,200 wrong keys over the three marked models: zero detections; p-values behave like a null."""
    log10_ps, scores, n = [], [], 0
    for name, count, seed in (("mlp", 1000, 11), ("cnn", 100, 12), ("transformer", 100, 13)):
        model = marked[name][0]
        for key in rand_keys(count, seed):
            det = wm.detect(model, key)
            assert not det.detected, f"false detection on {name} with a wrong key (p={det.p_value})"
            assert det.payload is None
            log10_ps.append(det.log10_p)
            scores.append(det.score)
            n += 1
    _summary("wrong keys", log10_ps, scores)
    assert n >= 1000
    # Under the null, P(p <= 0.01) ~ 1% (x the Bonferroni slack): a calibration check, not just "no hits".
    frac = float(np.mean(np.array(log10_ps) <= -2))
    assert frac <= 0.03
    assert min(log10_ps) > math.log10(1e-9)


def test_watermark_unmarked_independent_models_never_detect(unmarked_others):
    log10_ps, scores = [], []
    for model in unmarked_others:
        for key in [KEY, *rand_keys(40, 21)]:
            det = wm.detect(model, key)
            assert not det.detected and det.payload is None
            log10_ps.append(det.log10_p)
            scores.append(det.score)
    _summary("unmarked models", log10_ps, scores)
    assert min(log10_ps) > -9


def test_watermark_wrong_key_reports_p_value(marked):
    det = wm.detect(marked["cnn"][0], b"\x01" * 32)
    assert not det.detected and det.payload is None
    assert 1e-9 < det.p_value <= 1.0 and math.isfinite(det.log10_p)


def test_watermark_other_sites_mark_is_not_ours(built):
    """A model marked with another key (another owner) is 'not detected' under ours."""
    b = built["mlp"]
    theirs, _ = wm.embed(b.model, b"\x42" * 32, b"someone else")
    assert not wm.detect(theirs, KEY).detected
