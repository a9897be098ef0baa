"""Device descriptors, model cost features, explained placement, priority dispatch.

Names are imported lazily (PEP 562) so ``import sealinfer.runtime.scheduler`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeviceDescriptor": "devices", "load_devices": "devices", "parse_devices": "devices",
    "merge_devices": "devices", "discover_devices": "discovery",
    "ModelFeatures": "features", "extract_features": "features", "MissingFeaturesError": "features",
    "PlacementPolicy": "policy", "Placer": "placement", "Placement": "placement",
    "DeviceUnavailableError": "placement", "Calibration": "calibration",
    "Dispatcher": "dispatch", "RequestRecord": "dispatch", "DispatcherClosedError": "dispatch",
    "session_options_for": "sessions", "create_session": "sessions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
