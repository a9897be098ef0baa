"""Decrypt a sealed payload into memory and open it with onnxruntime, never touching disk.

The whole payload is decrypted, segment by segment, straight out of an mmap of the artifact into one
preallocated buffer. The graph goes to onnxruntime as bytes; each weight as an ``OrtValue`` over its
slice of that buffer (``SessionOptions.add_initializer``), which onnxruntime uses in place:
the model's weights exist once in memory, in pages kept out of core dumps, and are zeroed when the
session closes. Weights of a type numpy cannot describe (bfloat16, float8, int4), and graphs whose
optimizers must read weights to fold or fuse them, go instead as one in-memory "external data file",
which onnxruntime copies; that buffer is zeroed as soon as the session exists.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from sealinfer.runtime.artifact import SealedArtifact, advise, read_manifest
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
    for name in ("MADV_DONTDUMP", "MADV_HUGEPAGE"):
        advise(region, name)  # where the kernel lacks one, the buffer still works, only slower or dumpable
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


# Element types whose numpy arrays onnxruntime can wrap as OrtValues without copying.
_ZERO_COPY_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)
# onnxruntime overrides an initializer given through add_initializer and never reads its external data,
# but for a model loaded from bytes it first checks that every external data path exists under the
# working directory. "." always does, and it is no regular file: if a graph optimizer does try to
# read a weight (to fold or fuse it), the read fails loudly and the loader falls back to copying.
_PLACEHOLDER_LOCATION = "."


# Ops whose weights onnxruntime's CPU graph optimizers rewrite while building a session (NCHWc
# reordering of convolution kernels, BatchNormalization folding), so they must be readable then.
_REWRITTEN_WEIGHTS = frozenset({"Conv", "ConvTranspose", "BatchNormalization", "FusedConv"})


def _optimizers_read(graph: onnx.GraphProto, sealed: set[str]) -> bool:
    """Whether a graph optimizer will want to read a sealed weight, which the in-place path cannot give.

    A conservative guess, to spare the failed attempt (and the error onnxruntime logs for it): a
    node that takes a sealed weight and is either rewritten by layout/fusion passes or has nothing
    but initializers as inputs (constant folding). A miss only costs a retry with a copy.
    """
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        if not sealed.intersection(node.input):
            continue
        if node.op_type in _REWRITTEN_WEIGHTS or all(not i or i in initializers for i in node.input):
            return True
    return False


@dataclass
class DecryptedModel:
    """A decrypted graph plus the buffer its weights live in. Owns plaintext: close() zeroes it.

    Two ways to give onnxruntime the weights:

    - ``in_place_inputs``: one ``OrtValue`` per weight over its slice of the buffer
      (``add_initializer``). The session reads the weights where they were decrypted, so the
      buffer must outlive it; the ``SealedSession`` that owns this object closes it after the
      onnxruntime session is gone.
    - ``copied_inputs``: the weights as one in-memory external data file, which onnxruntime copies
      while it builds the session; the buffer can then be released at once. Used when a weight's
      type has no numpy view (bfloat16, float8, int4) or a graph optimizer needs to read weights.
    """

    graph: onnx.ModelProto
    graph_serialized: bytes
    buffer: np.ndarray
    weights_offset: int
    weights_length: int
    released: bool = field(default=False)

    def _sealed(self) -> list[onnx.TensorProto]:
        return [t for t in self.graph.graph.initializer if is_sealed_reference(t)]

    def can_share(self) -> bool:
        """Whether every weight can be handed to onnxruntime in place (worth trying, at least)."""
        sealed = self._sealed()
        return (
            bool(sealed)
            and all(t.data_type in _ZERO_COPY_TYPES for t in sealed)
            and not _optimizers_read(self.graph.graph, {t.name for t in sealed})
        )

    def in_place_inputs(self, so: ort.SessionOptions) -> tuple[bytes, list[ort.OrtValue]]:
        """Graph bytes plus the OrtValues added to ``so``; whoever keeps the session must keep the values."""
        self._require_weights()
        sealed = self._sealed()
        values = [ort.OrtValue.ortvalue_from_numpy(tensor_view(self.buffer, self.weights_offset, t)) for t in sealed]
        for t, value in zip(sealed, values, strict=True):
            so.add_initializer(t.name, value)
        graph = onnx.ModelProto()
        graph.CopyFrom(self.graph)
        for t in graph.graph.initializer:
            if is_sealed_reference(t):
                for entry in t.external_data:
                    if entry.key == "location":
                        entry.value = _PLACEHOLDER_LOCATION
        return graph.SerializeToString(), values

    def copied_inputs(self, so: ort.SessionOptions) -> bytes:
        """Graph bytes, with ``so`` given the weights as an in-memory file for onnxruntime to copy."""
        self._require_weights()
        if self.weights_length:
            weights = self.buffer[self.weights_offset : self.weights_offset + self.weights_length]
            so.add_external_initializers_from_files_in_memory([WEIGHTS_LOCATION], [weights], [self.weights_length])
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

    def replace_graph(self, graph: onnx.ModelProto) -> None:
        """Use ``graph`` (the same weights, e.g. with compiled guards) for the session still to be made."""
        self.graph = graph
        self.graph_serialized = graph.SerializeToString()

    def _require_weights(self) -> None:
        if self.released:
            raise ArtifactError(
                "The decrypted weights were already handed to onnxruntime and erased.",
                hint="Open the artifact again (Runtime.open_artifact + open_decrypted) to read its weights.",
            )

    def release(self) -> None:
        """Zero the plaintext weights and drop the buffer. Only once no onnxruntime session reads it."""
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


# Every exception onnxruntime's binding defines (NotImplemented for an unknown op, EPFail, ...): none
# of them derives from RuntimeError, so naming three of them let the others escape untyped.
_ORT_ERRORS: tuple[type[BaseException], ...] = (
    *(
        cls
        for cls in vars(ort.capi.onnxruntime_pybind11_state).values()
        if isinstance(cls, type) and issubclass(cls, Exception)
    ),
    RuntimeError,
)


def create_inference_session(
    model: DecryptedModel,
    *,
    providers: Sequence[Any] | None = None,
    session_options: ort.SessionOptions | Callable[[], ort.SessionOptions] | None = None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """Create the onnxruntime session over the decrypted weights, in place where onnxruntime allows.

    ``session_options`` may be a factory: then the loader can retry with fresh options when the
    in-place attempt fails, so the weights are shared in place whenever possible. A ready-made
    ``SessionOptions`` object cannot be reset after a failed attempt, so its weights are copied.
    When onnxruntime copied the weights the plaintext buffer is erased at once; otherwise the
    session reads it and the caller must close ``model`` only after the session.
    """

    def fresh() -> ort.SessionOptions:
        so = session_options() if callable(session_options) else (session_options or ort.SessionOptions())
        if not prepack:
            so.add_session_config_entry("session.disable_prepacking", "1")
        return so

    def create(graph: bytes, so: ort.SessionOptions) -> ort.InferenceSession:
        if providers is None and so.has_providers():  # devices added through add_provider_for_devices
            return ort.InferenceSession(graph, sess_options=so)
        return ort.InferenceSession(graph, sess_options=so, providers=providers or ["CPUExecutionProvider"])

    if (session_options is None or callable(session_options)) and model.can_share():
        so = fresh()
        graph, values = model.in_place_inputs(so)
        try:
            session = create(graph, so)
        except _ORT_ERRORS:
            pass  # an optimizer wanted to read a weight: give onnxruntime a copy instead
        else:
            # Tie the views (and so the mmap) to the session object: the pages stay mapped for as long
            # as anything can reach the session, even if the owner forgets to close it.
            session._sealinfer_weights = values  # type: ignore[attr-defined]
            return session
    so = fresh()
    try:
        session = create(model.copied_inputs(so), so)
    except _ORT_ERRORS as exc:
        raise ModelError(
            f"onnxruntime cannot create a session for this model: {str(exc).splitlines()[0]}",
            hint="Check that the model runs with plain onnxruntime before sealing it.",
        ) from None
    model.release()
    return session


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
