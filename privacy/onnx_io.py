"""Torch -> ONNX bytes, and onnxruntime sessions from bytes; nothing here writes a file.

Models may have been trained on patient records, so the plaintext ONNX stays in memory
(``ONNXProgram.model_proto`` serialised to bytes, ``InferenceSession(bytes)``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np

from sealinfer.privacy.errors import PrivacyError, PrivacyParameterError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_OPACUS_PREFIX = "_module."


class OnnxExportError(PrivacyError):
    """The trained model could not be exported to ONNX, or the export disagrees with torch."""

    code = "dp_onnx_export_failed"


def export_onnx(module: Any, example: np.ndarray) -> bytes:
    """Export an (unwrapped) torch module to ONNX bytes with a dynamic batch dimension."""
    import torch

    if _OPACUS_PREFIX in "".join(name for name, _ in module.named_parameters()):
        raise OnnxExportError(
            "the module still carries Opacus wrapper names ('_module.').",
            hint="Export the module inside the GradSampleModule (private_model._module).",
        )
    module.eval()
    # torch.export specialises a dimension of size 1, so trace with a batch of two.
    sample = torch.as_tensor(np.repeat(np.asarray(example[:1], dtype=np.float32), 2, axis=0))
    noise = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(noise):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (sample,), dynamo=True, verbose=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise OnnxExportError(
            f"torch.onnx.export failed ({type(exc).__name__}: {exc}).",
            hint="Use layers the ONNX exporter supports (Linear, Conv, activations, GroupNorm).",
        ) from exc
    finally:
        logger.setLevel(level)
    data = program.model_proto.SerializeToString()
    if _OPACUS_PREFIX.encode() in data:
        raise OnnxExportError("the exported ONNX contains Opacus '_module.' names.",
                              hint="Export the unwrapped module.")
    return data


def session(onnx_bytes: bytes) -> Any:
    """A CPU onnxruntime session built from bytes."""
    import onnxruntime as ort

    if not isinstance(onnx_bytes, bytes | bytearray) or not onnx_bytes:
        raise PrivacyParameterError("model must be non-empty ONNX bytes.", hint="Read the .onnx file's bytes.")
    try:
        return ort.InferenceSession(bytes(onnx_bytes), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own hierarchy
        raise PrivacyParameterError(f"onnxruntime cannot load the model ({exc}).",
                                    hint="Pass a valid ONNX model.") from exc


def run(sess: Any, X: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """Run the model's first input/output over ``X`` in batches."""
    name = sess.get_inputs()[0].name
    try:
        out = [sess.run(None, {name: np.ascontiguousarray(X[i:i + batch], dtype=np.float32)})[0]
               for i in range(0, len(X), batch)]
    except Exception as exc:  # onnxruntime raises its own hierarchy (InvalidArgument for a wrong shape)
        raise PrivacyParameterError(
            f"The model cannot run on these rows (shape {X.shape[1:]}): {str(exc).splitlines()[0][:200]}.",
            hint="Pass features shaped as the model's input (`sealinfer inspect` or onnx's graph.input).",
        ) from None
    return np.concatenate(out, axis=0) if out else np.zeros((0,), dtype=np.float32)


def verify_against_torch(onnx_bytes: bytes, module: Any, X: np.ndarray, *, atol: float = 1e-4) -> float:
    """Max |onnxruntime - torch| over ``X``; raises ``OnnxExportError`` above ``atol``."""
    import torch

    module.eval()
    with torch.no_grad():
        expected = module(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()
    got = run(session(onnx_bytes), X)
    if got.shape != expected.shape:
        raise OnnxExportError(f"onnxruntime output shape {got.shape} differs from torch's {expected.shape}.")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= atol:
        raise OnnxExportError(
            f"onnxruntime output differs from torch by {diff:.3g} (> {atol:g}).",
            hint="Check for layers whose ONNX export changes numerics.",
        )
    return diff
