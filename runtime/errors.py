"""Every failure a user can cause, as a typed exception under one root.

This module imports nothing from sealinfer so that the leaf libraries (``watermark``, ``privacy``)
can raise these errors without depending on the runtime. Each exception carries a message that says
what went wrong *and* what to do about it; the CLI prints ``str(error)`` and exits with ``exit_code``.

Like pyca/cryptography's ``InvalidTag`` / ``InvalidSignature``, security checks raise rather than
return booleans, so a forgotten ``if`` cannot turn a failed check into a pass.
"""

from __future__ import annotations


class SealinferError(Exception):
    """Root of every error sealinfer raises on purpose.

    ``code`` is a stable, machine-readable identifier (used in audit records and telemetry);
    ``hint`` is the "what to do" half of the message.
    """

    code: str = "sealinfer_error"
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}".strip() if hint else message)


# --- usage and configuration -------------------------------------------------------------------


class ConfigurationError(SealinferError):
    """A setting, file or argument the user supplied is unusable."""

    code = "configuration"
    exit_code = 2


class PolicyError(ConfigurationError):
    """A policy profile or Cedar policy is invalid (names file, line and field)."""

    code = "policy_invalid"


class DeviceDescriptorError(ConfigurationError):
    """A device descriptor file is invalid."""

    code = "device_descriptor_invalid"


class RuntimeClosedError(SealinferError):
    """The ``Runtime`` was closed: its audit log and queues are gone, so nothing more may load or run."""

    code = "runtime_closed"

    def __init__(self, message: str = "The Runtime is closed (its audit log and queues with it), so nothing "
                 "more can be loaded, authorized or audited through it.", *,
                 hint: str | None = "Create a new Runtime and load the model again.") -> None:
        super().__init__(message, hint=hint)


# --- models ------------------------------------------------------------------------------------


class ModelError(SealinferError):
    """The model itself is unusable (not ONNX, fails the checker, unsupported content)."""

    code = "model_invalid"


class NotOnnxError(ModelError):
    code = "not_onnx"


class OnnxCheckError(ModelError):
    code = "onnx_check_failed"


# --- sealed artifacts --------------------------------------------------------------------------


class ArtifactError(SealinferError):
    """A ``.sealed`` file is malformed, tampered with or cannot be opened."""

    code = "artifact_invalid"


class NotAnArtifactError(ArtifactError):
    code = "not_an_artifact"


class UnsupportedVersionError(ArtifactError):
    code = "unsupported_version"


class HeaderError(ArtifactError):
    """The header is empty, truncated, oversized, non-canonical or unparsable."""

    code = "header_invalid"


class TruncatedArtifactError(ArtifactError):
    code = "artifact_truncated"


class IntegrityError(ArtifactError):
    """Authenticated decryption or a digest check failed: the bytes were altered."""

    code = "integrity_failed"


class InvalidSignatureError(ArtifactError):
    code = "signature_invalid"


class UntrustedSignerError(ArtifactError):
    code = "signer_untrusted"


# --- keys --------------------------------------------------------------------------------------


class KeyError_(SealinferError):
    """Base for key management failures (named with a trailing underscore to not shadow KeyError)."""

    code = "key_error"


class KeyNotFoundError(KeyError_):
    code = "key_not_found"


class KeyRevokedError(KeyError_):
    code = "key_revoked"


class WrongPassphraseError(KeyError_):
    code = "wrong_passphrase"


class KeyringError(KeyError_):
    """The keyring folder is missing, corrupt, or has unsafe permissions."""

    code = "keyring_invalid"


class UnwrapError(KeyError_):
    """A wrapped data key could not be unwrapped (wrong KEK or altered bytes)."""

    code = "unwrap_failed"


class HsmError(KeyError_):
    """The PKCS#11 module, token, PIN or mechanism is unavailable or refused the operation."""

    code = "hsm_error"


# --- requests and authorization ----------------------------------------------------------------


class AuthorizationError(SealinferError):
    """Policy denied the action. Always audited."""

    code = "denied"
    exit_code = 3


class UnknownPrincipalError(AuthorizationError):
    code = "unknown_principal"


class InputValidationError(SealinferError):
    """An inference request does not match the model's signature or the policy's input limits."""

    code = "input_invalid"


class RateLimitError(SealinferError):
    code = "rate_limited"


class QuotaExceededError(RateLimitError):
    code = "quota_exceeded"


class DeadlineInfeasibleError(SealinferError):
    code = "deadline_infeasible"


class PlacementError(SealinferError):
    """No device satisfies the policy's hard constraints."""

    code = "no_compliant_device"


# --- privacy and watermarks --------------------------------------------------------------------


class PrivacyError(SealinferError):
    code = "privacy_error"


class CertificateError(PrivacyError):
    """A DP certificate is malformed or fails its check."""

    code = "dp_certificate_failed"


class BudgetExceededError(PrivacyError):
    code = "dp_budget_exceeded"


class WatermarkError(SealinferError):
    code = "watermark_error"


class WatermarkCapacityError(WatermarkError):
    code = "watermark_capacity"


class FidelityError(WatermarkError):
    code = "watermark_fidelity"


# --- stores ------------------------------------------------------------------------------------


class StoreError(SealinferError):
    """An audit or telemetry database is missing, of the wrong kind, or unwritable."""

    code = "store_error"


class AuditIntegrityError(StoreError):
    """The audit chain, a checkpoint signature or a Merkle root does not verify."""

    code = "audit_integrity_failed"


__all__ = [name for name, obj in globals().items() if isinstance(obj, type) and issubclass(obj, Exception)]
