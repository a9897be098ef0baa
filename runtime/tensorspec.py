"""A model's input/output signature as stored in the manifest and checked on every request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

# Dimension: a fixed size, or a symbolic name (dynamic), or None (unknown, dynamic).
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=tuple(data["shape"]))


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    ttype = value.type.tensor_type
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type) if ttype.elem_type else np.dtype("float32")
    dims: list[Dim] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(name=value.name, dtype=np.dtype(np_dtype).name, shape=tuple(dims))


def model_signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (excluding initializers listed as graph inputs) and outputs of ``model``."""
    init_names = {t.name for t in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in init_names]
    outputs = [_spec(v) for v in model.graph.output]
    return inputs, outputs


__all__ = ["Dim", "TensorSpec", "model_signature"]
