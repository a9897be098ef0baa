"""Key rotation for artifacts: re-wrap the data key for a new KEK, never re-encrypt the payload."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sealinfer.runtime.artifact import SealedArtifact, rewrite_recipients
from sealinfer.runtime.errors import KeyNotFoundError
from sealinfer.runtime.keys.base import KeyProvider, WrappedKey
from sealinfer.runtime.keys.keyring import Keyring


def rewrap_artifact(
    path: str | os.PathLike[str],
    keyring: Keyring,
    *,
    new_kek_id: str,
    old_kek_id: str | None = None,
    providers: Sequence[KeyProvider] = (),
    output: str | os.PathLike[str] | None = None,
) -> SealedArtifact:
    """Wrap the artifact's data key for ``new_kek_id``, dropping ``old_kek_id`` (if given).

    The signature and ciphertext are copied as they are, so a signer key is not needed and the
    payload is never decrypted to disk. Writes atomically to ``output`` (default: in place).
    """
    all_providers: list[KeyProvider] = [keyring, *providers]
    artifact = SealedArtifact.open_verified(path, keyring)
    data_key = artifact.unwrap_for(keyring, providers)
    target = next((p for p in all_providers if p.has_kek(new_kek_id)), None)
    if target is None:
        raise KeyNotFoundError(f"New KEK {new_kek_id!r} is not available.", hint="Check `sealinfer keys list`.")
    kept: list[WrappedKey] = [
        r for r in artifact.recipients if r.kek_id != new_kek_id and (old_kek_id is None or r.kek_id != old_kek_id)
    ]
    recipients = [*kept, target.wrap_data_key(new_kek_id, data_key)]
    out = Path(output) if output is not None else artifact.path
    rewrite_recipients(artifact, recipients, data_key, out)
    return SealedArtifact.open(out)
