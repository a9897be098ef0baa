"""EDF dispatch, token-bucket quotas and admission control, on real threads and a real session."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sealinfer.runtime.errors import (
    ConfigurationError,
    DeadlineInfeasibleError,
    QuotaExceededError,
)
from sealinfer.runtime.scheduler.devices import load_devices
from sealinfer.runtime.scheduler.dispatch import Dispatcher, DispatcherClosedError
from sealinfer.runtime.scheduler.policy import PlacementPolicy
from sealinfer.runtime.scheduler.sessions import create_session


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _blocked(dispatcher, **kwargs):
    """Occupy the single worker until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(10)
        return "held"

    future = dispatcher.submit(hold, **kwargs)
    assert started.wait(10)
    return gate, future


@pytest.mark.parametrize("discipline", ["edf", "fifo"])
def test_queue_order_is_earliest_deadline_first(hipaa_raw, discipline):
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    order = []
    with Dispatcher({"cpu": 1}, policy, discipline=discipline, admission=False, quotas=False) as dispatcher:
        gate, first = _blocked(dispatcher, priority="batch", tenant="t", predicted_s=0.0)
        deadlines = [("batch", None), ("routine", None), ("stat", None), ("batch", 5.0), ("stat", 0.05)]
        futures = [dispatcher.submit(lambda i=i: order.append(i), priority=p, tenant="t", deadline_s=d,
                                     predicted_s=0.0) for i, (p, d) in enumerate(deadlines)]
        assert dispatcher.queued() == 5
        gate.set()
        for f in [first, *futures]:
            f.result(10)
    # deadlines: 60, 2, 0.2, 5, 0.05 seconds from submission
    assert order == ([4, 2, 1, 3, 0] if discipline == "edf" else [0, 1, 2, 3, 4])


def test_token_bucket_quota_per_tenant(hipaa_raw):
    hipaa_raw["tenants"] = {"icu": {"rate_per_s": 2, "burst": 3}, "research": {"rate_per_s": 1, "burst": 1}}
    clock = FakeClock()
    with Dispatcher({"cpu": 1}, PlacementPolicy.from_profile_dict(hipaa_raw), admission=False,
                    clock=clock) as dispatcher:
        for _ in range(3):
            dispatcher.submit(lambda: None, priority="routine", tenant="icu", predicted_s=0.0)
        with pytest.raises(QuotaExceededError, match="'icu' is over its quota") as info:
            dispatcher.submit(lambda: None, priority="routine", tenant="icu", predicted_s=0.0)
        assert "Retry in 0.500 s" in str(info.value)
        # Another tenant's bucket is untouched by icu's burst.
        dispatcher.submit(lambda: None, priority="routine", tenant="research", predicted_s=0.0)
        with pytest.raises(QuotaExceededError, match="no quota"):
            dispatcher.submit(lambda: None, priority="routine", tenant="stranger", predicted_s=0.0)
        clock.now += 0.5  # refills one icu token
        dispatcher.submit(lambda: None, priority="routine", tenant="icu", predicted_s=0.0)
        with pytest.raises(QuotaExceededError):
            dispatcher.submit(lambda: None, priority="routine", tenant="icu", predicted_s=0.0)
        assert dispatcher.rejected["quota"] == 3


def test_admission_rejects_infeasible_deadlines_and_edf_lets_stat_jump_the_queue(hipaa_raw):
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    with pytest.raises(DeadlineInfeasibleError, match="after its deadline"):
        with Dispatcher({"cpu": 1}, policy) as dispatcher:
            dispatcher.submit(lambda: None, priority="stat", tenant="default", predicted_s=0.5)  # stat = 200 ms
    for discipline, stat_admitted in (("edf", True), ("fifo", False)):
        with Dispatcher({"cpu": 1}, policy, discipline=discipline) as dispatcher:
            gate, first = _blocked(dispatcher, priority="batch", tenant="default", predicted_s=0.0)
            for _ in range(10):  # one second of queued batch work
                dispatcher.submit(lambda: None, priority="batch", tenant="default", predicted_s=0.1)
            try:
                stat = dispatcher.submit(lambda: "stat", priority="stat", tenant="default", predicted_s=0.01)
            except DeadlineInfeasibleError:
                stat = None
            gate.set()
        assert (stat is not None) is stat_admitted
        if stat is not None:
            assert stat.result(10) == "stat"
    # A rejected request gives its quota token back.
    hipaa_raw["tenants"] = {"default": {"rate_per_s": 0.001, "burst": 1}}
    with Dispatcher({"cpu": 1}, PlacementPolicy.from_profile_dict(hipaa_raw)) as dispatcher:
        with pytest.raises(DeadlineInfeasibleError):
            dispatcher.submit(lambda: None, priority="stat", tenant="default", predicted_s=1.0)
        dispatcher.submit(lambda: None, priority="stat", tenant="default", predicted_s=0.001).result(10)


def test_real_sessions_run_on_per_device_pools(devices_file, hipaa_raw, models):
    devices = {d.id: d for d in load_devices(devices_file)}
    model = models["mlp"]().SerializeToString()
    sessions = {i: create_session(model, devices[i]) for i in ("cpu-1t", "cpu-2t")}
    records = []
    x = np.ones((4, 64), np.float32)
    with Dispatcher([devices["cpu-1t"], devices["cpu-2t"]], PlacementPolicy.from_profile_dict(hipaa_raw),
                    observer=records.append) as dispatcher:
        futures = [dispatcher.submit(lambda s=sessions[d]: s.run(None, {"X": x})[0], priority="routine",
                                     tenant="default", predicted_s=0.001, device=d)
                   for d in ("cpu-1t", "cpu-2t") * 5]
        outputs = [f.result(30) for f in futures]
        with pytest.raises(ConfigurationError, match="say which device"):
            dispatcher.submit(lambda: None, priority="routine", tenant="default", predicted_s=0.0)
    assert all(np.array_equal(o, outputs[0]) for o in outputs)
    assert sorted(r.device for r in records) == ["cpu-1t"] * 5 + ["cpu-2t"] * 5
    assert all(r.ok and r.met_deadline and r.queue_s >= 0 and r.run_s > 0 for r in records)


def test_errors_and_close(hipaa_raw):
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    dispatcher = Dispatcher({"cpu": 1}, policy)

    def boom():
        raise ValueError("model failed")

    with pytest.raises(ValueError, match="model failed"):
        dispatcher.submit(boom, priority="routine", tenant="default", predicted_s=0.0).result(10)
    for bad in ({"priority": "urgent"}, {"predicted_s": -1.0}, {"deadline_s": 0.0}, {"device": "gpu9"}):
        kwargs = {"priority": "routine", "tenant": "default", "predicted_s": 0.0, **bad}
        with pytest.raises(ConfigurationError):
            dispatcher.submit(lambda: None, **kwargs)
    gate, first = _blocked(dispatcher, priority="routine", tenant="default", predicted_s=0.0)
    pending = dispatcher.submit(lambda: None, priority="routine", tenant="default", predicted_s=0.0)
    dispatcher.close(wait=False, cancel_pending=True)
    assert pending.cancelled()
    gate.set()
    assert first.result(10) == "held"
    dispatcher.close()
    with pytest.raises(DispatcherClosedError):
        dispatcher.submit(lambda: None, priority="routine", tenant="default", predicted_s=0.0)
    with pytest.raises(ConfigurationError):
        Dispatcher({"cpu": 0}, policy)
