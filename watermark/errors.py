"""Watermark-specific errors, all under ``sealinfer.runtime.errors.WatermarkError``.

``sealinfer.runtime.errors`` imports nothing, so this leaf library can use it without pulling in the
runtime.
"""

from __future__ import annotations

from sealinfer.runtime.errors import (
    ConfigurationError,
    FidelityError,
    WatermarkCapacityError,
    WatermarkError,
)


class WatermarkKeyError(ConfigurationError):
    """The watermark key is missing, too short or of the wrong type."""

    code = "watermark_key_invalid"


class PayloadError(ConfigurationError):
    """The payload is empty or longer than the scheme carries."""

    code = "watermark_payload_invalid"


class NoFloatWeightsError(WatermarkError):
    """The model has no float weight tensors (MatMul/Gemm/Conv initializers) to carry a mark."""

    code = "watermark_no_float_weights"


class QuantizedModelError(NoFloatWeightsError):
    """The model's weights are already integer-quantized; marks are embedded before quantization."""

    code = "watermark_quantized_model"


class WatermarkNotFoundError(WatermarkError):
    """Detection with the given key did not reach the threshold (raised by ``verify_commitment``)."""

    code = "watermark_not_found"


class PayloadMismatchError(WatermarkNotFoundError):
    """A mark was found but its payload does not match the signed commitment."""

    code = "watermark_payload_mismatch"


__all__ = [
    "FidelityError",
    "NoFloatWeightsError",
    "PayloadError",
    "PayloadMismatchError",
    "QuantizedModelError",
    "WatermarkCapacityError",
    "WatermarkError",
    "WatermarkKeyError",
    "WatermarkNotFoundError",
]
