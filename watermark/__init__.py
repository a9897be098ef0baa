"""Keyed, blind, robust watermarks for ONNX weights.

``embed`` marks a float model's weights with a payload of up to 32 bytes; ``detect`` finds it again
from the model alone and the key, with an exact p-value. Two channels carry the same payload:
a spread channel (STDM over raw weights; survives FP16 and INT8 conversion bit-exactly) and a lattice
channel (fine dithered quantization in a permutation- and scale-canonical form; survives hidden-unit
permutation, positive rescaling and magnitude pruning). See ``docs`` in each module for the why.
"""

from sealinfer.watermark.detect import detect, verify_commitment
from sealinfer.watermark.embed import embed
from sealinfer.watermark.fidelity import fidelity, generate_probes
from sealinfer.watermark.report import Detection, FidelityReport, Receipt

__all__ = ["Detection", "FidelityReport", "Receipt", "detect", "embed", "fidelity", "generate_probes",
           "verify_commitment"]
