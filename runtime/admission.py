"""What a policy profile demands of a sealed artifact before it may be served.

Checked on every load, after the signature and before any key is unwrapped: the artifact must have
been compiled for this profile, carry a DP certificate whose recomputed epsilon is within the limit,
and commit a watermark; after decryption the watermark is decoded from the weights and matched to
that commitment. ``details`` collects what was found, for the load's audit record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sealinfer.runtime.errors import CertificateError, ConfigurationError, WatermarkError

if TYPE_CHECKING:
    from sealinfer.runtime.keys.keyring import Keyring
    from sealinfer.runtime.loader import DecryptedModel
    from sealinfer.runtime.policy.profile import PolicyProfile


def check_manifest(profile: PolicyProfile, manifest: dict[str, Any], details: dict[str, Any]) -> None:
    """The artifact must have been compiled for this profile and meet its DP and watermark rules."""
    compiled_for = manifest.get("policy_profile")
    if compiled_for != profile.id:
        raise ConfigurationError(
            f"This artifact was compiled for policy profile {compiled_for!r}, not {profile.id!r}.",
            hint=f"Re-seal it with `sealinfer seal --policy {profile.id}` so its checks are made at compile time.",
        )
    privacy = manifest.get("privacy")
    details["dp_epsilon"] = privacy.get("epsilon") if privacy else None
    limit = profile.privacy.max_epsilon
    if profile.privacy.require_certificate and not privacy:
        raise CertificateError(
            f"Profile {profile.id!r} requires a DP certificate and this artifact has none.",
            hint="Train with sealinfer.privacy.train_dp and seal with --dp-cert.",
        )
    if privacy and limit is not None and float(privacy["epsilon"]) > limit:
        raise CertificateError(
            f"The model's DP epsilon {privacy['epsilon']:.3g} exceeds profile {profile.id!r}'s limit {limit:g}.",
            hint="Retrain with more noise or fewer steps (sealinfer.privacy.train_dp, lower target_epsilon).",
        )
    mark = manifest.get("watermark")
    details["watermark"] = "committed" if mark else "absent"
    if profile.watermark.required and not mark:
        raise WatermarkError(
            f"Profile {profile.id!r} requires a watermarked model and this artifact has none.",
            hint="Re-seal with --watermark-payload.",
        )


def verify_watermark(
    profile: PolicyProfile | None,
    keyring: Keyring,
    manifest: dict[str, Any],
    decrypted: DecryptedModel,
    details: dict[str, Any],
) -> None:
    mark = manifest.get("watermark")
    if not mark or profile is None or not profile.watermark.verify_on_load:
        return
    from sealinfer import watermark

    _, key = keyring.secret("watermark", mark["key_id"])
    detection = watermark.verify_commitment(decrypted.to_model_proto(), key, mark)
    details["watermark"] = "verified"
    details["watermark_p_value"] = float(detection.p_value)
