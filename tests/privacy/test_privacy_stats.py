"""DP statistics: released noise follows the mechanism (KS), answers are right, the budget is enforced."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from sealinfer.privacy import BudgetExceededError, BudgetLedger, DPStatistics, PrivacyParameterError
from sealinfer.privacy.stats import OTHER

N_RELEASES = 1500
# OpenDP draws noise from the OS CSPRNG by design, so these tests cannot be seeded; each goodness-of-fit
# assertion on the true law is made at p > 1e-4 (a 1-in-10,000 false alarm), while the wrong laws used as
# controls are rejected at p-values many orders of magnitude smaller.
P_OK = 1e-4


@pytest.fixture
def ledger(tmp_path):
    with BudgetLedger(tmp_path / "ledger.db") as ledger:
        yield ledger


@pytest.fixture
def risk_scores():
    return np.random.default_rng(0).uniform(0, 1, size=500)


def test_sum_noise_is_laplace_with_the_reported_scale(ledger, risk_scores):
    ledger.set_budget("preds", N_RELEASES * 0.5)
    stats = DPStatistics(ledger, "preds")
    releases = [stats.sum(risk_scores, bounds=(0.0, 1.0), epsilon=0.5) for _ in range(N_RELEASES)]
    scale = releases[0].scale
    assert scale == pytest.approx(1 / 0.5, rel=1e-3)  # sensitivity 1 / epsilon
    noise = np.array([r.value for r in releases]) - risk_scores.sum()
    assert sps.kstest(noise, "laplace", args=(0, scale)).pvalue > P_OK
    # the test has power: the same noise is not Laplace at 1.5x the scale
    assert sps.kstest(noise, "laplace", args=(0, 1.5 * scale)).pvalue < 1e-3
    assert ledger.spent("preds") == pytest.approx(sum(r.epsilon for r in releases))


def test_count_noise_is_discrete_laplace(ledger):
    ledger.set_budget("preds", N_RELEASES * 0.5)
    stats = DPStatistics(ledger, "preds")
    records = list(range(321))
    releases = [stats.count(records, epsilon=0.5) for _ in range(N_RELEASES)]
    noise = np.array([r.value for r in releases]) - len(records)
    assert noise.dtype.kind == "i" and releases[0].scale == pytest.approx(2.0, rel=1e-3)
    dist = sps.dlaplace(1 / releases[0].scale)
    # KS needs a continuous law: add U(0,1) jitter to each integer, whose exact CDF is known.
    jittered = noise + np.random.default_rng(1).uniform(size=len(noise))
    assert sps.kstest(jittered, _jittered_cdf(dist)).pvalue > P_OK
    assert sps.kstest(jittered, _jittered_cdf(sps.dlaplace(1 / 4.0))).pvalue < 1e-3  # a wrong scale is rejected
    # and a chi-square test on the central values, which is exact for discrete data
    values = np.arange(-6, 7)
    observed = np.array([np.sum(noise == v) for v in values] + [np.sum(np.abs(noise) > 6)])
    expected = np.append(dist.pmf(values), 1 - dist.pmf(values).sum()) * len(noise)
    assert sps.chisquare(observed, expected).pvalue > P_OK


def _jittered_cdf(dist):
    def cdf(t):
        k = np.floor(t)
        return dist.cdf(k - 1) + (t - k) * dist.pmf(k)

    return cdf


def test_scale_follows_the_clamping_bounds(ledger, risk_scores):
    ledger.set_budget("d", 10)
    stats = DPStatistics(ledger, "d")
    wide = stats.sum(risk_scores, bounds=(-5.0, 2.0), epsilon=1.0)
    narrow = stats.sum(risk_scores, bounds=(0.0, 1.0), epsilon=1.0)
    # one record moves a clamped sum by at least max(|lower|, |upper|); OpenDP's map decides the rest
    assert wide.scale >= 5.0 and wide.scale > 4 * narrow.scale
    assert wide.epsilon <= 1.0 and wide.epsilon == pytest.approx(1.0, rel=1e-6)


def test_mean_is_accurate_at_large_epsilon(ledger, risk_scores):
    ledger.set_budget("d", 1000)
    stats = DPStatistics(ledger, "d")
    values = np.append(risk_scores, [50.0, -50.0])  # outliers are clamped to the public bounds
    release = stats.mean(values, bounds=(0.0, 1.0), epsilon=200.0)
    assert release.value == pytest.approx(np.clip(values, 0, 1).mean(), abs=0.01)
    assert release.epsilon == pytest.approx(200.0, rel=1e-3) and release.epsilon <= 200.0


def test_histogram_by_edges_and_categories(ledger):
    ledger.set_budget("d", 1000)
    stats = DPStatistics(ledger, "d")
    values = [0.1] * 30 + [0.6] * 20 + [1.0] * 5 + [7.0] * 3
    by_edges = stats.histogram(values, edges=[0, 0.5, 1.0], epsilon=100.0)
    assert by_edges.value == {"[0,0.5)": 30, "[0.5,1]": 25, OTHER: 3}
    labels = ["sepsis"] * 12 + ["no-sepsis"] * 40 + ["unknown"] * 2
    by_cat = stats.histogram(labels, categories=["sepsis", "no-sepsis"], epsilon=100.0)
    assert by_cat.value == {"sepsis": 12, "no-sepsis": 40, OTHER: 2}


def test_a_query_beyond_the_budget_is_refused_and_spends_nothing(ledger, risk_scores):
    ledger.set_budget("d", 1.0)
    stats = DPStatistics(ledger, "d")
    first = stats.mean(risk_scores, bounds=(0, 1), epsilon=0.6)
    assert first.remaining_epsilon == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(BudgetExceededError, match="nothing was released or spent"):
        stats.count(risk_scores, epsilon=0.6)
    assert ledger.summary() == [
        {"dataset": "d", "budget_epsilon": 1.0, "spent_epsilon": pytest.approx(first.epsilon), "queries": 1}
    ]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda s: s.count([1, 2], epsilon=0), "epsilon"),
        (lambda s: s.sum([1.0], bounds=(1, 0), epsilon=1), "bounds"),
        (lambda s: s.mean([float("nan")], bounds=(0, 1), epsilon=1), "NaN"),
        (lambda s: s.histogram([1.0], edges=[1, 0], epsilon=1), "edges"),
        (lambda s: s.histogram([1.0], epsilon=1), "exactly one"),
        (lambda s: s.histogram(["a"], categories=["a", "a"], epsilon=1), "distinct"),
        (lambda s: s.mean(["12.5", "n/a"], bounds=(0, 20), epsilon=1), "must be numbers"),
        (lambda s: s.histogram(["low"], edges=[0, 1], epsilon=1), "must be numbers"),
    ],
)
def test_bad_queries_are_refused_before_spending(ledger, call, fragment):
    ledger.set_budget("d", 10)
    with pytest.raises(PrivacyParameterError, match=fragment):
        call(DPStatistics(ledger, "d"))
    assert ledger.spent("d") == 0.0
