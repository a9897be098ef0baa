"""What embedding and detection return: ``Receipt``, ``Detection``, ``FidelityReport``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sealinfer.watermark.keys import SCHEME

DEFAULT_THRESHOLD_P = 1e-9


@dataclass(frozen=True)
class FidelityReport:
    """Original vs marked outputs on probe inputs.

    ``max_relative_change`` is ``max |y_marked - y| / mean |y|`` over every probe and output element:
    the worst single logit change measured against the typical logit magnitude. (A per-sample ratio
    would divide by logits that happen to be near zero at the decision boundary and say nothing.)
    """

    max_relative_change: float
    top1_agreement: float
    n_probes: int
    probes: str  # "supplied" or "generated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Receipt:
    scheme: str
    payload_sha256: str
    payload_length: int
    n_bits: int
    threshold_p: float
    tensors: list[str]
    chips_per_bit: int
    strength: dict[str, float]
    fidelity: FidelityReport
    n_weights: int = 0
    hidden_layers: int = 0
    survives_simulated: list[str] = field(default_factory=list)

    def commitment(self) -> dict[str, Any]:
        """The JSON-safe part that goes into the signed manifest (plus the key id, added by the caller)."""
        return {
            "scheme": self.scheme,
            "payload_sha256": self.payload_sha256,
            "threshold_p": self.threshold_p,
            "n_bits": self.n_bits,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fidelity"] = self.fidelity.to_dict()
        return d


@dataclass(frozen=True)
class Detection:
    """Outcome of ``detect``.

    ``p_value`` is the probability that an unmarked model, or the wrong key, scores at least ``score``
    (exact binomial tail of the pilot agreements, Bonferroni-corrected over the two channels);
    ``bit_error_rate`` is the fraction of pilot symbols read wrong in the reporting channel.
    """

    detected: bool
    payload: bytes | None
    bit_error_rate: float
    p_value: float
    score: float
    threshold_p: float
    log10_p: float = 0.0
    channel: str = ""
    scheme: str = SCHEME

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["payload"] = None if self.payload is None else self.payload.decode("utf-8", "backslashreplace")
        d["payload_hex"] = None if self.payload is None else self.payload.hex()
        return d
