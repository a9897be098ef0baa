"""Property: over 10,000 random (policy, device set, model) combinations, a PHI request is never placed
on a non-compliant device, a compliant device is always found when one exists, and every refusal
names a reason for every device."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealinfer.runtime.errors import PlacementError
from sealinfer.runtime.scheduler.devices import DeviceDescriptor
from sealinfer.runtime.scheduler.features import ModelFeatures
from sealinfer.runtime.scheduler.placement import Placer
from sealinfer.runtime.scheduler.policy import PlacementPolicy

PRECISIONS = ["fp32", "fp16", "bf16", "int8"]
PROVIDERS = ["CPUExecutionProvider", "CUDAExecutionProvider", "QNNExecutionProvider", "ROCMExecutionProvider"]
KINDS = ["cpu", "gpu", "npu"]


class Digits:
    """Reads choices out of one integer (mixed radix) so one Hypothesis draw describes a whole object;
    shrinking the integer toward 0 shrinks every choice toward the first option."""

    def __init__(self, code: int) -> None:
        self.code = code

    def pick(self, options):
        self.code, index = divmod(self.code, len(options))
        return options[index]

    def subset(self, options, *, min_size=0):
        chosen = [o for o in options if self.pick((False, True))]
        return chosen if len(chosen) >= min_size else list(options[:min_size])


def decode_device(i: int, code: int) -> DeviceDescriptor:
    d = Digits(code)
    precisions = d.subset(PRECISIONS, min_size=1)
    flops = {p: d.pick([1e9, 1e11, 1e13]) for p in precisions if p == precisions[0] or d.pick((True, False))}
    return DeviceDescriptor(
        id=f"d{i}", kind=d.pick(KINDS), provider=d.pick(PROVIDERS), peak_flops=flops,
        memory_bandwidth=d.pick([1e10, 1e11, 1e12]), memory_bytes=d.pick([2**20, 2**26, 2**30, 2**36]),
        precisions=tuple(precisions), location=d.pick(["on_prem", "cloud"]), attested=d.pick([True, False]),
        confidential=d.pick([True, False]), power_w=d.pick([5.0, 50.0, 400.0]), overhead_s=d.pick([0.0, 1e-5, 1e-3]),
    )


def decode_policy(code: int, device_ids: list[str]) -> PlacementPolicy:
    d = Digits(code)
    raw = {
        "id": "p", "version": "1",
        "placement": {
            "objective": d.pick(["latency", "energy"]),
            "allowed_devices": d.subset(device_ids) if d.pick([False, True]) else [],
            "phi": {"require_attested": d.pick([True, False]), "require_on_prem": d.pick([True, False]),
                    "allowed_precisions": d.subset(PRECISIONS, min_size=1),
                    "allowed_kinds": d.subset(KINDS, min_size=1)},
        },
        "priority_classes": {"stat": {"deadline_ms": d.pick([1, 50, 200])}, "routine": {"deadline_ms": 2000}},
    }
    return PlacementPolicy.from_profile_dict(raw)


def decode_model(code: int) -> ModelFeatures:
    d = Digits(code)
    precision, params = d.pick(PRECISIONS), d.pick([10**3, 10**6, 10**8, 10**10])
    flops, act = d.pick([1e3, 1e6, 1e9]), d.pick([1e2, 1e5, 1e7])
    return ModelFeatures(
        precision=precision, param_bytes=params, flops_fixed=0.0, flops_per_sample=flops,
        bytes_read_fixed=float(params), bytes_read_per_sample=act, bytes_written_fixed=0.0,
        bytes_written_per_sample=act, activation_per_sample=act, key=f"{precision}-{params}-{flops}-{act}")


CODE = st.integers(min_value=0, max_value=2**62)


def oracle_violations(device, features, policy, *, phi, batch, available):
    """Which constraints ``device`` breaks, written independently of the placer, as reason keywords."""
    broken = []
    if device.provider not in available:
        broken.append("provider")
    if policy.allowed_devices and device.id not in policy.allowed_devices:
        broken.append("allowed_devices")
    if features.precision not in device.precisions:
        broken.append("precision")
    if features.param_bytes + features.activation_per_sample * batch > device.memory_bytes:
        broken.append("memory")
    if not (device.peak_flops.get(features.precision) or device.peak_flops.get("fp32")):
        broken.append("FLOPS")
    if phi:
        if policy.phi.require_attested and not device.attested:
            broken.append("attested")
        if policy.phi.require_on_prem and device.location != "on_prem":
            broken.append("on-prem")
        if features.precision not in policy.phi.allowed_precisions:
            broken.append("precision")
        if device.kind not in policy.phi.allowed_kinds:
            broken.append("kind")
    return broken


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(device_codes=st.lists(CODE, min_size=1, max_size=6), policy_code=CODE, model_code=CODE, request_code=CODE)
def test_phi_never_lands_on_a_non_compliant_device(device_codes, policy_code, model_code, request_code):
    devices = [decode_device(i, code) for i, code in enumerate(device_codes)]
    policy = decode_policy(policy_code, [d.id for d in devices])
    features = decode_model(model_code)
    request = Digits(request_code)
    available = set(request.subset(PROVIDERS, min_size=1))
    batch, priority = request.pick([1, 8, 256]), request.pick(["stat", "routine"])
    placer = Placer(devices, available_providers=available)
    for phi in (True, False):
        broken = {d.id: oracle_violations(d, features, policy, phi=phi, batch=batch, available=available)
                  for d in devices}
        try:
            placement = placer.place(features, policy, phi=phi, batch=batch, priority=priority)
        except PlacementError as exc:
            assert all(broken.values()), f"refused although {[k for k, v in broken.items() if not v]} comply"
            rejected = {r["device"]: r["reason"] for r in exc.rejected}
            assert set(rejected) == {d.id for d in devices}
            for device_id, reason in rejected.items():
                assert f"{device_id}: " in str(exc)
                assert all(keyword in reason for keyword in broken[device_id]), (reason, broken[device_id])
            continue
        assert not broken[placement.device.id], (phi, placement.device, broken)
        explanation = placement.explanation
        assert explanation["phi"] is phi and explanation["chosen"]["device"] == placement.device.id
        candidates = {c["device"] for c in explanation["candidates"]}
        rejected = {r["device"]: r["reason"] for r in explanation["rejected"]}
        assert candidates | set(rejected) | {placement.device.id} == {d.id for d in devices}
        assert all(not broken[c] for c in candidates)
        for device_id, reason in rejected.items():
            assert broken[device_id] and all(keyword in reason for keyword in broken[device_id])
        if policy.objective == "latency":
            assert all(placement.predicted_latency_s <= c["predicted_latency_s"] for c in explanation["candidates"])
