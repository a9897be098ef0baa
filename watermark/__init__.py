"""Keyed, blind, robust watermarks for ONNX weights.

``embed`` marks a float model's weights with a payload of up to 32 bytes; ``detect`` finds it again
from the model alone and the key, with an exact p-value. Two channels carry the same payload:
a spread channel (STDM over raw weights; survives FP16 and INT8 conversion bit-exactly) and a lattice
channel (fine dithered quantization in a permutation- and scale-canonical form; survives hidden-unit
permutation, positive rescaling and magnitude pruning). Each module's docstring says why it is built
the way it is.

Limit worth knowing: heavy additive noise (0.1 x std per weight) is ~10^2-10^3 times the per-weight
change that a 1e-3 output-fidelity bound allows, so a blind mark outlasts it only by averaging over
many weights: detection needs roughly N > (14 * 0.1 / strength)^2 weights (strength = the per-weight
rms change the bound permits, recorded in ``Receipt.strength``). Small models are therefore detected
after FP16/INT8/pruning/permutation but not after such noise — which also ruins their accuracy.
"""

from sealinfer.watermark.detect import detect, verify_commitment
from sealinfer.watermark.embed import embed
from sealinfer.watermark.fidelity import fidelity, generate_probes
from sealinfer.watermark.report import Detection, FidelityReport, Receipt

__all__ = ["Detection", "FidelityReport", "Receipt", "detect", "embed", "fidelity", "generate_probes",
           "verify_commitment"]
