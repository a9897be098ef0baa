"""sealinfer.runtime: seal models, load them under policy, run them with evidence.

Public names are imported lazily (PEP 562) so that ``sealinfer.runtime.errors`` stays a leaf module
that ``sealinfer.watermark`` and ``sealinfer.privacy`` can import without pulling in the runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

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
