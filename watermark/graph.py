"""Which tensors carry the mark, read in one orientation, and written back.

A *weight* is the constant weight operand of a MatMul, Gemm or Conv (or their integer forms
MatMulInteger/ConvInteger after dynamic quantization), reached through Identity/Cast/
DequantizeLinear. Weights are listed in graph (topological) order, which exporters, FP16 converters
and quantizers preserve, so the i-th weight of a converted model is the i-th weight of the original.
Every weight is held as ``[out, in, *kernel]`` (a MatMul ``B`` is transposed) so the same index means
the same connection whatever the op form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from sealinfer.watermark.quant import dequantize

FLOAT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}
INT_OPS = {"MatMulInteger": 1, "ConvInteger": 1}
MIN_ELEMENTS = 16


@dataclass
class WeightRef:
    """One weight operand: where it lives and how it maps to ``[out, in, *kernel]``."""

    index: int
    node: int  # index of the consuming node in graph.node
    op_type: str
    init_name: str  # initializer holding the stored values
    kind: str  # "float32", "float16", "int8"
    transposed: bool  # stored as [in, out]
    shape: tuple[int, ...]  # canonical orientation [out, in, ...]


@dataclass
class WeightSet:
    refs: list[WeightRef]
    arrays: list[np.ndarray]  # float32, canonical orientation


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
        for i, node in enumerate(g.node):
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append((i, node))
        self.graph_outputs = {o.name for o in g.output}

    def constant(self, name: str) -> tuple[np.ndarray, str, str] | None:
        """Resolve ``name`` to (float32 values, initializer name, stored kind) if it is a constant weight."""
        if name in self.inits:
            t = self.inits[name]
            arr = _float32_view(t)
            if arr is not None:
                return arr, name, "float32"
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.float32:
                return arr, name, "float32"
            if arr.dtype == np.float16:
                return arr.astype(np.float32), name, "float16"
            return None
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("Identity", "Cast"):
            return self.constant(node.input[0])
        if node.op_type == "DequantizeLinear":
            q = self.inits.get(node.input[0])
            if q is None:
                return None
            qa = numpy_helper.to_array(q)
            scale = self._const_array(node.input[1])
            zp = self._const_array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if scale is None:
                return None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            return dequantize(qa, scale, zp, axis), q.name, "int8"
        return None

    def _const_array(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type in ("Identity", "Cast"):
            return self._const_array(node.input[0])
        return None

    def integer_weight(self, node: onnx.NodeProto) -> tuple[np.ndarray, str] | None:
        name = node.input[1]
        if name not in self.inits:
            return None
        q = numpy_helper.to_array(self.inits[name])
        base = name[: -len("_quantized")] if name.endswith("_quantized") else name
        scale = self._const_array(base + "_scale")
        zp = self._const_array(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if scale is None:
            return None
        return dequantize(q, scale, zp, 1), name


def _float32_view(t: onnx.TensorProto) -> np.ndarray | None:
    """A read-only float32 array over an in-file little-endian initializer's bytes (no second copy)."""
    if t.data_type != onnx.TensorProto.FLOAT or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    raw = t.raw_data
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    if len(raw) != 4 * n:
        return None
    return np.frombuffer(raw, dtype="<f4").reshape(tuple(t.dims)).astype(np.float32, copy=False)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def read_weights(model: onnx.ModelProto) -> WeightSet:
    """Every weight operand with at least ``MIN_ELEMENTS`` values, in graph order."""
    gr = _Graph(model)
    refs: list[WeightRef] = []
    arrays: list[np.ndarray] = []
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        op = node.op_type
        if op in FLOAT_OPS and len(node.input) > 1:
            got = gr.constant(node.input[1])
            if got is None:
                continue
            arr, init_name, kind = got
        elif op in INT_OPS and len(node.input) > 1:
            got2 = gr.integer_weight(node)
            if got2 is None:
                continue
            arr, init_name = got2
            kind = "int8"
        else:
            continue
        if init_name in seen or arr.size < MIN_ELEMENTS:
            continue
        if op in ("MatMul", "MatMulInteger"):
            if arr.ndim != 2:
                continue
            transposed = True
        elif op == "Gemm":
            transposed = _attr(node, "transB", 0) == 0
        else:  # Conv / ConvInteger
            if arr.ndim < 3:
                continue
            transposed = False
        canon = np.ascontiguousarray(arr.T if transposed else arr, dtype=np.float32)
        seen.add(init_name)
        refs.append(WeightRef(len(refs), i, op, init_name, kind, transposed, tuple(canon.shape)))
        arrays.append(canon)
    return WeightSet(refs, arrays)


def copy_fields(src: Any, dst: Any, skip: set[str]) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those named in ``skip``."""
    for fd, val in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(val)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(val)
        else:
            setattr(dst, fd.name, val)


def write_weights(model: onnx.ModelProto, refs: list[WeightRef], arrays: list[np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose float32 weight initializers hold ``arrays`` (canonical orientation).

    The replaced initializers are never copied (for a 100M-weight model that is 400 MB of protobuf
    copying saved): the model is rebuilt field by field and the new values go in as raw bytes.
    """
    new = {ref.init_name: (ref, arr) for ref, arr in zip(refs, arrays, strict=True) if ref.kind == "float32"}
    out = onnx.ModelProto()
    copy_fields(model, out, {"graph"})
    copy_fields(model.graph, out.graph, {"initializer"})
    for t in model.graph.initializer:
        dst = out.graph.initializer.add()
        if t.name not in new:
            dst.CopyFrom(t)
            continue
        ref, arr = new[t.name]
        stored = np.ascontiguousarray(arr.T if ref.transposed else arr, dtype="<f4")
        # Field by field: ListFields() on a tensor would materialize its old raw bytes.
        dst.name = t.name
        if t.doc_string:
            dst.doc_string = t.doc_string
        dst.metadata_props.extend(t.metadata_props)
        dst.dims.extend(stored.shape)
        dst.data_type = onnx.TensorProto.FLOAT
        dst.raw_data = stored.tobytes()
    return out


def pairing_graph(model: onnx.ModelProto) -> _Graph:
    return _Graph(model)
