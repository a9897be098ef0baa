"""Pieces shared by embed and detect: reading the carrier tensors and the scheme's constants."""

from __future__ import annotations

import onnx

from sealinfer.watermark.errors import NoFloatWeightsError
from sealinfer.watermark.graph import WeightSet, read_weights

STRENGTH = 2.0e-4  # spread channel: per-weight rms change, in tensor-std units, at level 1
# Embed uses the strongest level whose output change stays within half the bound (else the strongest
# within the bound): a stronger mark survives more noise. Detect tries each level (Bonferroni).
STRENGTH_LEVELS = (8.0, 4.0, 2.0, 1.0, 0.5, 0.25)


def carriers(model: onnx.ModelProto) -> WeightSet:
    if not isinstance(model, onnx.ModelProto):
        raise NoFloatWeightsError(
            f"Expected an onnx.ModelProto, got {type(model).__name__}.",
            hint="Load the file with onnx.load(...) (or open_model_proto for .sealed) first.",
        )
    ws = read_weights(model)
    if not ws.refs:
        raise NoFloatWeightsError(
            "The model has no weight tensors (constant MatMul/Gemm/Conv weights with >= 16 values).",
            hint="Watermarking needs a model with learned weight matrices or kernels stored as initializers.",
        )
    return ws
