"""``Runtime``: the façade. Opens sealed models under a keyring (and HSMs) and a policy profile.

    rt = Runtime(keyring="~/.sealinfer/keyring", policy="hipaa", audit_db="audit.db", telemetry_db="telemetry.db")
    clinician = Caller("dr.grey", "clinician", "treatment")
    session = rt.load("sepsis.sealed", caller=Caller("svc-ward", "service", "treatment"))
    probs = session.run({"features": x}, caller=clinician)["probabilities"]

Loading checks, in order, failing closed at the first problem: structure of the file, the signer
(trusted by the keyring and the profile, not revoked), the manifest against the profile (compiled
for it, DP epsilon within its limit, watermark committed), the caller's right to load the model
(Cedar), the recipients (a KEK we hold, not revoked), the data key against the signed commitment,
every payload segment, the watermark (decoded from the decrypted weights); then the plaintext goes to
onnxruntime from memory. Under a policy every outcome, allowed or refused, is audited.

Without a policy (``policy=None``) the runtime only verifies and decrypts: for tooling and tests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from sealinfer.runtime.admission import check_manifest, verify_watermark
from sealinfer.runtime.artifact import SealedArtifact
from sealinfer.runtime.caller import Caller
from sealinfer.runtime.errors import (
    ConfigurationError,
    RuntimeClosedError,
    SealinferError,
    UntrustedSignerError,
)
from sealinfer.runtime.keys.base import KeyProvider
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.loader import DecryptedModel, create_inference_session, open_decrypted
from sealinfer.runtime.policy.graphguards import GraphGuards, compile_guards
from sealinfer.runtime.session import SealedSession

if TYPE_CHECKING:
    from sealinfer.runtime.pipeline import SecurityContext
    from sealinfer.runtime.policy.profile import PolicyProfile

log = logging.getLogger("sealinfer.runtime")


class Runtime:
    """Loads sealed models under a policy. Hold one per process; it is thread-safe."""

    def __init__(
        self,
        keyring: Keyring | str | os.PathLike[str],
        policy: PolicyProfile | str | os.PathLike[str] | None = None,
        *,
        audit_db: str | os.PathLike[str] | None = None,
        telemetry_db: str | os.PathLike[str] | None = None,
        devices: str | os.PathLike[str] | Sequence[Any] | None = None,
        providers: Sequence[KeyProvider] = (),
        passphrase: str | None = None,
        metrics: Any = None,
    ) -> None:
        """``metrics``: a ``sealinfer.runtime.telemetry.metrics.RuntimeMetrics`` to publish every request's
        telemetry as Prometheus metrics too (serve it with ``start_http_server``); needs ``telemetry_db``."""
        from sealinfer import runtime as _pkg

        if _pkg.ORT_TELEMETRY_PREIMPORTED:
            ort.disable_telemetry_events()
            log.warning(
                "onnxruntime was imported before sealinfer, so its usage telemetry could not be fully disabled; "
                "set ORT_DISABLE_TELEMETRY=1 in the service environment."
            )
        self.keyring = keyring if isinstance(keyring, Keyring) else Keyring.open(Path(keyring).expanduser(), passphrase)
        self._hsm_providers: list[KeyProvider] = list(providers)  # beyond the keyring itself
        self._lock = threading.Lock()
        self._ctx: SecurityContext | None = None
        self.profile: PolicyProfile | None = None
        self._placer: Any = None
        self._placement_policy: Any = None
        self._dispatch: Any = None
        self._closed = False
        if policy is not None:
            self._ctx = self._security_context(policy, audit_db, telemetry_db, metrics)
            self.profile = self._ctx.profile
            self._init_scheduler(devices)
        elif audit_db is not None or telemetry_db is not None:
            raise ConfigurationError(
                "audit_db and telemetry_db need a policy profile.", hint="Pass policy='hipaa' (or 'dev')."
            )

    # --- construction ------------------------------------------------------------------------

    def _security_context(self, policy: Any, audit_db: Any, telemetry_db: Any, metrics: Any) -> SecurityContext:
        from sealinfer.runtime.audit.log import AuditLog
        from sealinfer.runtime.pipeline import SecurityContext
        from sealinfer.runtime.policy.authz import Authorizer
        from sealinfer.runtime.policy.profile import PolicyProfile, load_profile
        from sealinfer.runtime.telemetry.store import TelemetryStore

        profile = policy if isinstance(policy, PolicyProfile) else load_profile(policy)
        if audit_db is None:
            raise ConfigurationError(
                f"Policy profile {profile.id!r} needs an audit log.",
                hint="Pass audit_db='audit.db' (CLI: --audit-db).",
            )
        authorizer = Authorizer.from_profile(profile)
        audit = AuditLog(
            audit_db,
            signer=self.keyring.signer(),
            durability=profile.audit.durability,
            checkpoint_every=profile.audit.checkpoint_every,
            checkpoint_seconds=profile.audit.checkpoint_seconds,
        )
        if metrics is not None and telemetry_db is None:
            raise ConfigurationError(
                "Prometheus metrics are fed from telemetry.", hint="Pass telemetry_db as well as metrics."
            )
        telemetry = TelemetryStore(telemetry_db, metrics=metrics) if telemetry_db is not None else None
        _, hmac_key = self.keyring.secret("audit-hmac")
        return SecurityContext(profile, authorizer, audit, hmac_key, telemetry)

    def _init_scheduler(self, devices: Any) -> None:
        """Devices are described, not guessed: discovery merged with the operator's descriptor file.

        Discovered devices are never attested, so a profile that keeps PHI on attested hardware
        refuses PHI models until an operator declares which device is (``devices=FILE``).
        """
        from sealinfer.runtime.scheduler import PlacementPolicy, Placer, discover_devices, load_devices

        assert self.profile is not None
        discovered = discover_devices()
        if devices is None:
            found = discovered
        elif isinstance(devices, str | os.PathLike):
            found = discover_devices(extra=load_devices(devices, base={d.id: d for d in discovered}))
        else:
            found = list(devices)
        self.devices = found
        self._placer = Placer(found)
        self._placement_policy = PlacementPolicy.from_profile_dict(self.profile.raw)

    def place(self, manifest: dict[str, Any], *, batch: int = 1, priority: str = "routine") -> Any:
        """Where this profile would run the model of ``manifest`` (raises ``PlacementError`` if nowhere)."""
        from sealinfer.runtime.scheduler import ModelFeatures
        from sealinfer.runtime.scheduler.features import MissingFeaturesError

        cost = manifest.get("cost")
        if not cost:
            raise MissingFeaturesError(
                "The artifact's manifest has no cost features, so it cannot be placed.",
                hint="Re-seal it with this version of sealinfer (features are computed at compile time).",
            )
        features = ModelFeatures.from_dict(cost)
        return self._placer.place(
            features, self._placement_policy, phi=bool(manifest.get("phi", True)), batch=batch, priority=priority
        )

    @property
    def audit_log(self) -> Any:
        return self._ctx.audit if self._ctx else None

    @property
    def telemetry(self) -> Any:
        return self._ctx.telemetry if self._ctx else None

    # --- loading -----------------------------------------------------------------------------

    def open_artifact(self, path: str | os.PathLike[str]) -> tuple[SealedArtifact, bytes]:
        """Structure, signature and keys: everything before decryption. Returns the artifact and its DEK."""
        artifact = self._verified(path)
        return artifact, artifact.unwrap_for(self.keyring, self._hsm_providers)

    def _verified(self, path: str | os.PathLike[str]) -> SealedArtifact:
        artifact = SealedArtifact.open_verified(path, self.keyring)
        if self.profile is not None:
            allowed = self.profile.signing.trusted_signers
            if allowed and artifact.signature_key_id not in allowed:
                raise UntrustedSignerError(
                    f"Signer {artifact.signature_key_id!r} is trusted by the keyring but not by profile "
                    f"{self.profile.id!r} (trusted_signers: {', '.join(allowed)}).",
                    hint="Add the signer to the profile's signing.trusted_signers if it should be.",
                )
        return artifact

    def load(
        self,
        path: str | os.PathLike[str],
        *,
        caller: Caller | None = None,
        session_options: ort.SessionOptions | None = None,
        providers: Sequence[Any] | None = None,
        progress: bool = False,
        prepack: bool = True,
    ) -> SealedSession:
        """Verify, authorize, decrypt in memory and open ``path``; see the module docstring for the checks.

        The weights exist once, in the decrypted buffer, which onnxruntime reads in place. With
        ``prepack`` (onnxruntime's default, and what makes outputs bit-identical to a plain session)
        onnxruntime also keeps a GEMM-friendly copy of MatMul/Gemm weights: faster batched inference
        for about twice the memory. ``prepack=False`` keeps one copy only, matching a plain session
        run with ``session.disable_prepacking``; choose it when memory, not speed, is the limit.
        """
        if self._closed:
            raise RuntimeClosedError()
        if self._ctx is None:
            artifact, data_key = self.open_artifact(path)
            decrypted = open_decrypted(artifact, data_key, progress=progress)
            return self._session(artifact, decrypted, session_options, providers, prepack=prepack)
        if caller is None:
            raise ConfigurationError(
                "Loading under a policy needs a caller.", hint="Pass caller=Caller(user, role, purpose)."
            )
        return self._load_audited(Path(path), caller, session_options, providers, progress, prepack)

    def _session(
        self,
        artifact: SealedArtifact,
        decrypted: DecryptedModel,
        session_options: ort.SessionOptions | Callable[[], ort.SessionOptions] | None,
        providers: Sequence[Any] | None,
        pipeline_factory: Any = None,
        device: str = "cpu",
        submitter: Any = None,
        prepack: bool = True,
    ) -> SealedSession:
        try:
            session = create_inference_session(
                decrypted, providers=providers, session_options=session_options, prepack=prepack
            )
        except BaseException:
            decrypted.close()
            raise
        guard = pipeline_factory() if pipeline_factory else None
        return SealedSession(session, decrypted, artifact.manifest, guard=guard, device=device, submitter=submitter)

    def _load_audited(
        self,
        path: Path,
        caller: Caller,
        session_options: ort.SessionOptions | Callable[[], ort.SessionOptions] | None,
        providers: Sequence[Any] | None,
        progress: bool,
        prepack: bool,
    ) -> SealedSession:
        from sealinfer.runtime.pipeline import RequestPipeline
        from sealinfer.runtime.policy.authz import AccessDeniedError, ModelResource

        ctx = self._ctx
        assert ctx is not None and self.profile is not None
        details: dict[str, Any] = {"artifact": path.name}
        manifest: dict[str, Any] = {}
        decision = None
        try:
            artifact = self._verified(path)
            manifest = artifact.manifest
            details.update(signature="valid", signer_key_id=artifact.signature_key_id)
            check_manifest(self.profile, manifest, details)
            model = manifest["model"]
            resource = ModelResource(
                str(model["name"]), str(model["version"]), str(model["sha256"]), bool(manifest["phi"])
            )
            decision = ctx.authorizer.authorize(caller, "load", resource)
            if not decision.allowed:
                raise AccessDeniedError(
                    f"{caller.role} {caller.user!r} may not load {resource.name!r} for {caller.purpose}: "
                    + "; ".join(decision.reasons),
                    hint="Load it as a role the policy allows (e.g. a service account for treatment).",
                    decision=decision,
                )
            placement = self.place(manifest)
            details["placement"] = placement.explanation
            device = details["device"] = placement.device.id
            if session_options is None and providers is None:
                from sealinfer.runtime.scheduler import session_options_for

                _, chosen = session_options_for(placement.device)  # raises at once if the device is absent
                providers = chosen or None
                session_options = partial(_options_only, placement.device)
            data_key = artifact.unwrap_for(self.keyring, self._hsm_providers)
            decrypted = open_decrypted(artifact, data_key, progress=progress)
            try:
                verify_watermark(self.profile, self.keyring, manifest, decrypted, details)
                graph_guards = _compile_guards(self.profile, manifest, decrypted, details)
            except BaseException:
                decrypted.close()
                raise
            session = self._session(
                artifact,
                decrypted,
                session_options,
                providers,
                pipeline_factory=lambda: RequestPipeline(ctx, resource, manifest, device, graph_guards),
                device=device,
                submitter=lambda s, inputs, who, priority, deadline_s: self._submit(
                    s, placement, resource, inputs, who, priority, deadline_s
                ),
                prepack=prepack,
            )
        except SealinferError as exc:
            self._audit_load(caller, manifest, decision, details, exc, path)
            raise
        receipt = self._audit_load(caller, manifest, decision, details, None, path)
        details["audit_seq"] = receipt.seq
        if ctx.telemetry is not None:
            privacy = manifest.get("privacy") or {}
            ctx.telemetry.record_model(
                resource.digest,
                resource.name,
                resource.version,
                signer_key_id=artifact.signature_key_id,
                signature_ok=True,
                watermark_status=details.get("watermark"),
                dp_epsilon=privacy.get("epsilon"),
                param_bytes=int(model.get("param_bytes", 0)),
            )
        return session

    def _audit_load(
        self,
        caller: Caller,
        manifest: dict[str, Any],
        decision: Any,
        details: dict[str, Any],
        error: SealinferError | None,
        path: Path,
    ) -> Any:
        ctx = self._ctx
        assert ctx is not None
        model = manifest.get("model", {})
        reasons = list(decision.reasons) if decision is not None else []
        if error is not None:
            reasons.append(f"{error.code}: {error}")
        event = ctx.audit_event(
            caller,
            "load",
            model_id=str(model.get("name", path.name)),
            model_version=str(model["version"]) if "version" in model else None,
            model_digest=model.get("sha256"),
            decision="allow" if error is None else "deny",
            reasons=reasons,
            outcome="ok" if error is None else ("denied" if error.code in ("denied", "unknown_principal") else "error"),
            error_code=None if error is None else error.code,
            device=details.get("device") if error is None else None,
            details=details,
        )
        receipt = ctx.audit.append(event)
        if error is not None:
            error.audit_seq = receipt.seq  # type: ignore[attr-defined]
        return receipt

    # --- queued requests ---------------------------------------------------------------------

    def _dispatcher(self) -> Any:
        with self._lock:
            if self._dispatch is None:
                from sealinfer.runtime.scheduler import Dispatcher

                self._dispatch = Dispatcher(self.devices, self._placement_policy)
            return self._dispatch

    def _submit(
        self,
        session: SealedSession,
        placement: Any,
        resource: Any,
        inputs: Any,
        caller: Caller,
        priority: str,
        deadline_s: float | None,
    ) -> Any:
        """Queue a request by deadline on its device's pool (EDF), after tenant quota and feasibility."""
        from sealinfer.runtime.errors import DeadlineInfeasibleError, QuotaExceededError, UnknownPrincipalError

        if self._closed:
            raise RuntimeClosedError()
        if not isinstance(caller, Caller):
            raise UnknownPrincipalError("Queued requests need a caller: Caller(user, role, purpose).",
                                        hint="Pass caller=Caller(...) to submit().")

        def call() -> dict[str, Any]:
            started = time.perf_counter()
            out = session.run(inputs, caller=caller, priority=priority)
            self._placer.observe(placement, time.perf_counter() - started)  # calibrate the roofline
            return out

        try:
            return self._dispatcher().submit(
                call,
                priority=priority,
                tenant=caller.tenant or "default",
                deadline_s=deadline_s,
                predicted_s=placement.predicted_latency_s,
                device=placement.device.id,
            )
        except (QuotaExceededError, DeadlineInfeasibleError) as exc:
            ctx = self._ctx
            assert ctx is not None
            receipt = ctx.audit.append(
                ctx.audit_event(
                    caller,
                    "infer",
                    model_id=resource.name,
                    model_version=resource.version,
                    model_digest=resource.digest,
                    decision="deny",
                    reasons=[f"{exc.code}: {exc}"],
                    outcome="denied",
                    error_code=exc.code,
                    device=placement.device.id,
                    details={"priority": priority},
                )
            )
            exc.audit_seq = receipt.seq  # type: ignore[attr-defined]
            raise

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the queues, flush telemetry, write a final signed checkpoint and close the stores.

        Sessions loaded from this runtime then refuse requests (``RuntimeClosedError``).
        """
        self._closed = True
        if self._ctx is not None:
            self._ctx.closed = True
        if self._dispatch is not None:
            self._dispatch.close()
        if self._ctx is not None:
            if self._ctx.telemetry is not None:
                self._ctx.telemetry.close()
            self._ctx.audit.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compile_guards(
    profile: PolicyProfile, manifest: dict[str, Any], decrypted: DecryptedModel, details: dict[str, Any]
) -> GraphGuards | None:
    """Compile the profile's output rounding and NaN/Inf screen into the graph the session will run."""
    sig = manifest.get("signature_io") or {}
    outputs = [str(o["name"]) for o in sig.get("outputs", [])] or [o.name for o in decrypted.graph.graph.output]
    inputs = {str(i["name"]): str(i["dtype"]) for i in sig.get("inputs", [])}
    compiled = compile_guards(decrypted.graph, outputs, inputs, profile.outputs, profile.inputs)
    if compiled is None:
        return None
    graph, guards = compiled
    decrypted.replace_graph(graph)
    details["guards"] = guards.description
    return guards


def _options_only(device: Any) -> ort.SessionOptions:
    """Fresh session options for ``device`` (the loader may need a second set after a failed attempt)."""
    from sealinfer.runtime.scheduler import session_options_for

    return session_options_for(device)[0]
