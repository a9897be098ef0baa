"""A loaded sealed model: ``SealedSession.run`` is the hot path every inference goes through.

Phases of a call (each timed into telemetry): authorize -> validate -> inference -> guard -> record.
The security phases are built to cost microseconds: authorization is a cached dict lookup, input
validation is a handful of numpy attribute checks, and the audit record is acknowledged once it is
copied into the audit log's journal (no system call in ``process`` durability; see ``audit/log.py``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from sealinfer.runtime.errors import ModelError, SealinferError
from sealinfer.runtime.loader import DecryptedModel
from sealinfer.runtime.policy.graphguards import PREFIX as GUARD_PREFIX
from sealinfer.runtime.tensorspec import TensorSpec

if TYPE_CHECKING:
    from sealinfer.runtime.caller import Caller
    from sealinfer.runtime.pipeline import RequestPipeline


class SealedSession:
    """An onnxruntime session over a decrypted sealed model. Thread-safe; close() zeroes plaintext."""

    def __init__(
        self,
        session: ort.InferenceSession,
        decrypted: DecryptedModel,
        manifest: dict[str, Any],
        *,
        guard: RequestPipeline | None = None,
        device: str = "cpu",
        submitter: Callable[..., Future[dict[str, np.ndarray]]] | None = None,
    ) -> None:
        self._session = session
        self._decrypted = decrypted
        self._manifest = manifest
        self._guard = guard
        self._device = device
        self._submitter = submitter
        self._closed = False
        self._lock = threading.Lock()
        # onnxruntime reads the weights in place from the decrypted buffer, so close() must not zero it
        # while a run is still inside onnxruntime: runs in flight are counted and close() waits for them.
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        # A session dropped without close() (or still open at exit) still has its plaintext zeroed, by
        # the process that loaded it: a child forked later shares those pages copy-on-write, and zeroing
        # them there at its exit would only copy them.
        self._erase = weakref.finalize(self, _erase_in, os.getpid(), decrypted)
        sig = manifest.get("signature_io", {})
        self.inputs = [TensorSpec.from_dict(s) for s in sig.get("inputs", [])]
        self.outputs = [TensorSpec.from_dict(s) for s in sig.get("outputs", [])]
        self._output_names = [o.name for o in self.outputs] or [
            o.name for o in session.get_outputs() if not o.name.startswith(GUARD_PREFIX)  # a compiled guard's
        ]
        # onnxruntime's binding, not its Python wrapper: the wrapper would, after an execution-provider
        # failure, silently re-run the request on the CPU (a device the policy may not allow for this
        # model) and print to stdout; its input checks repeat the binding's own (and the pipeline's).
        self._run_binding: Callable[..., list[Any]] = getattr(session, "_sess", session).run

    # --- what it is --------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def name(self) -> str:
        return str(self._manifest["model"]["name"])

    @property
    def version(self) -> str:
        return str(self._manifest["model"]["version"])

    @property
    def digest(self) -> str:
        """SHA-256 of the sealed plaintext (graph + weights): the model's identity in audit records."""
        return str(self._manifest["model"]["sha256"])

    @property
    def device(self) -> str:
        return self._device

    # --- running -----------------------------------------------------------------------------

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        caller: Caller | None = None,
        priority: str = "routine",
    ) -> dict[str, np.ndarray]:
        """Run the model on ``inputs``; outputs are bit-identical to plain onnxruntime on the same model.

        Under a policy, ``caller`` is required: the call is authorized, validated, guarded, audited
        (returns only once its audit record is durable) and timed into telemetry.
        """
        if self._closed:
            raise SealinferError("This session is closed.", hint="Load the model again with Runtime.load().")
        if self._guard is not None:
            return self._guard.run(self, inputs, caller, priority)
        return self._infer(inputs)

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        caller: Caller,
        priority: str = "routine",
        deadline_s: float | None = None,
    ) -> Future[dict[str, np.ndarray]]:
        """Queue a request by priority class and deadline (earliest deadline first) on the model's device.

        Admission control refuses at once, with a typed and audited error, a tenant over its quota
        (``QuotaExceededError``) or a deadline the queue can no longer meet (``DeadlineInfeasibleError``).
        The future's result is what ``run`` returns; ``run`` itself stays a direct call.
        """
        if self._submitter is None:
            raise SealinferError(
                "Queued requests need a runtime with a policy (priority classes and quotas come from it).",
                hint="Load the model with Runtime(keyring, policy=..., audit_db=...).",
            )
        return self._submitter(self, inputs, caller, priority, deadline_s)

    def _infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._fetch(self._output_names, inputs), strict=True))

    def _fetch(self, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """onnxruntime's results for ``names`` (model outputs or a compiled guard's), in that order."""
        with self._lock:
            if self._closed:
                raise SealinferError("This session is closed.", hint="Load the model again with Runtime.load().")
            self._in_flight += 1
        try:
            return self._run_binding(names, inputs if type(inputs) is dict else dict(inputs), None)
        except Exception as exc:  # whatever onnxruntime raises (its Fail is no RuntimeError): typed, fail closed
            raise ModelError(
                f"onnxruntime failed on this request: {str(exc).splitlines()[0][:300]}",
                hint="Check the inputs against `sealinfer inspect` (signature_io): names, dtypes and shapes, "
                "including dims the signature leaves symbolic, which must still suit the model's nodes.",
            ) from None
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._closed and not self._in_flight:  # only close() waits (notify_all is Python code)
                    self._idle.notify_all()

    def close(self) -> None:
        """Wait for runs in flight, release the onnxruntime session, then zero the decrypted weights."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while self._in_flight:
                self._idle.wait()
        del self._session
        self._erase()

    def __enter__(self) -> SealedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SealedSession(name={self.name!r}, version={self.version!r}, device={self._device!r})"


def _erase_in(pid: int, decrypted: DecryptedModel) -> None:
    if os.getpid() == pid:
        decrypted.close()
