"""The scheduler's view of a policy profile: placement constraints, priority classes, tenant quotas.

Only the ``placement``, ``priority_classes`` and ``tenants`` sections are read. Absent sections take
the strict defaults (PHI only on attested, on-prem devices at fp32/fp16). An unknown key inside
``placement.phi`` is refused rather than ignored: a constraint the scheduler does not understand
would otherwise be silently dropped, which is the one thing a PHI policy must never do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealinfer.runtime.errors import ConfigurationError, PolicyError
from sealinfer.runtime.scheduler.devices import KINDS, PRECISIONS

OBJECTIVES = ("latency", "energy")
_PHI_KEYS = {"require_attested", "require_on_prem", "require_confidential", "allowed_precisions", "allowed_kinds"}
_PLACEMENT_KEYS = {"objective", "allowed_devices", "phi"}
_DEFAULT_CLASSES = {"stat": 0.2, "routine": 2.0, "batch": 60.0}


@dataclass(frozen=True)
class PhiConstraints:
    require_attested: bool = True
    require_on_prem: bool = True
    require_confidential: bool = False
    allowed_precisions: frozenset[str] = frozenset({"fp32", "fp16"})
    allowed_kinds: frozenset[str] = frozenset(KINDS)


@dataclass(frozen=True)
class TenantQuota:
    rate_per_s: float
    burst: float


@dataclass(frozen=True)
class PlacementPolicy:
    objective: str = "latency"
    allowed_devices: frozenset[str] = frozenset()  # empty = any device
    phi: PhiConstraints = field(default_factory=PhiConstraints)
    classes: tuple[tuple[str, float], ...] = tuple(_DEFAULT_CLASSES.items())  # (name, deadline_s)
    tenants: tuple[tuple[str, TenantQuota], ...] = ()
    policy_id: str = "unnamed"

    @property
    def deadlines(self) -> dict[str, float]:
        return dict(self.classes)

    def deadline_for(self, priority: str) -> float:
        for name, deadline in self.classes:
            if name == priority:
                return deadline
        raise ConfigurationError(
            f"unknown priority class {priority!r}.",
            hint=f"Use one of the policy's classes: {', '.join(n for n, _ in self.classes)}.",
        )

    def quota_for(self, tenant: str) -> TenantQuota | None:
        """The tenant's quota, else the ``default`` tenant's, else None (no quota configured)."""
        quotas = dict(self.tenants)
        return quotas.get(tenant, quotas.get("default"))

    @classmethod
    def from_profile_dict(cls, raw: Mapping[str, Any]) -> PlacementPolicy:
        if not isinstance(raw, Mapping):
            raise PolicyError("the policy profile is not a mapping.", hint="Give a policy profile YAML document.")
        placement = _section(raw, "placement")
        unknown = sorted(set(placement) - _PLACEMENT_KEYS)
        if unknown:
            raise PolicyError(f"placement has unknown key(s) {', '.join(unknown)}.",
                              hint=f"Allowed: {', '.join(sorted(_PLACEMENT_KEYS))}.")
        objective = placement.get("objective", "latency")
        if objective not in OBJECTIVES:
            raise PolicyError(f"placement.objective {objective!r} is not one of {', '.join(OBJECTIVES)}.",
                              hint="Choose latency or energy.")
        allowed = placement.get("allowed_devices") or []
        if not isinstance(allowed, list) or not all(isinstance(d, str) for d in allowed):
            raise PolicyError("placement.allowed_devices must be a list of device ids.", hint="Use [] for any.")
        phi_raw = placement.get("phi") or {}
        if not isinstance(phi_raw, Mapping):
            raise PolicyError("placement.phi must be a mapping.", hint="See the policy profile schema.")
        unknown = sorted(set(phi_raw) - _PHI_KEYS)
        if unknown:
            raise PolicyError(f"placement.phi has unknown constraint(s) {', '.join(unknown)}.",
                              hint=f"The scheduler enforces: {', '.join(sorted(_PHI_KEYS))}.")
        defaults = PhiConstraints()
        phi = PhiConstraints(
            require_attested=_bool(phi_raw, "require_attested", defaults.require_attested),
            require_on_prem=_bool(phi_raw, "require_on_prem", defaults.require_on_prem),
            require_confidential=_bool(phi_raw, "require_confidential", defaults.require_confidential),
            allowed_precisions=_names(phi_raw, "allowed_precisions", PRECISIONS, defaults.allowed_precisions),
            # tpu/fpga are valid profile names with no descriptor kind yet: they simply match nothing.
            allowed_kinds=_names(phi_raw, "allowed_kinds", (*KINDS, "tpu", "fpga"), defaults.allowed_kinds),
        )
        classes_raw = _section(raw, "priority_classes")
        classes: dict[str, float] = {}
        for name, spec in (classes_raw or {k: {"deadline_ms": v * 1000} for k, v in _DEFAULT_CLASSES.items()}).items():
            ms = spec.get("deadline_ms") if isinstance(spec, Mapping) else None
            if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 < ms < math.inf:
                raise PolicyError(f"priority_classes.{name}.deadline_ms must be a positive number, got {ms!r}.",
                                  hint="Give the class's deadline in milliseconds.")
            classes[str(name)] = float(ms) / 1000.0
        tenants: dict[str, TenantQuota] = {}
        for name, spec in _section(raw, "tenants").items():
            rate = spec.get("rate_per_s") if isinstance(spec, Mapping) else None
            burst = spec.get("burst", rate) if isinstance(spec, Mapping) else None
            for label, value in (("rate_per_s", rate), ("burst", burst)):
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                    raise PolicyError(f"tenants.{name}.{label} must be a positive number, got {value!r}.",
                                      hint="Give requests per second and the burst size.")
            tenants[str(name)] = TenantQuota(float(rate), max(float(burst), 1.0))
        return cls(objective=objective, allowed_devices=frozenset(allowed), phi=phi,
                   classes=tuple(classes.items()), tenants=tuple(tenants.items()),
                   policy_id=f"{raw.get('id', 'unnamed')}@{raw.get('version', '?')}")


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, Mapping):
        raise PolicyError(f"policy section {name!r} must be a mapping.", hint="See the policy profile schema.")
    return value


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"placement.phi.{key} must be true or false, got {value!r}.", hint="Write true or false.")
    return value


def _names(raw: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: frozenset[str]) -> frozenset[str]:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or any(v not in allowed for v in value):
        raise PolicyError(f"placement.phi.{key} must list names from {', '.join(allowed)}, got {value!r}.",
                          hint="Fix the list.")
    return frozenset(value)


def load_policy_raw(name_or_path: str) -> dict[str, Any]:
    """The profile dict: through the policy package when it exists, else the YAML file itself."""
    try:
        from sealinfer.runtime.policy.profile import load_profile  # type: ignore[import-not-found]
    except ImportError:
        load_profile = None
    if load_profile is not None:
        return dict(load_profile(name_or_path).raw)
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigurationError(f"policy {name_or_path!r} is not a readable file.",
                                 hint="Give the path of a policy profile YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid YAML ({exc}).", hint="Fix the profile's syntax.") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy profile must be a mapping.", hint="See the policy profile schema.")
    return data
