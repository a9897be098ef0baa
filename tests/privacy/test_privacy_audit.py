"""Membership audit: an overfit model leaks measurably, a DP one does not, and the bound is sound."""

from __future__ import annotations

import numpy as np
import pytest

from sealinfer.privacy import PrivacyParameterError, audit_membership
from sealinfer.privacy.audit import epsilon_lower_bound
from sealinfer.tests.privacy.conftest import CANARY_DELTA


@pytest.fixture(scope="module")
def overfit_audit(overfit_model, canaries):
    return audit_membership(overfit_model.onnx_bytes, canaries.members, canaries.non_members, delta=CANARY_DELTA)


@pytest.fixture(scope="module")
def dp_audit(dp_canary_model, canaries):
    return audit_membership(dp_canary_model.onnx_bytes, canaries.members, canaries.non_members,
                            delta=CANARY_DELTA, certificate_epsilon=dp_canary_model.epsilon)


def test_overfit_model_has_a_clearly_higher_epsilon_bound(overfit_audit, dp_audit):
    assert overfit_audit.epsilon_lower_bound > 1.0
    assert dp_audit.epsilon_lower_bound < 0.5
    assert overfit_audit.epsilon_lower_bound - dp_audit.epsilon_lower_bound > 1.0
    assert overfit_audit.auc > 0.8 > dp_audit.auc


def test_dp_model_is_consistent_with_its_certificate(dp_audit, dp_canary_model):
    assert dp_audit.certificate_epsilon == dp_canary_model.epsilon
    assert dp_audit.epsilon_lower_bound <= dp_canary_model.epsilon
    assert not dp_audit.flagged


def test_certificate_below_the_bound_is_flagged(overfit_model, canaries, overfit_audit):
    claimed = overfit_audit.epsilon_lower_bound / 2
    audit = audit_membership(overfit_model.onnx_bytes, canaries.members, canaries.non_members,
                             delta=CANARY_DELTA, certificate_epsilon=claimed)
    assert audit.flagged
    honest = audit_membership(overfit_model.onnx_bytes, canaries.members, canaries.non_members,
                              delta=CANARY_DELTA, certificate_epsilon=overfit_audit.epsilon_lower_bound * 2)
    assert not honest.flagged


def test_report_fields(overfit_audit, canaries):
    data = overfit_audit.to_dict()
    assert data["n_members"] == len(canaries.members[1]) and data["n_non_members"] == len(canaries.non_members[1])
    assert data["confidence"] == 0.95
    assert 0.0 <= data["tpr_at_fpr_1e3"] <= 1.0
    assert overfit_audit.best_threshold is not None and overfit_audit.best_threshold >= 0  # a loss threshold


def test_identical_score_distributions_prove_nothing():
    rng = np.random.default_rng(1)
    eps, _ = epsilon_lower_bound(rng.normal(size=2000), rng.normal(size=2000), delta=1e-5)
    assert eps < 0.3


def test_perfect_separation_is_limited_by_sample_size():
    # With n trials per side and no errors, Clopper-Pearson caps the provable epsilon near log(n / ln(K/alpha)).
    eps_small, _ = epsilon_lower_bound(np.ones(100), np.zeros(100), delta=0.0)
    eps_large, _ = epsilon_lower_bound(np.ones(10_000), np.zeros(10_000), delta=0.0)
    assert 1.0 < eps_small < np.log(100)
    assert eps_small < eps_large < np.log(10_000)


def test_higher_confidence_gives_a_lower_bound():
    rng = np.random.default_rng(2)
    s_in, s_out = rng.normal(1.5, 1, 1000), rng.normal(0, 1, 1000)
    e95, _ = epsilon_lower_bound(s_in, s_out, delta=1e-5, confidence=0.95)
    e99, _ = epsilon_lower_bound(s_in, s_out, delta=1e-5, confidence=0.999)
    assert 0 < e99 < e95


def test_same_records_on_both_sides_prove_nothing(dp_canary_model, canaries):
    # members == non-members: every record scores identically on both sides, nothing is learned
    same = audit_membership(dp_canary_model.onnx_bytes, canaries.members, canaries.members, delta=CANARY_DELTA)
    assert same.auc == pytest.approx(0.5)
    assert same.epsilon_lower_bound == 0.0 and same.tpr_at_fpr_1e3 == 0.0


def test_bad_inputs_are_refused(dp_canary_model, canaries):
    X, y = canaries.members
    with pytest.raises(PrivacyParameterError):
        audit_membership(b"not onnx", canaries.members, canaries.non_members)
    with pytest.raises(PrivacyParameterError, match="labels"):
        audit_membership(dp_canary_model.onnx_bytes, (X, y + 5), canaries.non_members)
    with pytest.raises(PrivacyParameterError):
        audit_membership(dp_canary_model.onnx_bytes, (X, y[:-1]), canaries.non_members)
    with pytest.raises(PrivacyParameterError, match="outputs"):
        audit_membership(dp_canary_model.onnx_bytes, canaries.members, canaries.non_members, outputs="raw")
    with pytest.raises(PrivacyParameterError, match="cannot run on these rows"):  # was onnxruntime's own error
        audit_membership(dp_canary_model.onnx_bytes, (X[:, :3], y), canaries.non_members)
