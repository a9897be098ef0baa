"""Plaintext payload layout: the ONNX graph, then every sizeable weight in one aligned blob.

Sealing moves each initializer's bytes out of the graph into a "weights" section and leaves an ONNX
external-data reference (location ``sealinfer:weights``, offset, length) in its place. Loading
decrypts the whole payload into one buffer and hands onnxruntime zero-copy views of it, so no
plaintext ever goes to a file and large models need no second copy.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

WEIGHTS_LOCATION = "sealinfer:weights"
ALIGN = 64  # cache-line / AVX-512 alignment for tensor views
SECTION_ALIGN = 4096
MIN_EXTERNAL_BYTES = 1024  # small tensors stay in the graph: not worth a view


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass
class _Source:
    """Where one tensor's bytes come from while sealing."""

    tensor: TensorProto
    length: int
    raw: memoryview | None = None  # in-memory bytes
    file: Path | None = None  # external data file of the source model
    file_offset: int = 0


@dataclass
class WeightsPlan:
    graph_bytes: bytes
    weights_offset: int
    weights_length: int
    sources: list[tuple[int, _Source]]  # (offset within weights, source)

    @property
    def plaintext_size(self) -> int:
        return self.weights_offset + self.weights_length if self.weights_length else len(self.graph_bytes)

    def sections(self) -> dict[str, tuple[int, int]]:
        return {"graph": (0, len(self.graph_bytes)), "weights": (self.weights_offset, self.weights_length)}

    def iter_chunks(self, chunk: int = 8 << 20) -> Iterator[memoryview | bytes]:
        """The plaintext payload, in order, without materialising it."""
        yield self.graph_bytes
        if not self.weights_length:
            return
        pos = len(self.graph_bytes)
        yield bytes(self.weights_offset - pos)
        pos = self.weights_offset
        for rel, src in self.sources:
            start = self.weights_offset + rel
            if start > pos:
                yield bytes(start - pos)
            if src.raw is not None:
                yield src.raw
            else:
                assert src.file is not None
                with src.file.open("rb") as fh:
                    if src.length:
                        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                            view = memoryview(mm)
                            try:
                                for off in range(0, src.length, chunk):
                                    n = min(chunk, src.length - off)
                                    yield bytes(view[src.file_offset + off : src.file_offset + off + n])
                            finally:
                                view.release()
            pos = start + src.length
        end = self.weights_offset + self.weights_length
        if end > pos:
            yield bytes(end - pos)


def _tensor_bytes(t: TensorProto, base_dir: Path | None) -> _Source:
    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if base_dir is None:
            raise ValueError("external data without a base directory")
        location = (base_dir / info["location"]).resolve()
        if base_dir.resolve() not in location.parents:
            raise ValueError(f"external data path escapes the model folder: {info['location']}")
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else location.stat().st_size - offset
        return _Source(t, length, file=location, file_offset=offset)
    if t.HasField("raw_data"):
        return _Source(t, len(t.raw_data), raw=memoryview(t.raw_data))
    arr = numpy_helper.to_array(t)
    data = np.ascontiguousarray(arr).tobytes()
    return _Source(t, len(data), raw=memoryview(data))


def _dense_size(t: TensorProto) -> int:
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def plan_weights(model: onnx.ModelProto, base_dir: Path | None) -> WeightsPlan:
    """Move sizeable initializers of the main graph into the weights section (mutates ``model``)."""
    sources: list[tuple[int, _Source]] = []
    offset = 0
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED) or _dense_size(t) < MIN_EXTERNAL_BYTES:
            if t.data_location == TensorProto.EXTERNAL:  # small but stored in the source's external file
                src = _tensor_bytes(t, base_dir)
                assert src.file is not None
                with src.file.open("rb") as fh:
                    fh.seek(src.file_offset)
                    data = fh.read(src.length)
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
                t.raw_data = data
            continue
        src = _tensor_bytes(t, base_dir)
        if src.length != _dense_size(t):
            raise ValueError(f"initializer {t.name!r} has {src.length} bytes, its shape needs {_dense_size(t)}")
        offset = _align(offset, ALIGN)
        sources.append((offset, src))
        offset += src.length
    # Each source's memoryview keeps its bytes object alive, so the proto fields can be cleared.
    for rel, src in sources:
        t = src.tensor
        t.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            t.ClearField(f)
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", WEIGHTS_LOCATION), ("offset", str(rel)), ("length", str(src.length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    graph_bytes = model.SerializeToString()
    weights_offset = _align(len(graph_bytes), SECTION_ALIGN) if sources else len(graph_bytes)
    return WeightsPlan(graph_bytes, weights_offset, offset, sources)


def tensor_view(buffer: np.ndarray, weights_offset: int, t: TensorProto) -> np.ndarray:
    """A zero-copy numpy view of an externalised initializer inside the decrypted payload."""
    info = {e.key: e.value for e in t.external_data}
    start = weights_offset + int(info["offset"])
    length = int(info["length"])
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    return buffer[start : start + length].view(dtype).reshape(tuple(t.dims))


def is_sealed_reference(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == WEIGHTS_LOCATION for e in t.external_data
    )
