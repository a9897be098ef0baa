"""Full verification of a sealed artifact: signature, keys, every segment, the content digest."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sealinfer.runtime.artifact import SealedArtifact
from sealinfer.runtime.errors import IntegrityError
from sealinfer.runtime.keys.base import KeyProvider
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.progress import progress_bar


@dataclass(frozen=True)
class ArtifactVerification:
    path: str
    model: str
    version: str
    signer_key_id: str
    opened_with: str
    segments: int
    plaintext_bytes: int
    content_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_artifact(
    path: str | os.PathLike[str],
    keyring: Keyring,
    *,
    providers: Sequence[KeyProvider] = (),
    progress: bool = False,
) -> ArtifactVerification:
    """Check everything about ``path`` without building a session; raise at the first failure.

    Plaintext segments are hashed and discarded one at a time: memory stays at one segment.
    """
    artifact = SealedArtifact.open_verified(path, keyring)
    data_key = artifact.unwrap_for(keyring, providers)
    opened_with = next(
        (r.kek_id for r in artifact.recipients if any(p.has_kek(r.kek_id) for p in [keyring, *providers])), "?"
    )
    digest = hashlib.sha256()
    with progress_bar(artifact.payload.plaintext_size, f"verifying {artifact.path.name}", enabled=progress) as bar:
        for _, segment in artifact.iter_segments(data_key):
            digest.update(segment)
            bar.update(len(segment))
    model = artifact.manifest["model"]
    if not hmac.compare_digest(digest.hexdigest(), str(model["sha256"])):
        raise IntegrityError(
            "The decrypted content does not match the SHA-256 in the signed manifest.",
            hint="The sealer was faulty or the artifact was forged; do not deploy it.",
        )
    return ArtifactVerification(
        path=str(artifact.path),
        model=str(model["name"]),
        version=str(model["version"]),
        signer_key_id=artifact.signature_key_id,
        opened_with=opened_with,
        segments=artifact.payload.segment_count,
        plaintext_bytes=artifact.payload.plaintext_size,
        content_sha256=digest.hexdigest(),
    )
