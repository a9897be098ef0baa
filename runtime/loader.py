"""Decrypt a sealed payload into memory and open it with onnxruntime, never touching disk.

The whole payload is decrypted, segment by segment, straight out of an mmap of the artifact into one
preallocated buffer. The graph goes to onnxruntime as bytes; the weights as one in-memory "external
data file" (``SessionOptions.add_external_initializers_from_files_in_memory``), which onnxruntime
copies or prepacks while it builds the session. The buffer is then zeroed and dropped, so a loaded
model keeps no plaintext copy of its weights of its own and its memory matches a plain session's.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from sealinfer.runtime.artifact import SealedArtifact, read_manifest
from sealinfer.runtime.errors import ArtifactError, IntegrityError, ModelError
from sealinfer.runtime.keys.base import KeyProvider
from sealinfer.runtime.layout import WEIGHTS_LOCATION, is_sealed_reference, tensor_view
from sealinfer.runtime.progress import progress_bar
from sealinfer.runtime.stream import StreamDecryptor


def plaintext_buffer(size: int) -> np.ndarray:
    """Fresh anonymous memory for decrypted bytes: page-aligned, kept out of core dumps, huge pages.

    ``MADV_DONTDUMP`` keeps the model's plaintext out of a crash dump. ``MADV_HUGEPAGE`` keeps what
    numpy's own allocator does for large arrays: decrypting into fresh 4 KiB pages spends most of its
    time in page faults (about 180 ms against 70 ms for 300 MB on the CI machine, whose kernel grants
    huge pages only on request).
    """
    region = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for advice in ("MADV_DONTDUMP", "MADV_HUGEPAGE"):
        flag = getattr(mmap, advice, None)
        if flag is not None:
            try:
                region.madvise(flag)
            except OSError:  # not offered by this kernel: the buffer works, only slower or dumpable
                pass
    return np.frombuffer(region, dtype=np.uint8, count=size)


def decrypt_payload(
    artifact: SealedArtifact, data_key: bytes, *, progress: bool = False, label: str = "decrypting"
) -> np.ndarray:
    """The authenticated plaintext payload as one uint8 array. Zeroed and raised on any failure."""
    pay = artifact.payload
    buf = plaintext_buffer(pay.plaintext_size)
    dec = StreamDecryptor(data_key, artifact.stream_params(), pay.segment_count)
    out = memoryview(buf)  # type: ignore[arg-type]
    try:
        with (
            progress_bar(pay.plaintext_size, label, enabled=progress) as bar,
            closing(artifact.ciphertext_segments()) as segments,
        ):
            for index, segment in segments:
                start = index * pay.segment_size
                bar.update(dec.decrypt_segment_into(index, segment, out[start : start + pay.segment_size]))
    except BaseException:
        buf.fill(0)
        raise
    return buf


@dataclass
class DecryptedModel:
    """A decrypted graph plus the buffer its weights live in. Owns plaintext: close() zeroes it.

    The weights reach onnxruntime as one in-memory "external data file" (``WEIGHTS_LOCATION``)
    through ``SessionOptions.add_external_initializers_from_files_in_memory``, which copies (or
    prepacks) them while the session is created. So once a session exists the buffer is zeroed and
    dropped (``release``): a loaded model holds no second plaintext copy of its weights, and its
    resident memory matches a plain ``InferenceSession(path)``.
    """

    graph: onnx.ModelProto
    graph_serialized: bytes
    buffer: np.ndarray
    weights_offset: int
    weights_length: int
    released: bool = field(default=False)

    def session_options(self, base: ort.SessionOptions | None = None) -> ort.SessionOptions:
        self._require_weights()
        so = base or ort.SessionOptions()
        if self.weights_length:
            weights = self.buffer[self.weights_offset : self.weights_offset + self.weights_length]
            so.add_external_initializers_from_files_in_memory([WEIGHTS_LOCATION], [weights], [self.weights_length])
        return so

    def graph_bytes(self) -> bytes:
        return self.graph_serialized

    def to_model_proto(self) -> onnx.ModelProto:
        """A self-contained ModelProto with weights inlined (for watermark detection), in memory."""
        self._require_weights()
        model = onnx.ModelProto()
        model.CopyFrom(self.graph)
        for t in model.graph.initializer:
            if is_sealed_reference(t):
                data = tensor_view(self.buffer, self.weights_offset, t).tobytes()
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = data
        return model

    def _require_weights(self) -> None:
        if self.released:
            raise ArtifactError(
                "The decrypted weights were already handed to onnxruntime and erased.",
                hint="Open the artifact again (Runtime.open_artifact + open_decrypted) to read its weights.",
            )

    def release(self) -> None:
        """Zero the plaintext weights and drop the buffer (after onnxruntime has its own copy)."""
        if not self.released:
            self.buffer.fill(0)
            self.buffer = np.empty(0, dtype=np.uint8)
            self.released = True

    def close(self) -> None:
        self.release()


def open_decrypted(artifact: SealedArtifact, data_key: bytes, *, progress: bool = False) -> DecryptedModel:
    buf = decrypt_payload(artifact, data_key, progress=progress)
    g_off, g_len = artifact.payload.sections.get("graph", (0, 0))
    w_off, w_len = artifact.payload.sections.get("weights", (g_len, 0))
    graph_serialized = buf[g_off : g_off + g_len].tobytes()
    try:
        graph = onnx.ModelProto.FromString(graph_serialized)
    except DecodeError:
        buf.fill(0)
        raise IntegrityError(
            "The decrypted graph is not a valid ONNX model although it authenticated.",
            hint="The artifact was produced by a faulty sealer; re-seal the model.",
        ) from None
    return DecryptedModel(graph, graph_serialized, buf, w_off, w_len)


def create_inference_session(
    model: DecryptedModel,
    *,
    providers: Sequence[Any] | None = None,
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Create the onnxruntime session, then erase the decrypted weights (onnxruntime holds its own)."""
    so = model.session_options(session_options)
    try:
        if providers is None and so.has_providers():  # devices added through add_provider_for_devices
            session = ort.InferenceSession(model.graph_bytes(), sess_options=so)
        else:
            session = ort.InferenceSession(
                model.graph_bytes(), sess_options=so, providers=providers or ["CPUExecutionProvider"]
            )
        model.release()
        return session
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
        RuntimeError,
    ) as exc:
        raise ModelError(
            f"onnxruntime cannot create a session for this model: {str(exc).splitlines()[0]}",
            hint="Check that the model runs with plain onnxruntime before sealing it.",
        ) from None


def open_model_proto(
    path: str | os.PathLike[str], keyring: Any, providers: Sequence[KeyProvider] = ()
) -> onnx.ModelProto:
    """Verify and decrypt a ``.sealed`` file into a self-contained ModelProto, in memory only."""
    art = SealedArtifact.open_verified(path, keyring)
    data_key = art.unwrap_for(keyring, providers)
    model = open_decrypted(art, data_key)
    try:
        return model.to_model_proto()
    finally:
        model.close()


__all__ = [
    "ArtifactError",
    "DecryptedModel",
    "create_inference_session",
    "decrypt_payload",
    "open_decrypted",
    "open_model_proto",
    "read_manifest",
]
