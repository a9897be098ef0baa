"""The compiler: validate an ONNX model, check its DP claim, watermark it, encrypt it, sign it.

``seal_model`` is the one entry point. It streams: the payload is encrypted segment by segment
straight to the output file, and for models with external data the weight files are read in chunks,
so sealing needs memory for the graph, not for the weights. The output appears atomically (temp
file + rename) and only after every step succeeded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from sealinfer.runtime.artifact import PayloadInfo, SealedArtifact, encode_header, manifest_digest, sign_manifest
from sealinfer.runtime.atomic import atomic_output
from sealinfer.runtime.errors import (
    CertificateError,
    ConfigurationError,
    KeyNotFoundError,
    ModelError,
    NotOnnxError,
    OnnxCheckError,
)
from sealinfer.runtime.keys.base import DATA_KEY_BYTES, KeyProvider, WrappedKey
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.layout import WeightsPlan, plan_weights
from sealinfer.runtime.progress import progress_bar
from sealinfer.runtime.stream import (
    DEFAULT_SEGMENT_SIZE,
    NONCE_PREFIX_BYTES,
    SALT_BYTES,
    StreamEncryptor,
    StreamParams,
    key_commitment,
)
from sealinfer.runtime.tensorspec import model_signature

MANIFEST_FORMAT = "sealinfer.manifest/1"


@dataclass
class SealOptions:
    """What to seal and for whom. Defaults seal for the keyring's active KEK, unwatermarked."""

    name: str | None = None
    version: str = "1"
    recipients: Sequence[str] = ()
    phi: bool = True
    policy_profile: str | None = None
    watermark_payload: bytes | None = None
    watermark_max_relative_change: float = 1e-3
    #: Representative inputs for the watermark fidelity check (kept in memory, never written).
    watermark_probe_inputs: dict[str, Any] | None = None
    dp_certificate: dict[str, Any] | None = None
    max_epsilon: float | None = None
    segment_size: int = DEFAULT_SEGMENT_SIZE
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _tool_versions() -> dict[str, str]:
    out = {}
    for dist in ("sealinfer", "onnx", "onnxruntime", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _load_model(path: Path) -> onnx.ModelProto:
    """Load the graph (not external weights) and run the ONNX checker, with typed errors."""
    if not path.is_file():
        raise ConfigurationError(f"Model file {path} does not exist.", hint="Check the path.")
    if path.stat().st_size == 0:
        raise NotOnnxError(f"{path} is empty.", hint="Export the model to ONNX first.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise NotOnnxError(
            f"{path} is not an ONNX model ({exc.__class__.__name__}).",
            hint="Export the model with torch.onnx.export or skl2onnx and seal the .onnx file.",
        ) from None
    if not model.graph.node and not model.graph.output:
        raise NotOnnxError(f"{path} does not contain an ONNX graph.", hint="Check that it is an .onnx file.")
    try:
        # By path, so models with external data past 2 GB are checked without loading their weights.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise OnnxCheckError(
            f"{path} fails the ONNX checker: {first}",
            hint="Fix the exporter's output (onnx.checker.check_model shows the full report).",
        ) from None
    return model


def _embed_watermark(model: onnx.ModelProto, base_dir: Path, keyring: Keyring, opts: SealOptions) -> dict[str, Any]:
    from sealinfer import watermark

    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(base_dir))
    key_id, key = keyring.secret("watermark")
    assert opts.watermark_payload is not None
    marked, receipt = watermark.embed(
        model,
        key,
        opts.watermark_payload,
        max_relative_change=opts.watermark_max_relative_change,
        probe_inputs=opts.watermark_probe_inputs,
    )
    model.CopyFrom(marked)
    return {"key_id": key_id, **receipt.commitment()}


def _check_privacy(cert: dict[str, Any], source_sha256: str, opts: SealOptions) -> dict[str, Any]:
    from sealinfer import privacy

    if opts.max_epsilon is None:
        raise ConfigurationError(
            "A DP certificate was given without an epsilon limit.",
            hint="Pass max_epsilon (CLI: --max-epsilon) or seal for a policy profile that sets privacy.max_epsilon.",
        )
    certificate = privacy.Certificate.from_json(cert)
    if certificate.model_sha256 != source_sha256:
        raise CertificateError(
            "The DP certificate belongs to a different model "
            f"(certificate model_sha256 {certificate.model_sha256[:16]}…, this file {source_sha256[:16]}…).",
            hint="Seal the exact ONNX file that train_dp produced together with its certificate.",
        )
    verdict = privacy.check_certificate(certificate, opts.max_epsilon)
    verdict.raise_for_failure()
    return {
        "accountant": certificate.accountant,
        "epsilon": verdict.epsilon,
        "delta": certificate.delta,
        "max_epsilon": opts.max_epsilon,
        "certificate": certificate.to_dict(),
    }


def _cost_features(model: onnx.ModelProto) -> dict[str, Any] | None:
    try:
        from sealinfer.runtime.scheduler.features import extract_features
    except ImportError:
        return None
    return extract_features(model).to_dict()


def _recipients(
    keyring: Keyring, providers: Sequence[KeyProvider], kek_ids: Sequence[str], data_key: bytes
) -> list[WrappedKey]:
    all_providers: list[KeyProvider] = [keyring, *providers]
    wanted = list(kek_ids) or [keyring.default_kek_id()]
    out = []
    for kek_id in dict.fromkeys(wanted):
        provider = next((p for p in all_providers if p.has_kek(kek_id)), None)
        if provider is None:
            raise KeyNotFoundError(
                f"Recipient KEK {kek_id!r} is not in the keyring or any configured HSM.",
                hint="List KEKs with `sealinfer keys list`; HSM KEKs look like pkcs11:LABEL.",
            )
        out.append(provider.wrap_data_key(kek_id, data_key))
    return out


def seal_model(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    keyring: Keyring,
    providers: Sequence[KeyProvider] = (),
    options: SealOptions | None = None,
) -> SealedArtifact:
    """Seal ``model_path`` (an .onnx file, external data allowed) into ``output`` (.sealed).

    Returns the opened artifact. Raises a ``SealinferError`` subclass for any bad input; nothing is
    left at ``output`` on failure.
    """
    opts = options or SealOptions()
    src = Path(model_path)
    out = Path(output)
    model = _load_model(src)
    source_sha256 = _file_sha256(src)
    base_dir = src.parent

    privacy_block = None
    if opts.dp_certificate is not None:
        privacy_block = _check_privacy(opts.dp_certificate, source_sha256, opts)
    watermark_block = None
    if opts.watermark_payload is not None:
        watermark_block = _embed_watermark(model, base_dir, keyring, opts)
    inputs, outputs = model_signature(model)
    cost = _cost_features(model)

    try:
        plan = plan_weights(model, base_dir)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(f"Cannot read the weights of {src}: {exc}.", hint="Check its external data files.") from None
    del model  # the graph now lives in plan.graph_bytes; weights are referenced, not copied

    content_sha256 = _payload_sha256(plan)
    data_key = secrets.token_bytes(DATA_KEY_BYTES)
    salt = secrets.token_bytes(SALT_BYTES)
    nonce_prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    if opts.segment_size < 1024 or opts.segment_size > (64 << 20):
        raise ConfigurationError("segment_size must be between 1 KiB and 64 MiB.", hint="Use the default (1 MiB).")
    payload = PayloadInfo(
        segment_size=opts.segment_size,
        segment_count=max(1, -(-plan.plaintext_size // opts.segment_size)),
        plaintext_size=plan.plaintext_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        key_commitment=key_commitment(data_key, salt),
        sections=plan.sections(),
    )
    signer = keyring.signer()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "model": {
            "name": opts.name or src.stem,
            "version": str(opts.version),
            "sha256": content_sha256,
            "source_sha256": source_sha256,
            "param_bytes": plan.weights_length,
        },
        "signature_io": {"inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs]},
        "cost": cost,
        "privacy": privacy_block,
        "watermark": watermark_block,
        "policy_profile": opts.policy_profile,
        "phi": bool(opts.phi),
        "signer_key_id": signer.key_id,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tools": _tool_versions(),
        "payload": payload.to_manifest(),
    }
    if opts.extra:
        manifest["extra"] = opts.extra
    recipients = _recipients(keyring, providers, opts.recipients, data_key)
    header = encode_header(manifest, signer.key_id, sign_manifest(manifest, signer), recipients, data_key)
    params = StreamParams(opts.segment_size, salt, nonce_prefix, manifest_digest(manifest))
    _write(out, header, plan, data_key, params, payload, progress=opts.progress, label=f"sealing {src.name}")
    return SealedArtifact.open(out)


def _payload_sha256(plan: WeightsPlan) -> str:
    h = hashlib.sha256()
    for chunk in plan.iter_chunks():
        h.update(chunk)
    return h.hexdigest()


def _write(
    out: Path,
    header: bytes,
    plan: WeightsPlan,
    data_key: bytes,
    params: StreamParams,
    payload: PayloadInfo,
    *,
    progress: bool,
    label: str,
) -> None:
    seg = params.segment_size
    enc = StreamEncryptor(data_key, params)
    buf = bytearray(seg)
    fill = 0
    index = 0
    try:
        with atomic_output(out) as fh, progress_bar(plan.plaintext_size, label, enabled=progress) as bar:
            fh.write(header)
            for chunk in plan.iter_chunks():
                view = memoryview(chunk)
                while len(view):
                    take = min(seg - fill, len(view))
                    buf[fill : fill + take] = view[:take]
                    fill += take
                    view = view[take:]
                    if fill == seg and index < payload.segment_count - 1:
                        fh.write(enc.encrypt_segment(buf, last=False))
                        index += 1
                        fill = 0
                        bar.update(seg)
            fh.write(enc.encrypt_segment(memoryview(buf)[:fill], last=True))
            bar.update(fill)
            index += 1
            if index != payload.segment_count:
                raise AssertionError("segment count mismatch")
    finally:
        buf[:] = bytes(len(buf))


def seal_options_for_policy(options: SealOptions, policy: Any) -> SealOptions:
    """Fill ``options`` from a policy profile (name, path or ``PolicyProfile``) and check its demands.

    The profile's ε limit applies unless a stricter one was given; a profile that requires a DP
    certificate or a watermark refuses to seal without one, before any work is done.
    """
    from dataclasses import replace

    from sealinfer.runtime.policy.profile import PolicyProfile, load_profile

    profile = policy if isinstance(policy, PolicyProfile) else load_profile(policy)
    limit = profile.privacy.max_epsilon
    max_eps = options.max_epsilon
    if limit is not None:
        max_eps = limit if max_eps is None else min(max_eps, limit)
    if profile.privacy.require_certificate and options.dp_certificate is None:
        raise CertificateError(
            f"Policy profile {profile.id!r} requires a differential-privacy certificate.",
            hint="Train with sealinfer.privacy.train_dp and pass its certificate (--dp-cert CERT.json).",
        )
    if profile.watermark.required and options.watermark_payload is None:
        raise ConfigurationError(
            f"Policy profile {profile.id!r} requires a watermark.",
            hint="Pass a payload to embed (--watermark-payload 'hospital/site').",
        )
    return replace(options, policy_profile=profile.id, max_epsilon=max_eps)
