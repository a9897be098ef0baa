"""Keyed, blind, robust watermarks for ONNX weights.

``embed`` marks a float model's weights with a payload of up to 32 bytes; ``detect`` finds it again
from the model alone and the key, with an exact p-value. Three channels:

* spread (STDM over raw weights, chips of row blocks): carries the payload bit-exactly through FP16 and
  INT8 conversion (embedding simulates both and nudges the few weights nearest a rounding boundary);
* lattice (fine dithered quantization of a canonical row subset): survives hidden-unit permutation,
  positive rescaling and magnitude pruning;
* robust (small models): a few large pilot chips in the least output-sensitive tensor, read with a soft
  score, for heavy additive noise (0.1 x std per weight).

Limit worth knowing: under noise of 0.1 x std per weight, detection needs a mark energy
``A = sum (change / std)^2 / 0.01`` of ~210 (blind, p <= 1e-9), and even a detector holding the original
model needs ~36. A per-weight (diagonal) output-cost proxy buys only ~5-20 in the small transformer
encoder of the tests; the Kronecker-factored cost of ``kfac.py`` (input covariance x output Jacobian metric)
buys thousands there. ``robust.py`` has the derivation;
``Receipt.strength["robust_energy"]`` records what was placed (0 = none).
"""

from sealinfer.watermark.detect import detect, verify_commitment
from sealinfer.watermark.embed import embed
from sealinfer.watermark.fidelity import fidelity, generate_probes
from sealinfer.watermark.report import Detection, FidelityReport, Receipt

__all__ = ["Detection", "FidelityReport", "Receipt", "detect", "embed", "fidelity", "generate_probes",
           "verify_commitment"]
