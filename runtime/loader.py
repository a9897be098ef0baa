"""Decrypt a sealed payload into memory and open it with onnxruntime, never touching disk.

The whole payload is decrypted, segment by segment, straight into one preallocated buffer (no
intermediate copies). Weights are handed to onnxruntime as zero-copy ``OrtValue`` views of that
buffer through ``SessionOptions.add_external_initializers``; the buffer is kept alive by the
``DecryptedModel`` for as long as the session lives, and zeroed when it is closed.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from sealinfer.runtime.artifact import SealedArtifact, read_manifest
from sealinfer.runtime.errors import ArtifactError, IntegrityError, ModelError, TruncatedArtifactError
from sealinfer.runtime.keys.base import KeyProvider
from sealinfer.runtime.layout import is_sealed_reference, tensor_view
from sealinfer.runtime.progress import progress_bar
from sealinfer.runtime.stream import TAG_BYTES, StreamDecryptor


def decrypt_payload(
    artifact: SealedArtifact, data_key: bytes, *, progress: bool = False, label: str = "decrypting"
) -> np.ndarray:
    """The authenticated plaintext payload as one uint8 array. Zeroed and raised on any failure."""
    pay = artifact.payload
    # 4 KiB-aligned so tensor views (64-byte aligned offsets) stay aligned in memory.
    raw = np.empty(pay.plaintext_size + 4096, dtype=np.uint8)
    shift = (-raw.ctypes.data) % 4096
    buf = raw[shift : shift + pay.plaintext_size]
    dec = StreamDecryptor(data_key, artifact.stream_params(), pay.segment_count)
    seg_ct = pay.segment_size + TAG_BYTES
    out = memoryview(buf)  # type: ignore[arg-type]
    try:
        with (
            artifact.path.open("rb") as fh,
            progress_bar(pay.plaintext_size, label, enabled=progress) as bar,
        ):
            size = os.fstat(fh.fileno()).st_size
            if size < artifact.payload_offset + pay.ciphertext_size:
                raise TruncatedArtifactError(
                    f"{artifact.path} was truncated after it was opened.", hint="Restore a complete copy."
                )
            # Decrypt straight out of the page cache: one copy fewer than read() into a buffer.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    pos = artifact.payload_offset
                    for index in range(pay.segment_count):
                        want = min(seg_ct, artifact.payload_offset + pay.ciphertext_size - pos)
                        start = index * pay.segment_size
                        # Release each slice at once: a slice still exported when the mmap closes
                        # (say, held by a traceback) would turn an IntegrityError into a BufferError.
                        with view[pos : pos + want] as segment:
                            n = dec.decrypt_segment_into(index, segment, out[start : start + pay.segment_size])
                        pos += want
                        bar.update(n)
                finally:
                    view.release()
    except BaseException:
        buf.fill(0)
        raise
    return buf


@dataclass
class DecryptedModel:
    """A decrypted graph plus the buffer its weights live in. Owns plaintext: close() zeroes it."""

    graph: onnx.ModelProto
    graph_serialized: bytes
    buffer: np.ndarray
    weights_offset: int
    initializer_names: list[str] = field(default_factory=list)
    initializer_values: list[Any] = field(default_factory=list)

    def session_options(self, base: ort.SessionOptions | None = None) -> ort.SessionOptions:
        so = base or ort.SessionOptions()
        if self.initializer_names:
            so.add_external_initializers(self.initializer_names, self.initializer_values)
        return so

    def graph_bytes(self) -> bytes:
        return self.graph_serialized

    def to_model_proto(self) -> onnx.ModelProto:
        """A self-contained ModelProto with weights inlined (for watermark detection), in memory."""
        model = onnx.ModelProto()
        model.CopyFrom(self.graph)
        for t in model.graph.initializer:
            if is_sealed_reference(t):
                data = tensor_view(self.buffer, self.weights_offset, t).tobytes()
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                t.raw_data = data
        return model

    def close(self) -> None:
        self.initializer_values.clear()
        self.buffer.fill(0)


def open_decrypted(artifact: SealedArtifact, data_key: bytes, *, progress: bool = False) -> DecryptedModel:
    buf = decrypt_payload(artifact, data_key, progress=progress)
    g_off, g_len = artifact.payload.sections.get("graph", (0, 0))
    w_off, _ = artifact.payload.sections.get("weights", (g_len, 0))
    graph_serialized = buf[g_off : g_off + g_len].tobytes()
    try:
        graph = onnx.ModelProto.FromString(graph_serialized)
    except DecodeError:
        buf.fill(0)
        raise IntegrityError(
            "The decrypted graph is not a valid ONNX model although it authenticated.",
            hint="The artifact was produced by a faulty sealer; re-seal the model.",
        ) from None
    model = DecryptedModel(graph, graph_serialized, buf, w_off)
    for t in graph.graph.initializer:
        if is_sealed_reference(t):
            view = tensor_view(buf, w_off, t)
            model.initializer_names.append(t.name)
            model.initializer_values.append(ort.OrtValue.ortvalue_from_numpy(view))
    return model


def create_inference_session(
    model: DecryptedModel,
    *,
    providers: Sequence[Any] | None = None,
    session_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    so = model.session_options(session_options)
    try:
        if providers is None and so.has_providers():  # devices added through add_provider_for_devices
            return ort.InferenceSession(model.graph_bytes(), sess_options=so)
        return ort.InferenceSession(
            model.graph_bytes(), sess_options=so, providers=providers or ["CPUExecutionProvider"]
        )
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
    art = SealedArtifact.open(Path(path))
    art.verify_signature(keyring.trust_store())
    data_key = art.unwrap_data_key([keyring, *providers], revoked=keyring.is_revoked)
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
