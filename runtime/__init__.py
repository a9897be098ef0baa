"""sealinfer.runtime: seal models, load them under policy, run them with evidence.

Public names are imported lazily (PEP 562) so that ``sealinfer.runtime.errors`` stays a leaf module
that ``sealinfer.watermark`` and ``sealinfer.privacy`` can import without pulling in the runtime.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# onnxruntime >= 1.29 wheels write a usage-telemetry database under ~/.cache/Microsoft and a session
# file in $TMPDIR, and may upload them, unless this is set before onnxruntime is first imported.
# A hospital runtime must not phone home; an operator can still opt in by setting it to 0.
ORT_TELEMETRY_PREIMPORTED = "onnxruntime" in sys.modules and "ORT_DISABLE_TELEMETRY" not in os.environ
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_EXPORTS: dict[str, str] = {
    "SealinferError": "sealinfer.runtime.errors",
    "seal_model": "sealinfer.runtime.compiler",
    "SealOptions": "sealinfer.runtime.compiler",
    "Runtime": "sealinfer.runtime.runtime",
    "SealedSession": "sealinfer.runtime.session",
    "Caller": "sealinfer.runtime.caller",
    "Keyring": "sealinfer.runtime.keys.keyring",
    "KeyProvider": "sealinfer.runtime.keys.base",
    "Pkcs11Provider": "sealinfer.runtime.keys.pkcs11",
    "SealedArtifact": "sealinfer.runtime.artifact",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sealinfer.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
