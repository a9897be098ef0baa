"""Explained placement: hard policy constraints first, then the policy's objective on a roofline.

Every device is either chosen, a candidate that lost on the objective, or rejected with every reason
that applies. The hard-constraint pass depends only on (policy, phi, model, batch, device state), so
it is cached: a repeated decision costs a dict lookup and one multiply per compliant device.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sealinfer.runtime.errors import ConfigurationError, PlacementError
from sealinfer.runtime.scheduler.calibration import Calibration
from sealinfer.runtime.scheduler.devices import DeviceDescriptor
from sealinfer.runtime.scheduler.features import ModelFeatures
from sealinfer.runtime.scheduler.policy import PlacementPolicy

_CACHE_LIMIT = 4096


class DeviceUnavailableError(PlacementError):
    """A device the scheduler chose (or was told to use) is gone: its provider no longer loads."""

    code = "device_unavailable"


def roofline_s(features: ModelFeatures, device: DeviceDescriptor, batch: int = 1) -> float:
    """Fixed overhead plus the larger of compute time at peak and memory time at full bandwidth."""
    peak = device.flops_for(features.precision)
    if peak <= 0 or device.memory_bandwidth <= 0:
        return math.inf
    return device.overhead_s + max(features.flops(batch) / peak, features.bytes_moved(batch) / device.memory_bandwidth)


def rejection_reasons(device: DeviceDescriptor, features: ModelFeatures, policy: PlacementPolicy, *, phi: bool,
                      batch: int, available_providers: frozenset[str], gone: dict[str, str]) -> list[str]:
    """Every hard constraint ``device`` breaks for this request (empty = compliant)."""
    reasons = []
    if device.id in gone:
        reasons.append(f"device unavailable: {gone[device.id]}")
    if device.provider not in available_providers:
        reasons.append(f"provider {device.provider} is not available in this onnxruntime")
    if policy.allowed_devices and device.id not in policy.allowed_devices:
        reasons.append("not in the policy's allowed_devices")
    if features.precision not in device.precisions:
        reasons.append(f"does not support model precision {features.precision}")
    needed = features.memory_required(batch)
    if needed > device.memory_bytes:
        reasons.append(f"not enough memory: model needs {needed:.0f} bytes at batch {batch}, "
                       f"device has {device.memory_bytes}")
    if math.isinf(roofline_s(features, device, batch)):
        reasons.append(f"no peak FLOPS or bandwidth figure for {features.precision}")
    if phi:
        rules = policy.phi
        if rules.require_attested and not device.attested:
            reasons.append("PHI requires an attested device; this one is not attested")
        if rules.require_on_prem and device.location != "on_prem":
            reasons.append(f"PHI requires an on-prem device; this one is {device.location}")
        if rules.require_confidential and not device.confidential:
            reasons.append("PHI requires confidential computing; this device has none")
        if features.precision not in rules.allowed_precisions:
            reasons.append(f"PHI policy does not allow precision {features.precision}")
        if device.kind not in rules.allowed_kinds:
            reasons.append(f"PHI policy does not allow device kind {device.kind}")
    return reasons


@dataclass(frozen=True)
class _Filtered:
    compliant: tuple[tuple[DeviceDescriptor, float], ...]  # (device, roofline seconds)
    rejected: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Placement:
    device: DeviceDescriptor
    predicted_latency_s: float
    roofline_s: float
    model_key: str
    calibration_key: str  # model key + batch bucket: the overhead share differs by batch size
    _context: tuple[Any, ...]  # (policy, phi, batch, priority, filtered, candidates) for the explanation

    @property
    def explanation(self) -> dict[str, Any]:
        """JSON-safe record of the decision: the chosen device, the losing candidates, every rejection."""
        policy, phi, batch, priority, filtered, candidates = self._context
        return {
            "policy": policy.policy_id,
            "objective": policy.objective,
            "phi": phi,
            "batch": batch,
            "priority": priority,
            "model": self.model_key,
            "chosen": {"device": self.device.id, "kind": self.device.kind, "provider": self.device.provider,
                       "predicted_latency_s": self.predicted_latency_s, "roofline_s": self.roofline_s},
            "candidates": [{"device": d, "predicted_latency_s": s} for d, s in candidates],
            "rejected": [dict(r) for r in filtered.rejected],
        }


class Placer:
    """Chooses a device per request. Thread-safe; decisions are cached per (policy, phi, model, batch)."""

    def __init__(self, devices: Iterable[DeviceDescriptor], calibration: Calibration | None = None, *,
                 available_providers: Iterable[str] | None = None) -> None:
        self.devices = list(devices)
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("two devices share an id.", hint="Give every device its own id.")
        self.calibration = calibration or Calibration()
        self._given_providers = None if available_providers is None else frozenset(available_providers)
        self._providers = self._given_providers or self._query_providers()
        self._gone: dict[str, str] = {}
        self._cache: dict[tuple[Any, ...], _Filtered] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _query_providers() -> frozenset[str]:
        import onnxruntime as ort

        return frozenset(ort.get_available_providers())

    # --- device state ------------------------------------------------------------------------

    def mark_unavailable(self, device_id: str, reason: str = "disappeared at run time") -> None:
        """Take a device out of service; later decisions re-place under the same policy."""
        with self._lock:
            self._gone[device_id] = reason
            self._cache.clear()

    def mark_available(self, device_id: str) -> None:
        with self._lock:
            self._gone.pop(device_id, None)
            self._cache.clear()

    def refresh(self) -> None:
        """Re-read which providers onnxruntime offers (a driver may have gone away)."""
        with self._lock:
            self._providers = self._given_providers or self._query_providers()
            self._cache.clear()

    # --- decisions ---------------------------------------------------------------------------

    def _filter(self, features: ModelFeatures, policy: PlacementPolicy, phi: bool, batch: int) -> _Filtered:
        compliant, rejected = [], []
        for device in self.devices:
            reasons = rejection_reasons(device, features, policy, phi=phi, batch=batch,
                                        available_providers=self._providers, gone=self._gone)
            if reasons:
                rejected.append({"device": device.id, "reason": "; ".join(reasons)})
            else:
                compliant.append((device, roofline_s(features, device, batch)))
        return _Filtered(tuple(compliant), tuple(rejected))

    def place(self, features: ModelFeatures, policy: PlacementPolicy, *, phi: bool, batch: int = 1,
              priority: str = "routine") -> Placement:
        if not isinstance(features, ModelFeatures):
            from sealinfer.runtime.scheduler.features import MissingFeaturesError

            raise MissingFeaturesError("placement needs the model's cost features.",
                                       hint="Pass ModelFeatures (from extract_features or the manifest's cost).")
        if batch < 1:
            raise ConfigurationError(f"batch must be >= 1, got {batch}.", hint="Pass the request's batch size.")
        key = (policy, phi, features.key, batch)
        filtered = self._cache.get(key)
        if filtered is None:
            with self._lock:
                filtered = self._filter(features, policy, phi, batch)
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = filtered
        if not filtered.compliant:
            detail = "; ".join(f"{r['device']}: {r['reason']}" for r in filtered.rejected) or "no devices"
            error = PlacementError(
                f"no device satisfies policy {policy.policy_id} for this {'PHI ' if phi else ''}request "
                f"(model {features.key}, batch {batch}). Rejected: {detail}.",
                hint="Add a compliant device to the descriptors or run the model under a policy that allows one.",
            )
            error.rejected = [dict(r) for r in filtered.rejected]  # type: ignore[attr-defined]  # for the audit
            raise error
        factor = self.calibration.factor
        calibration_key = f"{features.key}@b{batch.bit_length()}"  # power-of-two batch buckets
        scored = [(device, base * factor(calibration_key, device.id), base) for device, base in filtered.compliant]
        if policy.objective == "energy":
            deadline = policy.deadline_for(priority)
            in_time = [s for s in scored if s[1] <= deadline]
            best = min(in_time, key=lambda s: (s[1] * s[0].power_w, s[1])) if in_time else min(
                scored, key=lambda s: s[1])
        else:
            policy.deadline_for(priority)  # unknown classes are refused under either objective
            best = min(scored, key=lambda s: s[1])
        candidates = tuple((d.id, s) for d, s, _ in scored if d is not best[0])
        return Placement(best[0], best[1], best[2], features.key, calibration_key,
                         (policy, phi, batch, priority, filtered, candidates))

    def observe(self, placement: Placement, measured_s: float) -> float:
        """Feed a measured latency back into the calibration for (model, device)."""
        return self.calibration.observe(placement.calibration_key, placement.device.id, placement.roofline_s,
                                        measured_s)
