"""check_certificate: Opacus reference vectors, composition of segments, and every fail-closed reason."""

from __future__ import annotations

import math

import psutil
import pytest

from sealinfer.privacy import (
    AccountantError,
    CertificateError,
    PrivacyParameterError,
    check_certificate,
    compute_epsilon,
)
from sealinfer.privacy.accounting import PrivacyVerdict
from sealinfer.privacy.certificate import Certificate, sha256_hex
from sealinfer.tests.privacy.test_privacy_certificate import cert_dict


def make_cert(accountant="rdp", segments=((1.3, 0.004, 3750),), **overrides):
    segs = [{"noise_multiplier": s, "sample_rate": q, "steps": t} for s, q, t in segments]
    return Certificate.from_json(cert_dict(accountant=accountant, segments=segs, **overrides))


# Published Opacus values at delta=1e-5 (see the issue); recomputed here, must agree within 1%.
REFERENCE = [
    ("rdp", (1.3, 0.004, 3750), 0.922),
    ("prv", (1.3, 0.004, 3750), 0.844),
    ("rdp", (1.0, 0.01, 1000), 2.101),
    ("prv", (1.0, 0.01, 1000), 1.838),
]


@pytest.mark.parametrize(("accountant", "segment", "expected"), REFERENCE)
def test_reference_vectors(accountant, segment, expected):
    verdict = check_certificate(make_cert(accountant, [segment]), max_epsilon=10.0)
    assert verdict.passed, verdict.reasons
    assert verdict.epsilon == pytest.approx(expected, rel=0.01)
    assert verdict.accountant == accountant and verdict.delta == 1e-5 and verdict.total_steps == segment[2]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_segments_compose_to_their_total_steps(accountant):
    split = make_cert(accountant, [(1.0, 0.01, 300), (1.0, 0.01, 700)])
    whole = make_cert(accountant, [(1.0, 0.01, 1000)])
    first = make_cert(accountant, [(1.0, 0.01, 300)])
    eps_split = check_certificate(split, 10.0).epsilon
    assert split.total_steps == 1000
    assert eps_split == pytest.approx(check_certificate(whole, 10.0).epsilon, rel=0.01)
    assert eps_split > check_certificate(first, 10.0).epsilon * 1.2  # the later segment is not ignored


def test_mixed_segments_cost_more_than_either_alone():
    mixed = make_cert("rdp", [(1.0, 0.01, 500), (1.3, 0.004, 1000)])
    eps = check_certificate(mixed, 10.0).epsilon
    assert eps > check_certificate(make_cert("rdp", [(1.0, 0.01, 500)]), 10.0).epsilon
    assert eps > check_certificate(make_cert("rdp", [(1.3, 0.004, 1000)]), 10.0).epsilon


def test_passing_verdict_serialises_and_does_not_raise():
    verdict = check_certificate(make_cert(), max_epsilon=1.0, model_bytes=b"model")
    assert verdict.passed and verdict.reasons == []
    verdict.raise_for_failure()
    data = verdict.to_dict()
    assert data["passed"] is True and data["epsilon"] == pytest.approx(0.922, rel=0.01)
    assert data["max_epsilon"] == 1.0 and data["model_sha256"] == sha256_hex(b"model")


def assert_fails(verdict: PrivacyVerdict, fragment: str) -> None:
    assert not verdict.passed
    assert any(fragment in r for r in verdict.reasons), verdict.reasons
    with pytest.raises(CertificateError, match=fragment):
        verdict.raise_for_failure()


def test_epsilon_above_limit_fails():
    assert_fails(check_certificate(make_cert(), max_epsilon=0.9), "above the limit max_epsilon=0.9")


def test_gdp_accountant_fails():
    verdict = check_certificate(make_cert("gdp"), max_epsilon=10.0)
    assert_fails(verdict, "accountant 'gdp' is not accepted")
    assert verdict.epsilon is None


def test_unknown_accountant_fails():
    assert_fails(check_certificate(make_cert("moments"), max_epsilon=10.0), "accountant 'moments' is unknown")


@pytest.mark.parametrize("sampling", ["uniform", "shuffle", "fixed_size"])
def test_non_poisson_sampling_fails(sampling):
    assert_fails(check_certificate(make_cert(sampling=sampling), max_epsilon=10.0), f"sampling '{sampling}'")


def test_delta_above_one_over_n_fails():
    assert_fails(check_certificate(make_cert(dataset_size=1000, delta=2e-3), max_epsilon=100.0),
                 "above 1/dataset_size")
    # exactly at the boundary is allowed
    assert check_certificate(make_cert(dataset_size=100_000, delta=1e-5), max_epsilon=10.0).passed


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_zero_noise_fails_closed(accountant):
    # RDP returns epsilon=inf for sigma=0; PRV raises inside Opacus. Both must fail, not pass.
    verdict = check_certificate(make_cert(accountant, [(0.0, 0.01, 100)]), max_epsilon=1e9)
    assert_fails(verdict, "epsilon could not be established")
    assert verdict.epsilon is None


def test_rdp_infinite_epsilon_reason_says_so():
    assert_fails(check_certificate(make_cert("rdp", [(0.0, 0.01, 100)]), max_epsilon=1e9), "epsilon=inf")


def test_prv_accountant_error_fails_closed():
    assert_fails(check_certificate(make_cert("prv", [(0.0, 0.01, 100)]), max_epsilon=1e9),
                 "the PRV accountant failed")


def _prv_workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def test_prv_timeout_fails_closed_and_stops_the_worker():
    before = {p.pid for p in _prv_workers()}
    verdict = check_certificate(make_cert("prv"), max_epsilon=10.0, prv_timeout_s=0.01)
    assert_fails(verdict, "did not finish within 0.01 s and was stopped")
    assert {p.pid for p in _prv_workers()} - before == set()


def test_prv_runaway_memory_fails_closed():
    # Weak privacy makes Opacus's PRV grid enormous (>24 GB measured); the worker's address-space
    # limit turns that into an error instead of an OOM kill.
    verdict = check_certificate(make_cert("prv", [(0.3, 0.5, 10_000)], dataset_size=1_000_000),
                                max_epsilon=1e6, prv_timeout_s=30.0)
    assert_fails(verdict, "epsilon could not be established")


def test_digest_mismatch_fails():
    assert_fails(check_certificate(make_cert(), max_epsilon=10.0, model_bytes=b"another model"),
                 "model digest mismatch")


def test_understated_claim_fails():
    assert_fails(check_certificate(make_cert(epsilon=0.5), max_epsilon=10.0), "states epsilon=0.5")
    assert check_certificate(make_cert(epsilon=0.93), max_epsilon=10.0).passed


def test_secure_mode_can_be_required():
    assert_fails(check_certificate(make_cert(), max_epsilon=10.0, require_secure_mode=True), "secure_mode")
    assert check_certificate(make_cert(secure_mode=True), max_epsilon=10.0, require_secure_mode=True).passed


def test_every_reason_is_reported_together():
    cert = make_cert("gdp", sampling="uniform", dataset_size=10, delta=0.5)
    verdict = check_certificate(cert, max_epsilon=1.0, model_bytes=b"x")
    assert len(verdict.reasons) == 4


def test_accepts_json_text_and_rejects_malformed():
    assert check_certificate(make_cert().to_json(), max_epsilon=1.0).passed
    with pytest.raises(CertificateError):
        check_certificate('{"accountant": "rdp"}', max_epsilon=1.0)


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, True, "8"])
def test_bad_limit_is_a_parameter_error(bad):
    with pytest.raises(PrivacyParameterError):
        check_certificate(make_cert(), max_epsilon=bad)


def test_verdict_json_never_contains_infinity():
    verdict = PrivacyVerdict(passed=False, epsilon=math.inf, delta=1e-5, accountant="rdp", reasons=["x"])
    assert verdict.to_dict()["epsilon"] is None


def test_compute_epsilon_rejects_unknown_and_raises_on_infinite():
    with pytest.raises(PrivacyParameterError):
        compute_epsilon("gdp", [(1.0, 0.01, 10)], 1e-5)
    with pytest.raises(AccountantError):
        compute_epsilon("rdp", [(0.0, 0.01, 10)], 1e-5)


def test_identical_segments_are_merged_wherever_they_appear():
    scattered = make_cert("rdp", [(1.0, 0.01, 300), (1.3, 0.004, 100), (1.0, 0.01, 700)])
    grouped = make_cert("rdp", [(1.0, 0.01, 1000), (1.3, 0.004, 100)])
    assert check_certificate(scattered, 10.0).epsilon == pytest.approx(check_certificate(grouped, 10.0).epsilon)


def test_many_distinct_rdp_segments_run_under_the_time_limit():
    # ~20 ms each in-process: 400 distinct segments would stall a check for seconds.
    # (No wall-clock bound on the whole check: starting the accountant's fork server under load takes
    # seconds of its own. What matters is that the verdict says so and the worker is gone.)
    import multiprocessing

    segments = [(1.0 + i * 1e-3, 0.01, 10) for i in range(400)]
    verdict = check_certificate(make_cert("rdp", segments), max_epsilon=100.0, prv_timeout_s=0.5)
    assert_fails(verdict, "RDP accountant did not finish within 0.5 s")
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("sealinfer-")]


def test_too_many_segments_are_refused():
    with pytest.raises(CertificateError, match="more than 1000"):
        make_cert("rdp", [(1.0, 0.01, 1)] * 1001)
