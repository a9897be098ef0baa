"""Descriptors for hardware that is not here (CUDA GPU, NPU, cloud GPU) beside two REAL CPU partitions
(1 and 2 intra-op threads) that run real onnxruntime sessions on the device the placer chose."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from sealinfer.runtime.errors import ConfigurationError, PlacementError
from sealinfer.runtime.scheduler.calibration import Calibration
from sealinfer.runtime.scheduler.devices import load_devices
from sealinfer.runtime.scheduler.features import extract_features
from sealinfer.runtime.scheduler.placement import DeviceUnavailableError, Placer
from sealinfer.runtime.scheduler.policy import PlacementPolicy
from sealinfer.runtime.scheduler.sessions import create_session, session_options_for

REAL = frozenset(ort.get_available_providers())
WITH_CUDA = REAL | {"CUDAExecutionProvider"}  # a host where the CUDA provider loads


def _reasons(explanation):
    return {r["device"]: r["reason"] for r in explanation["rejected"]}


def test_phi_on_this_host_lands_on_an_attested_cpu_partition(devices_file, hipaa_raw, models):
    devices = load_devices(devices_file)
    placement = Placer(devices, available_providers=REAL).place(
        extract_features(models["mlp"]()), PlacementPolicy.from_profile_dict(hipaa_raw), phi=True)
    assert placement.device.id in {"cpu-1t", "cpu-2t"}
    reasons = _reasons(placement.explanation)
    assert "CUDAExecutionProvider is not available" in reasons["gpu0"]
    assert "QNNExecutionProvider" in reasons["npu0"] and "precision fp32" in reasons["npu0"]
    assert "on-prem" in reasons["cloud-gpu"] and "attested" in reasons["cloud-gpu"]


def test_gpu_wins_big_phi_models_but_cloud_only_gets_non_phi(devices_file, hipaa_raw, models):
    placer = Placer(load_devices(devices_file), available_providers=WITH_CUDA)
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    big = extract_features(models["mlp"](1024, 1024, 8))
    assert placer.place(big, policy, phi=True, batch=256).device.id == "gpu0"
    non_phi = placer.place(big, policy, phi=False, batch=256)
    assert non_phi.device.id == "cloud-gpu"  # fastest, allowed without PHI
    assert {c["device"] for c in non_phi.explanation["candidates"]} == {"gpu0", "cpu-1t", "cpu-2t"}


def test_device_that_disappears_is_replaced_under_the_same_policy(devices_file, hipaa_raw, models):
    placer = Placer(load_devices(devices_file), available_providers=WITH_CUDA)
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    model = models["mlp"](1024, 1024, 8)
    features = extract_features(model)
    first = placer.place(features, policy, phi=True, batch=256)
    assert first.device.id == "gpu0"
    # The CUDA provider is not really here: opening the session fails with a typed error ...
    with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider"):
        create_session(model.SerializeToString(), first.device)
    # ... the device is taken out of service, and the re-placement still honours PHI (never cloud-gpu).
    placer.mark_unavailable("gpu0", "CUDA provider failed to load")
    second = placer.place(features, policy, phi=True, batch=256)
    assert second.device.id in {"cpu-1t", "cpu-2t"}
    assert "CUDA provider failed to load" in _reasons(second.explanation)["gpu0"]
    session = create_session(model.SerializeToString(), second.device)
    x = np.ones((2, 1024), np.float32)
    assert session.run(None, {"X": x})[0].shape == (2, 8)
    for device_id in ("cpu-1t", "cpu-2t"):
        placer.mark_unavailable(device_id)
    with pytest.raises(PlacementError) as info:
        placer.place(features, policy, phi=True, batch=256)
    assert {r["device"] for r in info.value.rejected} == {"gpu0", "npu0", "cloud-gpu", "cpu-1t", "cpu-2t"}
    placer.mark_available("cpu-1t")
    assert placer.place(features, policy, phi=True, batch=256).device.id == "cpu-1t"


def test_disallowed_precision_is_refused_naming_every_device(devices_file, hipaa_raw, models):
    hipaa_raw["placement"]["phi"]["allowed_precisions"] = ["fp32"]
    fp16 = extract_features(models["mlp"](dtype=TensorProto.FLOAT16))
    with pytest.raises(PlacementError) as info:
        Placer(load_devices(devices_file), available_providers=WITH_CUDA).place(
            fp16, PlacementPolicy.from_profile_dict(hipaa_raw), phi=True)
    message = str(info.value)
    for device_id in ("gpu0", "npu0", "cloud-gpu", "cpu-1t", "cpu-2t"):
        assert f"{device_id}: " in message
    assert all("does not allow precision fp16" in r["reason"] for r in info.value.rejected)


def test_allowed_devices_and_energy_objective(devices_file, hipaa_raw, models):
    placer = Placer(load_devices(devices_file), available_providers=WITH_CUDA)
    features = extract_features(models["mlp"](1024, 1024, 8))
    hipaa_raw["placement"]["allowed_devices"] = ["cpu-2t"]
    assert placer.place(features, PlacementPolicy.from_profile_dict(hipaa_raw), phi=True).device.id == "cpu-2t"
    # Only the CPU partitions for PHI: cpu-2t is twice as fast, cpu-1t spends less energy per run.
    hipaa_raw["placement"]["allowed_devices"] = []
    hipaa_raw["placement"]["phi"]["allowed_kinds"] = ["cpu"]
    latency_policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    hipaa_raw["placement"]["objective"] = "energy"
    energy_policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    fast = placer.place(features, latency_policy, phi=True, batch=64, priority="stat")
    frugal = placer.place(features, energy_policy, phi=True, batch=64, priority="stat")
    assert (fast.device.id, frugal.device.id) == ("cpu-2t", "cpu-1t")
    power = {d.id: d.power_w for d in placer.devices}
    options = [(frugal.device.id, frugal.predicted_latency_s)] + [
        (c["device"], c["predicted_latency_s"]) for c in frugal.explanation["candidates"]]
    assert frugal.device.id == min((power[d] * s, d) for d, s in options)[1]
    # Energy is subject to the class deadline: a 1 ms stat deadline only cpu-2t can approach wins on speed.
    hipaa_raw["priority_classes"]["stat"]["deadline_ms"] = 1.2
    tight = PlacementPolicy.from_profile_dict(hipaa_raw)
    assert fast.predicted_latency_s <= 1.2e-3 < frugal.predicted_latency_s
    assert placer.place(features, tight, phi=True, batch=64, priority="stat").device.id == "cpu-2t"
    with pytest.raises(ConfigurationError, match="unknown priority class"):
        placer.place(features, tight, phi=True, priority="urgent")


def test_cpu_partitions_are_distinct_devices_with_their_own_threads(devices_file, models):
    devices = {d.id: d for d in load_devices(devices_file)}
    model = models["mlp"](64, 128, 8)
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    w1, b1, w2 = (np.frombuffer(t.raw_data, np.float32).reshape(tuple(t.dims)) for t in model.graph.initializer)
    expected = np.maximum(x @ w1 + b1, 0) @ w2
    for device_id, threads in (("cpu-1t", 1), ("cpu-2t", 2)):
        options, providers = session_options_for(devices[device_id])
        assert options.intra_op_num_threads == threads
        assert providers == [] and options.has_providers()  # bound through ort's device API
        session = create_session(model.SerializeToString(), devices[device_id])
        assert session.get_providers()[0] == "CPUExecutionProvider"
        np.testing.assert_allclose(session.run(None, {"X": x})[0], expected, rtol=1e-4, atol=1e-5)


def _median_latency(session, feed, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_calibration_corrects_an_optimistic_descriptor_on_real_runs(devices_file, hipaa_raw, models):
    # The operator overstated the CPU by 1000x: the uncalibrated roofline is far too optimistic.
    cpu = replace({d.id: d for d in load_devices(devices_file)}["cpu-1t"], peak_flops={"fp32": 8e13},
                  memory_bandwidth=2e13, overhead_s=0.0)
    model = models["mlp"](256, 512, 8)
    features = extract_features(model)
    placer = Placer([cpu], Calibration(alpha=0.3), available_providers=REAL)
    policy = PlacementPolicy.from_profile_dict(hipaa_raw)
    session = create_session(model.SerializeToString(), cpu)
    feed = {"X": np.ones((32, 256), np.float32)}
    session.run(None, feed)  # warm-up
    before = placer.place(features, policy, phi=True, batch=32)
    error_before = abs(before.predicted_latency_s - _median_latency(session, feed, 15)) / before.predicted_latency_s
    for _ in range(20):
        start = time.perf_counter()
        session.run(None, feed)
        placer.observe(before, time.perf_counter() - start)
    after = placer.place(features, policy, phi=True, batch=32)
    measured = _median_latency(session, feed, 15)
    error_after = abs(after.predicted_latency_s - measured) / measured
    assert after.roofline_s == before.roofline_s
    assert error_after < error_before
    assert error_after < 1.0  # within 2x on a shared machine
    (stat,) = placer.calibration.stats()
    assert stat["samples"] == 20 and stat["device"] == "cpu-1t" and stat["factor"] > 10
