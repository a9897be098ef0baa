"""Model cost features read from the ONNX graph: FLOPs, bytes moved, parameter bytes, precision.

Costs depend on the batch size, which is usually symbolic in the graph. Every cost here is linear in
the batch (weights are read once per run, activations scale with samples), so the graph is measured
twice with shape inference, at batch 1 and batch 2, and stored as ``fixed + per_sample * batch``.
Other symbolic dimensions (sequence length, image size) are pinned to values the caller gives
(default 1) and recorded in ``assumed_dims`` so the manifest says what the figures assume.

Bytes count every node's inputs and outputs with no fusion: an upper bound on memory traffic that
the online calibration scales to what the device really does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import TensorProto

from sealinfer.runtime.errors import ModelError

SCHEMA = 1
OP_CLASSES = ("conv", "gemm", "attention", "elementwise", "other")

_PRECISION = {
    TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "fp64", TensorProto.INT8: "int8", TensorProto.UINT8: "int8",
    TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.FLOAT8E5M2: "fp8",
}
_CONV = {"Conv", "ConvInteger", "QLinearConv", "FusedConv"}
_CONV_T = {"ConvTranspose"}
_GEMM = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm"}
_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
              "DecoderMaskedMultiHeadAttention", "SparseAttention"}
# FLOPs per output element; anything absent counts 1 if it is in _ELEMENTWISE_1.
_ELEMENTWISE_W = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "SimplifiedLayerNormalization": 6,
                  "BatchNormalization": 2, "InstanceNormalization": 8, "GroupNormalization": 8, "Gelu": 8,
                  "FastGelu": 8, "Erf": 4, "Tanh": 4, "Sigmoid": 4, "Exp": 4, "Log": 4, "Pow": 4,
                  "HardSigmoid": 3, "Mish": 8, "Swish": 5}
_ELEMENTWISE_1 = {"Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Clip", "Max", "Min", "Neg",
                  "Abs", "Sqrt", "Reciprocal", "Where", "Sum", "Mean", "Elu", "Selu", "Celu", "Sign",
                  "Floor", "Ceil", "Round", "Not", "And", "Or", "Equal", "Less", "Greater", "Cast",
                  "QuantizeLinear", "DequantizeLinear", "HardSwish", "BiasGelu", "SkipLayerNormalization"}
# Ops that onnxruntime runs as views or metadata: no arithmetic and (usually) no copy.
_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
          "ConstantOfShape", "Dropout"}
# Initializers at most this large are kept for shape inference (Reshape targets and the like);
# larger ones are replaced by a typed, shaped input so feature extraction never copies the weights.
_KEEP_INITIALIZER_ELEMS = 4096


class MissingFeaturesError(ModelError):
    """A model's cost features are absent or malformed (e.g. a manifest without ``cost``)."""

    code = "model_features_missing"


def _linear() -> dict[str, float]:
    return {"fixed": 0.0, "per_sample": 0.0}


@dataclass(frozen=True)
class ModelFeatures:
    """Costs as ``fixed + per_sample * batch``; FLOPs, bytes (read / written / resident), precision."""

    precision: str
    param_bytes: int
    flops_fixed: float
    flops_per_sample: float
    bytes_read_fixed: float
    bytes_read_per_sample: float
    bytes_written_fixed: float
    bytes_written_per_sample: float
    activation_fixed: float = 0.0
    activation_per_sample: float = 0.0
    op_classes: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    batch_symbolic: bool = True
    nodes: int = 0
    unknown_nodes: int = 0
    assumed_dims: dict[str, int] = field(default_factory=dict, hash=False)
    schema: int = SCHEMA
    # Content digest: a stable id for caches and calibration keyed per model.
    key: str = field(default="", compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.key:
            body = {k: v for k, v in asdict(self).items() if k != "key"}
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            object.__setattr__(self, "key", digest)

    def flops(self, batch: int = 1) -> float:
        return self.flops_fixed + self.flops_per_sample * batch

    def bytes_read(self, batch: int = 1) -> float:
        return self.bytes_read_fixed + self.bytes_read_per_sample * batch

    def bytes_written(self, batch: int = 1) -> float:
        return self.bytes_written_fixed + self.bytes_written_per_sample * batch

    def bytes_moved(self, batch: int = 1) -> float:
        return self.bytes_read(batch) + self.bytes_written(batch)

    def memory_required(self, batch: int = 1) -> float:
        """Resident bytes: parameters plus the largest node's activations (no-reuse peak estimate)."""
        return self.param_bytes + self.activation_fixed + self.activation_per_sample * batch

    def op_class_flops(self, batch: int = 1) -> dict[str, float]:
        return {name: c["fixed"] + c["per_sample"] * batch for name, c in self.op_classes.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ModelFeatures:
        """Rebuild from a manifest's ``cost``; anything missing or malformed → MissingFeaturesError."""
        hint = "Recompile the model with a current sealinfer so its manifest carries cost features."
        if not isinstance(data, Mapping):
            raise MissingFeaturesError("the model has no cost features.", hint=hint)
        required = ("precision", "param_bytes", "flops_fixed", "flops_per_sample", "bytes_read_fixed",
                    "bytes_read_per_sample", "bytes_written_fixed", "bytes_written_per_sample")
        missing = [k for k in required if k not in data]
        if missing:
            raise MissingFeaturesError(f"the model's cost features lack {', '.join(missing)}.", hint=hint)
        if data.get("schema", SCHEMA) != SCHEMA:
            raise MissingFeaturesError(f"cost features use schema {data.get('schema')!r}, expected {SCHEMA}.",
                                       hint=hint)
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known and k != "key"}
        for name, value in values.items():
            if name in ("precision",):
                if not isinstance(value, str) or not value:
                    raise MissingFeaturesError(f"cost feature {name} = {value!r} is not a precision name.",
                                               hint=hint)
            elif name in ("op_classes", "assumed_dims"):
                if not isinstance(value, Mapping):
                    raise MissingFeaturesError(f"cost feature {name} is not a mapping.", hint=hint)
            elif name == "batch_symbolic":
                if not isinstance(value, bool):
                    raise MissingFeaturesError("cost feature batch_symbolic is not a boolean.", hint=hint)
            elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise MissingFeaturesError(f"cost feature {name} = {value!r} is not a finite number >= 0.",
                                           hint=hint)
        values["param_bytes"] = int(values["param_bytes"])
        values["op_classes"] = {str(k): {"fixed": float(v.get("fixed", 0.0)),
                                         "per_sample": float(v.get("per_sample", 0.0))}
                                for k, v in dict(values.get("op_classes", {})).items()}
        return cls(**values)


# --- extraction --------------------------------------------------------------------------------


def _numel(shape: tuple[int, ...] | None) -> int | None:
    if shape is None:
        return None
    return math.prod(shape)


def _shape_of(value: onnx.ValueInfoProto) -> tuple[int, tuple[int, ...] | None]:
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return ttype.elem_type, None
    dims = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return ttype.elem_type, None
        dims.append(d.dim_value)
    return ttype.elem_type, tuple(dims)


def _itemsize(elem_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except Exception:  # string or unknown types: count as one byte per element
        return 1


def _light_copy(model: onnx.ModelProto, batch: int, dims: Mapping[str, int]) -> onnx.ModelProto:
    """The graph with concrete input dims and large weights replaced by shaped inputs (no data copy)."""
    graph = model.graph
    light = onnx.helper.make_graph(list(graph.node), graph.name or "g", [], list(graph.output))
    init_names = set()
    for init in graph.initializer:
        init_names.add(init.name)
        if math.prod(init.dims) <= _KEEP_INITIALIZER_ELEMS:
            light.initializer.append(init)
        else:
            light.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light.sparse_initializer.extend(graph.sparse_initializer)
    for value in graph.input:
        if value.name in init_names:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value)
        for position, d in enumerate(copy.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            name = d.dim_param if d.HasField("dim_param") else ""
            d.dim_value = batch if position == 0 else int(dims.get(name, 1))
        light.input.append(copy)
    out = onnx.helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return out


def _graph_cost(model: onnx.ModelProto, batch: int, dims: Mapping[str, int]) -> dict[str, Any]:
    light = _light_copy(model, batch, dims)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed: {exc}.",
                         hint="Run onnx.checker.check_model on the model and fix what it reports.") from exc
    graph = inferred.graph
    shapes: dict[str, tuple[int, tuple[int, ...] | None]] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _shape_of(value)
    params = set()
    for init in model.graph.initializer:
        shapes[init.name] = (init.data_type, tuple(init.dims))
        params.add(init.name)

    def nbytes(name: str) -> int | None:
        elem, shape = shapes.get(name, (0, None))
        n = _numel(shape)
        return None if n is None else n * _itemsize(elem)

    classes = {c: 0.0 for c in OP_CLASSES}
    total = {"read": 0.0, "written": 0.0, "peak_act": 0.0, "unknown": 0}
    for node in graph.node:
        op = node.op_type
        ins = [i for i in node.input if i]
        outs = [o for o in node.output if o]
        in_bytes = [nbytes(i) for i in ins]
        out_bytes = [nbytes(o) for o in outs]
        if any(b is None for b in out_bytes) or any(b is None for b in in_bytes):
            total["unknown"] += 1
        if op in _VIEWS:
            continue
        total["read"] += sum(b or 0 for b in in_bytes)
        total["written"] += sum(b or 0 for b in out_bytes)
        act = sum(b or 0 for i, b in zip(ins, in_bytes, strict=True) if i not in params) + sum(
            b or 0 for b in out_bytes)
        total["peak_act"] = max(total["peak_act"], act)
        y = _numel(shapes.get(outs[0], (0, None))[1]) if outs else None
        if y is None:
            continue
        cls, flops = _node_flops(node, ins, shapes, y)
        classes[cls] += flops
    return {"classes": classes, **total}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_flops(node: onnx.NodeProto, ins: list[str], shapes: Mapping[str, tuple[int, Any]],
                y: int) -> tuple[str, float]:
    op = node.op_type

    def shape(i: int) -> tuple[int, ...] | None:
        return shapes.get(ins[i], (0, None))[1] if i < len(ins) else None

    if op in _CONV:
        w = shape(3 if op == "QLinearConv" else 1)
        return "conv", 2.0 * y * math.prod(w[1:]) if w else 0.0
    if op in _CONV_T:
        x, w = shape(0), shape(1)
        return "conv", 2.0 * math.prod(x) * math.prod(w[1:]) if x and w else 0.0
    if op in _GEMM:
        a = shape(0)
        if not a:
            return "gemm", 0.0
        if op in ("Gemm", "FusedGemm"):
            k = a[0] if _attr(node, "transA", 0) else a[-1]
        else:
            k = a[-1]
        return "gemm", 2.0 * y * k
    if op in _ATTENTION:
        q, k = shape(0), shape(1)
        if op == "Attention" and node.domain == "com.microsoft" and q and k:
            seq = q[1] if len(q) > 1 else 1
            return "attention", 2.0 * math.prod(q) * k[-1] + 4.0 * y * seq
        if q and k:
            seq_kv = k[-2] if len(k) == 4 else (k[1] if len(k) > 1 else 1)
            return "attention", 4.0 * y * seq_kv
        return "attention", 4.0 * y * (q[1] if q and len(q) > 1 else 1)
    if op in _ELEMENTWISE_W:
        return "elementwise", float(_ELEMENTWISE_W[op] * y)
    if op in _ELEMENTWISE_1:
        return "elementwise", float(y)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return "other", float(y * math.prod(_attr(node, "kernel_shape", [1])))
    x = shape(0)
    if op.startswith(("Reduce", "Global", "ArgM")) or op in ("TopK", "CumSum"):
        return "other", float(math.prod(x)) if x else float(y)
    return "other", 0.0


def _precision(model: onnx.ModelProto) -> str:
    by_type: dict[str, int] = {}
    for init in model.graph.initializer:
        name = _PRECISION.get(init.data_type)
        if name:
            by_type[name] = by_type.get(name, 0) + math.prod(init.dims) * _itemsize(init.data_type)
    if by_type:
        return max(sorted(by_type), key=lambda k: by_type[k])
    for value in model.graph.input:
        name = _PRECISION.get(value.type.tensor_type.elem_type)
        if name:
            return name
    return "fp32"


def _batch_symbolic(model: onnx.ModelProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return True
    return False


def extract_features(model: onnx.ModelProto, *, dims: Mapping[str, int] | None = None) -> ModelFeatures:
    """Cost features of ``model``; ``dims`` pins non-batch symbolic dimensions (default 1)."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected an onnx.ModelProto, got {type(model).__name__}.",
                         hint="Load the model with onnx.load or onnx.load_from_string first.")
    if not model.graph.node:
        raise MissingFeaturesError("the model graph has no nodes, so it has no cost to measure.",
                                   hint="Export the model again; the graph is empty.")
    dims = dict(dims or {})
    symbolic = _batch_symbolic(model)
    one = _graph_cost(model, 1, dims)
    if symbolic:
        two = _graph_cost(model, 2, dims)

        def split(a: float, b: float) -> tuple[float, float]:
            per = max(b - a, 0.0)
            return max(a - per, 0.0), per
    else:
        two = one

        def split(a: float, b: float) -> tuple[float, float]:
            return a, 0.0

    flops_fixed, flops_per = split(sum(one["classes"].values()), sum(two["classes"].values()))
    read_fixed, read_per = split(one["read"], two["read"])
    written_fixed, written_per = split(one["written"], two["written"])
    act_fixed, act_per = split(one["peak_act"], two["peak_act"])
    classes = {}
    for name in OP_CLASSES:
        fixed, per = split(one["classes"][name], two["classes"][name])
        classes[name] = {"fixed": fixed, "per_sample": per}
    param_bytes = sum(math.prod(i.dims) * _itemsize(i.data_type) for i in model.graph.initializer)
    return ModelFeatures(
        precision=_precision(model), param_bytes=int(param_bytes),
        flops_fixed=flops_fixed, flops_per_sample=flops_per,
        bytes_read_fixed=read_fixed, bytes_read_per_sample=read_per,
        bytes_written_fixed=written_fixed, bytes_written_per_sample=written_per,
        activation_fixed=act_fixed, activation_per_sample=act_per,
        op_classes=classes, batch_symbolic=symbolic, nodes=len(model.graph.node),
        unknown_nodes=int(one["unknown"]), assumed_dims=dims,
    )
