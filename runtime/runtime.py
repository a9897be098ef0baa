"""``Runtime``: the façade. Opens sealed models under a keyring (and HSMs) and, later, a policy.

    rt = Runtime(keyring="~/.sealinfer/keyring")
    session = rt.load("sepsis.sealed")
    probs = session.run({"features": x})["probabilities"]

Loading checks, in order, failing closed at the first problem: structure of the file, the signer
(trusted and not revoked), the recipients (a KEK we hold and not revoked), the data key against the
signed commitment, every payload segment; then the plaintext goes to onnxruntime from memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from sealinfer.runtime.artifact import SealedArtifact
from sealinfer.runtime.keys.base import KeyProvider
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.loader import create_inference_session, open_decrypted
from sealinfer.runtime.session import SealedSession

log = logging.getLogger("sealinfer.runtime")


class Runtime:
    """Loads sealed models. Hold one per process; it is thread-safe."""

    def __init__(
        self,
        keyring: Keyring | str | os.PathLike[str],
        policy: Any = None,
        *,
        providers: Sequence[KeyProvider] = (),
        passphrase: str | None = None,
    ) -> None:
        from sealinfer import runtime as _pkg

        if _pkg.ORT_TELEMETRY_PREIMPORTED:
            ort.disable_telemetry_events()
            log.warning(
                "onnxruntime was imported before sealinfer, so its usage telemetry could not be fully disabled; "
                "set ORT_DISABLE_TELEMETRY=1 in the service environment."
            )
        self.keyring = keyring if isinstance(keyring, Keyring) else Keyring.open(Path(keyring).expanduser(), passphrase)
        self.policy = policy
        self._providers: list[KeyProvider] = [self.keyring, *providers]

    def open_artifact(self, path: str | os.PathLike[str]) -> tuple[SealedArtifact, bytes]:
        """Structure, signature and keys: everything before decryption. Returns the artifact and its DEK."""
        artifact = SealedArtifact.open(path)
        artifact.verify_signature(self.keyring.trust_store())
        data_key = artifact.unwrap_data_key(self._providers, revoked=self.keyring.is_revoked)
        return artifact, data_key

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        session_options: ort.SessionOptions | None = None,
        providers: Sequence[Any] | None = None,
        progress: bool = False,
    ) -> SealedSession:
        """Verify, decrypt in memory and open ``path``; see the module docstring for the checks."""
        artifact, data_key = self.open_artifact(path)
        decrypted = open_decrypted(artifact, data_key, progress=progress)
        try:
            session = create_inference_session(decrypted, providers=providers, session_options=session_options)
        except BaseException:
            decrypted.close()
            raise
        return SealedSession(session, decrypted, artifact.manifest)
