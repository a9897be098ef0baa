"""The DP certificate: what a model's training claims, bound to the model's ONNX bytes by SHA-256.

A certificate records the *inputs* of the privacy analysis (noise, sampling rate, steps, delta), never
only its output: the checker recomputes epsilon itself (``accounting.check_certificate``), so a
certificate cannot simply assert a small epsilon. Parsing here is structural (types and ranges);
whether the claim is acceptable (accountant, sampling scheme, delta against the dataset size, the
epsilon limit) is the checker's verdict, so that a well-formed but unacceptable certificate gets a
reason rather than a parse error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sealinfer.privacy.errors import CertificateError

FORMAT_VERSION = 1
MAX_CERTIFICATE_BYTES = 1 << 20  # a certificate is a few hundred bytes; refuse to parse megabytes
MAX_SEGMENTS = 1_000

_REQUIRED = (
    "accountant", "delta", "dataset_size", "sampling", "segments", "max_grad_norm", "secure_mode",
    "model_sha256",
)
_OPTIONAL = ("version", "epsilon", "metadata")
_SEGMENT_KEYS = ("noise_multiplier", "sample_rate", "steps")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FIX = "Regenerate the certificate with sealinfer.privacy.train_dp or fix the field by hand."


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 used for ``model_sha256``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Segment:
    """A run of DP-SGD steps with one noise multiplier and one Poisson sampling rate."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps}


@dataclass(frozen=True)
class Certificate:
    """A DP-SGD training claim. ``epsilon`` is the producer's claim, informational only."""

    accountant: str
    delta: float
    dataset_size: int
    sampling: str
    segments: tuple[Segment, ...]
    max_grad_norm: float
    secure_mode: bool
    model_sha256: str
    epsilon: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Run the same validator as JSON so a Certificate object is always well-formed.
        _validate(self.to_dict())
        segments = tuple(
            s if isinstance(s, Segment)
            else Segment(float(s["noise_multiplier"]), float(s["sample_rate"]), int(s["steps"]))
            for s in self.segments
        )
        object.__setattr__(self, "segments", segments)

    # --- derived ---------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.segments)

    def history(self) -> list[tuple[float, float, int]]:
        """Segments as an Opacus accountant history: ``[(noise_multiplier, sample_rate, steps), ...]``."""
        return [(s.noise_multiplier, s.sample_rate, s.steps) for s in self.segments]

    def matches_model(self, model_bytes: bytes) -> bool:
        return hmac.compare_digest(self.model_sha256, sha256_hex(model_bytes))

    def bound_to(self, model_bytes: bytes) -> Certificate:
        """A copy whose ``model_sha256`` is the digest of ``model_bytes``."""
        return replace(self, model_sha256=sha256_hex(model_bytes))

    # --- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "accountant": self.accountant,
            "delta": self.delta,
            "dataset_size": self.dataset_size,
            "sampling": self.sampling,
            "segments": [s.to_dict() if isinstance(s, Segment) else s for s in self.segments],
            "max_grad_norm": self.max_grad_norm,
            "secure_mode": self.secure_mode,
            "model_sha256": self.model_sha256,
        }
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys; compact unless ``indent`` is given)."""
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=separators,
                          allow_nan=False)

    @classmethod
    def from_json(cls, source: str | bytes | Mapping[str, Any]) -> Certificate:
        """Parse and validate a certificate from JSON text/bytes or an already-decoded mapping."""
        if isinstance(source, Mapping):
            data: Any = dict(source)
        elif isinstance(source, str | bytes | bytearray):
            if len(source) > MAX_CERTIFICATE_BYTES:
                raise CertificateError(
                    f"certificate is {len(source)} bytes, larger than the {MAX_CERTIFICATE_BYTES}-byte limit.",
                    hint="Pass the certificate JSON file, not the model or a log.",
                )
            try:
                data = json.loads(source, parse_constant=_reject_constant)
            except (ValueError, UnicodeDecodeError) as exc:
                raise CertificateError(f"certificate is not valid JSON ({exc}).", hint=_FIX) from exc
        else:
            raise CertificateError(
                f"certificate must be JSON text, bytes or a dict, not {type(source).__name__}.",
                hint="Load the file's text and pass it to Certificate.from_json.",
            )
        _validate(data)
        return cls(
            accountant=data["accountant"],
            delta=float(data["delta"]),
            dataset_size=int(data["dataset_size"]),
            sampling=data["sampling"],
            segments=tuple(
                Segment(float(s["noise_multiplier"]), float(s["sample_rate"]), int(s["steps"]))
                for s in data["segments"]
            ),
            max_grad_norm=float(data["max_grad_norm"]),
            secure_mode=data["secure_mode"],
            model_sha256=data["model_sha256"],
            epsilon=None if data.get("epsilon") is None else float(data["epsilon"]),
            metadata=dict(data.get("metadata") or {}),
            version=int(data.get("version", FORMAT_VERSION)),
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a certificate")


def _fail(field_name: str, problem: str) -> CertificateError:
    return CertificateError(f"certificate field {field_name!r} {problem}.", hint=_FIX)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _validate(data: Any) -> None:
    if not isinstance(data, dict):
        raise CertificateError("certificate must be a JSON object.", hint=_FIX)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(missing[0], "is missing" + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CertificateError(
            f"certificate has unknown field(s) {', '.join(map(repr, unknown))}.",
            hint=f"Allowed fields: {', '.join(_REQUIRED + _OPTIONAL)}; put free-form notes under 'metadata'.",
        )
    version = data.get("version", FORMAT_VERSION)
    if not _is_int(version) or int(version) != FORMAT_VERSION:
        raise _fail("version", f"is {version!r}; this sealinfer reads version {FORMAT_VERSION}")
    for name in ("accountant", "sampling"):
        if not isinstance(data[name], str) or not data[name].strip():
            raise _fail(name, "must be a non-empty string")
    delta = data["delta"]
    if not _is_number(delta) or not 0.0 < delta < 1.0:
        raise _fail("delta", f"is {delta!r}; it must be a number in (0, 1)")
    size = data["dataset_size"]
    if not _is_int(size) or int(size) < 1:
        raise _fail("dataset_size", f"is {size!r}; it must be a positive integer")
    norm = data["max_grad_norm"]
    if not _is_number(norm) or norm <= 0:
        raise _fail("max_grad_norm", f"is {norm!r}; it must be a positive number")
    if not isinstance(data["secure_mode"], bool):
        raise _fail("secure_mode", "must be true or false")
    digest = data["model_sha256"]
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise _fail("model_sha256", "must be 64 lowercase hex characters (SHA-256 of the ONNX bytes)")
    eps = data.get("epsilon")
    if eps is not None and (not _is_number(eps) or eps < 0):
        raise _fail("epsilon", f"is {eps!r}; it must be a non-negative number or absent")
    meta = data.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise _fail("metadata", "must be an object")
    _validate_segments(data["segments"])


def _validate_segments(segments: Any) -> None:
    if not isinstance(segments, list | tuple) or not segments:
        raise _fail("segments", "must be a non-empty list of {noise_multiplier, sample_rate, steps}")
    if len(segments) > MAX_SEGMENTS:
        raise _fail("segments", f"has {len(segments)} entries, more than {MAX_SEGMENTS}")
    for i, seg in enumerate(segments):
        if isinstance(seg, Segment):
            seg = seg.to_dict()
        where = f"segments[{i}]"
        if not isinstance(seg, Mapping) or set(seg) != set(_SEGMENT_KEYS):
            raise _fail(where, f"must have exactly the keys {', '.join(_SEGMENT_KEYS)}")
        sigma, rate, steps = seg["noise_multiplier"], seg["sample_rate"], seg["steps"]
        if not _is_number(sigma) or sigma < 0:
            raise _fail(f"{where}.noise_multiplier", f"is {sigma!r}; it must be a number >= 0")
        if not _is_number(rate) or not 0.0 < rate <= 1.0:
            raise _fail(f"{where}.sample_rate", f"is {rate!r}; it must be in (0, 1]")
        if not _is_int(steps) or int(steps) < 1:
            raise _fail(f"{where}.steps", f"is {steps!r}; it must be a positive integer")
