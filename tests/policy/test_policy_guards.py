"""Output guards and the per-caller query-rate limit against model extraction."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sealinfer.runtime.caller import Caller
from sealinfer.runtime.errors import PolicyError, RateLimitError
from sealinfer.runtime.policy.guards import OutputGuard, UnguardableOutputError
from sealinfer.runtime.policy.profile import OutputGuards, load_profile
from sealinfer.runtime.policy.ratelimit import QueryRateExceededError, SlidingWindowLimiter

ANN = Caller("ann", "clinician", "treatment", tenant="north")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probs(rows: int = 5, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, classes))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def test_guards_off_return_the_outputs_untouched():
    guard = OutputGuard(load_profile("dev").outputs)
    outputs = {"p": probs()}
    assert not guard.active
    assert guard.apply(outputs, ANN) is outputs


def test_top_k_keeps_the_k_largest_per_row_and_zeroes_the_rest():
    p = probs()
    original = p.copy()
    out = OutputGuard(OutputGuards(top_k=3)).apply({"p": p, "label": np.argmax(p, axis=1)}, ANN)
    guarded = out["p"]
    assert guarded.shape == p.shape and guarded.dtype == p.dtype
    assert np.array_equal(p, original)  # input not mutated
    for row, g in zip(p, guarded, strict=True):
        top = np.sort(np.argsort(row)[-3:])
        assert np.array_equal(np.sort(np.flatnonzero(g)), top)
        assert np.array_equal(g[top], row[top])
    assert np.array_equal(np.argmax(guarded, axis=1), np.argmax(p, axis=1))
    assert np.array_equal(out["label"], np.argmax(p, axis=1))  # integer outputs pass through


def test_top_k_larger_than_the_class_count_is_a_no_op():
    p = probs(classes=2)
    assert np.array_equal(OutputGuard(OutputGuards(top_k=5)).apply({"p": p}, ANN)["p"], p)


def test_rounding_to_n_decimals():
    p = probs()
    out = OutputGuard(OutputGuards(round_decimals=2)).apply({"p": p}, ANN)["p"]
    assert np.allclose(out, p, atol=0.005 + 1e-6)
    assert np.allclose(out * 100, np.round(out * 100), atol=1e-4)
    assert not np.array_equal(out, p)


def test_top_k_and_rounding_from_the_research_profile():
    cfg = load_profile("research").outputs
    out = OutputGuard(cfg).apply({"p": probs(classes=10)}, ANN)["p"]
    assert (np.count_nonzero(out, axis=1) <= cfg.top_k).all()
    assert np.allclose(out * 10**cfg.round_decimals, np.round(out * 10**cfg.round_decimals), atol=1e-3)


def test_rate_limit_refuses_past_the_limit_with_retry_after():
    clock = FakeClock()
    guard = OutputGuard(OutputGuards(max_queries_per_minute=3), clock=clock)
    for _ in range(3):
        guard.apply({"p": probs()}, ANN)
        clock.now += 1.0
    with pytest.raises(QueryRateExceededError) as info:
        guard.apply({"p": probs()}, ANN)
    assert isinstance(info.value, RateLimitError)
    assert info.value.retry_after == pytest.approx(57.0)
    assert "Retry after 57.0 s" in str(info.value)
    # another caller is not affected
    guard.apply({"p": probs()}, Caller("bob", "clinician", "treatment", tenant="north"))
    # the window slides: after the first query ages out, one more is admitted
    clock.now = 1000.0 + 60.0 + 0.001
    guard.apply({"p": probs()}, ANN)
    with pytest.raises(QueryRateExceededError):
        guard.apply({"p": probs()}, ANN)


def test_refused_queries_do_not_count():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 10.0, clock=clock)
    limiter.acquire("k")
    limiter.acquire("k")
    for _ in range(5):
        with pytest.raises(QueryRateExceededError):
            limiter.acquire("k")
    clock.now += 10.0
    assert limiter.remaining("k") == 2


def test_same_user_in_another_tenant_is_a_different_caller():
    guard = OutputGuard(OutputGuards(max_queries_per_minute=1), clock=FakeClock())
    guard.admit(ANN)
    guard.admit(Caller("ann", "clinician", "treatment", tenant="south"))
    with pytest.raises(QueryRateExceededError):
        guard.admit(Caller("ann", "researcher", "research", tenant="north"))  # role does not reset it


def test_idle_callers_are_pruned():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock, max_idle_keys=10)
    for i in range(10):
        limiter.acquire(i)
    clock.now += 2.0
    limiter.acquire("new")
    assert len(limiter._log) == 1


def test_rate_limit_is_exact_under_eight_threads():
    clock = FakeClock()
    guard = OutputGuard(OutputGuards(max_queries_per_minute=500), clock=clock)
    admitted = [0] * 8
    refused = [0] * 8
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for _ in range(200):
            try:
                guard.admit(ANN)
                admitted[n] += 1
            except QueryRateExceededError:
                refused[n] += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500 and sum(refused) == 8 * 200 - 500


def test_non_array_outputs_fail_closed_when_guards_transform():
    with pytest.raises(UnguardableOutputError, match="zipmap"):
        OutputGuard(OutputGuards(round_decimals=2)).apply({"probs": [{0: 0.1, 1: 0.9}]}, ANN)


def test_guard_config_from_a_mapping_is_checked():
    assert OutputGuard({"top_k": 2, "round_decimals": None, "max_queries_per_minute": None}).active
    with pytest.raises(PolicyError, match="Unknown output guard"):
        OutputGuard({"topk": 2})
    with pytest.raises(PolicyError, match="top_k"):
        OutputGuard({"top_k": 0})
