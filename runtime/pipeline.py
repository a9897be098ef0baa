"""The per-request security pipeline of a session loaded under a policy.

    authorize (cached Cedar decision) -> validate inputs -> admit (rate limit) -> inference
    -> transform outputs (guards) -> record (audit, durable before returning; telemetry, buffered)

Every outcome, including every refusal, leaves exactly one audit record and one telemetry row; the
caller gets its result only once its audit record is durable. Inputs and outputs appear in the
record only as HMAC-SHA256 digests under the keyring's audit key, never as data.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac

from sealinfer.runtime.audit.record import AuditEvent
from sealinfer.runtime.audit.template import EventTemplate, HexDigest, OutcomeTemplate
from sealinfer.runtime.errors import (
    ConfigurationError,
    InputValidationError,
    ModelError,
    RuntimeClosedError,
    SealinferError,
    UnknownPrincipalError,
)
from sealinfer.runtime.policy.authz import AccessDeniedError, Authorizer, Decision, ModelResource
from sealinfer.runtime.policy.graphguards import GraphGuards
from sealinfer.runtime.policy.guards import OutputGuard
from sealinfer.runtime.policy.validation import InputValidator
from sealinfer.runtime.telemetry.record import SessionFields, features_json
from sealinfer.runtime.tensorspec import TensorSpec

if TYPE_CHECKING:
    from sealinfer.runtime.audit.log import AuditLog
    from sealinfer.runtime.caller import Caller
    from sealinfer.runtime.policy.profile import PolicyProfile
    from sealinfer.runtime.session import SealedSession
    from sealinfer.runtime.telemetry.store import TelemetryStore

# Telemetry request ids: unique per process without a random-number syscall on every request.
_PROCESS_ID = uuid.uuid4().hex[:12]
_REQUESTS = itertools.count(1)


class TensorDigester:
    """HMAC-SHA256 over names, dtypes, shapes and bytes: links records to data without revealing it.

    Per tensor, in name order (names compared as text): ``name|dtype|shape|`` then its bytes (C order),
    or for object arrays (e.g. string labels) the ``repr`` of their values, since their bytes are object
    addresses.

    The keyed HMAC state is prepared once and copied per digest: setting HMAC up from the key each
    time cost more than hashing a small request.
    """

    __slots__ = ("_headers", "_mac")

    def __init__(self, key: bytes) -> None:
        self._mac = _hmac.HMAC(key, hashes.SHA256())
        # (name, shape) -> (dtype, header, plain): keyed without the dtype, whose hash numpy computes
        # afresh on every call (a few µs on cold caches); the dtype is compared by identity instead,
        # which holds for the builtin dtypes numpy shares between arrays (anything else is re-derived)
        self._headers: dict[tuple[str, tuple[int, ...]], tuple[np.dtype[Any], bytes, bool]] = {}

    def digest(self, tensors: Mapping[str, Any]) -> str:
        mac = self._mac.copy()
        # by name as text: a refused request may mix key types, and its record still needs a digest
        for name in sorted(tensors, key=str) if len(tensors) > 1 else tensors:
            arr = tensors[name]
            if not isinstance(arr, np.ndarray):
                mac.update(f"{name}|{type(arr).__name__}|".encode())
                continue
            dtype = arr.dtype
            known = self._headers.get((name, arr.shape))
            if known is None or known[0] is not dtype:
                known = (dtype, f"{name}|{dtype.str}|{arr.shape}|".encode(), not dtype.hasobject)
                if len(self._headers) < _HEADERS:
                    self._headers[(name, arr.shape)] = known
            mac.update(known[1])
            if not known[2]:  # e.g. string labels: their text, not the addresses of their objects
                mac.update(repr(arr.tolist()).encode())
                continue
            try:
                view = memoryview(arr)
            except (TypeError, ValueError):  # datetime64/timedelta64: numpy exports no buffer for them
                mac.update(arr.tobytes())
                continue
            if view.nbytes:  # (an empty array has no bytes, and a cast refuses its zero-length shape)
                mac.update(view.cast("B") if view.c_contiguous else memoryview(np.ascontiguousarray(arr)).cast("B"))
        return HexDigest(mac.finalize().hex())


def keyed_digest(key: bytes, tensors: Mapping[str, Any]) -> str:
    """``TensorDigester(key).digest(tensors)``, for one-off use."""
    return TensorDigester(key).digest(tensors)


_HEADERS = 256  # (name, shape) headers remembered per digester
_CALLERS = 4096  # callers remembered per session; the cache starts over when full


@dataclass
class SecurityContext:
    """Everything a pipeline needs, shared by all sessions of one ``Runtime``."""

    profile: PolicyProfile
    authorizer: Authorizer
    audit: AuditLog
    hmac_key: bytes
    telemetry: TelemetryStore | None = None
    features: dict[str, Any] = field(default_factory=dict)
    closed: bool = False  # set by Runtime.close(): requests are refused before anything else

    def __post_init__(self) -> None:
        self.digester = TensorDigester(self.hmac_key)

    @property
    def config_label(self) -> str:
        parts = ["sealed", "authz", f"audit({self.audit.durability})"]
        if self.profile.outputs.active:
            parts.append("guards")
        if self.features.get("watermark_verified"):
            parts.append("watermark")
        return "+".join(parts)

    def audit_event(self, caller: Caller, action: str, **kw: Any) -> AuditEvent:
        return AuditEvent(
            actor=caller.user,
            role=caller.role,
            purpose=caller.purpose,
            action=action,
            policy_id=self.profile.id,
            policy_version=self.authorizer.policy_version,
            tenant=caller.tenant,
            break_glass=caller.break_glass,
            **kw,
        )


class _CallerPlan:
    """What all of one caller's requests to one session share, under one policy version."""

    __slots__ = ("decision", "served", "template")

    def __init__(self, decision: Decision, template: EventTemplate) -> None:
        self.decision = decision  # the authorizer's (cached) decision
        self.template = template  # the record's fixed fields
        # the record of a request that is allowed and served: only digests and latency left to fill in
        self.served: OutcomeTemplate | None = template.ending(
            decision="allow", reasons=decision.reasons, outcome="ok") if decision.allowed else None


class RequestPipeline:
    """Runs one session's requests through the policy. Thread-safe (its parts are)."""

    def __init__(
        self,
        ctx: SecurityContext,
        resource: ModelResource,
        manifest: dict[str, Any],
        device: str,
        graph_guards: GraphGuards | None = None,
    ) -> None:
        """``graph_guards``: the guards compiled into the session's graph (see ``policy/graphguards.py``)."""
        self._ctx = ctx
        self._resource = resource
        self._device = device
        specs = [TensorSpec.from_dict(s) for s in manifest.get("signature_io", {}).get("inputs", [])]
        compiled = graph_guards
        self._fetches = compiled.fetches if compiled else None
        self._outputs = compiled.outputs if compiled else ()
        self._screened = compiled.screened if compiled else ()
        self._screens = tuple(enumerate(self._screened, len(self._outputs)))  # (index in the results, input)
        self._single = self._outputs[0] if len(self._outputs) == 1 else None
        self._validate = InputValidator(specs, ctx.profile.inputs, screened=frozenset(self._screened))
        self._check = self._validate.check
        # telemetry's batch size of a served request: the first input with a first axis (validated)
        self._batch_from = next((spec.name for spec in specs if spec.shape), None)
        self._guard = OutputGuard(ctx.profile.outputs) if ctx.profile.outputs.active else None
        self._admit = self._guard.admit if self._guard is not None and self._guard.limits_queries else None
        self._transform = self._guard is not None and not (compiled and compiled.rounded) and (
            ctx.profile.outputs.top_k is not None or ctx.profile.outputs.round_decimals is not None)
        self._priorities = frozenset(ctx.profile.priority_classes)
        self._param_bytes = int(manifest["model"].get("param_bytes", 0))
        self._features = {
            "sealed": True,
            "authz": True,
            "audit_mode": ctx.audit.durability,
            "guards": self._guard is not None,
            **ctx.features,
        }
        self._telemetry = SessionFields(
            model=resource.name, model_version=resource.version, model_digest=resource.digest,
            config=ctx.config_label, features=self._features, device=device, model_param_bytes=self._param_bytes,
            request_prefix=_PROCESS_ID, features_json=features_json(self._features),
        )
        self._plans: dict[tuple[Any, ...], _CallerPlan] = {}

    def _plan(self, caller: Caller, key: tuple[Any, ...]) -> _CallerPlan:
        """This caller's decision and record templates, made on the first request of ``key`` (see ``run``).

        The key holds everything the authorizer's decision depends on for this session's model and
        action (the caller's fields and the policy version), so a reload of the rules is a miss here too.
        """
        decision = self._ctx.authorizer.authorize(caller, "infer", self._resource)
        plan = _CallerPlan(decision, self._template(caller))
        if decision.policy_version == key[-1]:  # else the rules changed during the call: don't keep it
            if len(self._plans) >= _CALLERS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _template(self, caller: Caller) -> EventTemplate:
        return EventTemplate(self._ctx.audit_event(
            caller, "infer", model_id=self._resource.name, model_version=self._resource.version,
            model_digest=self._resource.digest, device=self._device,
        ))

    def _fetch(self, session: SealedSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the compiled graph: the model's outputs (rounded if compiled so), then each screen's verdict."""
        try:
            results = session._fetch(self._fetches, inputs)  # type: ignore[arg-type]
        except ModelError:
            for name in self._screened:  # a NaN the model choked on is the caller's error, as before
                self._validate.require_finite(name, inputs[name])
            raise
        for at, name in self._screens:
            if not math.isfinite(results[at]):  # non-finite, or finite values whose squares overflowed
                self._validate.require_finite(name, inputs[name])
        if self._single is not None:  # a dict display: dict(zip(...)) costs 12 µs here, on cold caches
            return {self._single: results[0]}
        # the model's outputs come first, then each screen's verdict, which zip leaves out
        return dict(zip(self._outputs, results, strict=False))

    def run(
        self, session: SealedSession, inputs: Mapping[str, np.ndarray], caller: Caller | None, priority: str
    ) -> dict[str, np.ndarray]:
        if caller is None:
            raise UnknownPrincipalError(
                "This session runs under a policy, so every call needs a caller.",
                hint="Pass caller=Caller(user, role, purpose) to run().",
            )
        ctx = self._ctx
        if ctx.closed:
            raise RuntimeClosedError()
        t0 = time.perf_counter_ns()
        # the fields themselves, not the Caller: hashing a tuple of strings stays in C, while a
        # dataclass's generated __hash__/__eq__ are Python calls on every request
        try:
            key = (caller.user, caller.role, caller.purpose, caller.tenant, caller.break_glass,
                   ctx.authorizer.policy_version)
        except AttributeError:
            raise UnknownPrincipalError(
                f"caller must be a Caller, got {type(caller).__name__}.",
                hint="Pass caller=Caller(user, role, purpose) to run().",
            ) from None
        plan = self._plans.get(key) or self._plan(caller, key)
        decision = plan.decision
        t1 = time.perf_counter_ns()
        outputs: dict[str, np.ndarray] | None = None
        error: SealinferError | None = None
        t2 = t3 = t4 = td = t1
        digest_in: str | None = None
        if not decision.allowed:
            error = AccessDeniedError(
                f"{caller.role} {caller.user!r} may not run {self._resource.name!r} for {caller.purpose}: "
                + "; ".join(decision.reasons),
                hint="Ask your privacy officer for access, or use a purpose your role is allowed.",
                decision=decision,
            )
        else:
            try:
                try:
                    known = priority in self._priorities
                except TypeError:  # unhashable, so no class of the policy's
                    known = False
                if not known:  # it labels telemetry and reports: no invented classes
                    given, priority = priority, "unknown"
                    raise ConfigurationError(
                        f"Unknown priority class {given!r}.",
                        hint=f"Use one of the policy's classes: {', '.join(sorted(self._priorities))}.",
                    )
                self._check(inputs)
                t2 = time.perf_counter_ns()
                # before the run, while the caches still hold the request and the digester's code: the
                # model's run evicts both, and after it the same digest costs several times as much
                digest_in = ctx.digester.digest(inputs)
                td = time.perf_counter_ns()
                if self._admit is not None:
                    self._admit(caller)
                t3 = time.perf_counter_ns()
                # the pipeline is the session's own guard; ModelError if onnxruntime fails
                outputs = session._infer(inputs) if self._fetches is None else self._fetch(session, inputs)
                t4 = time.perf_counter_ns()
                if self._transform:
                    outputs = self._guard.transform(outputs)  # type: ignore[union-attr]
            except SealinferError as exc:
                error = exc
                outputs = None
                t2 = max(t2, t1)
                td = max(td, t2)
                t3 = max(t3, td)
                t4 = max(t4, t3)
        t5 = time.perf_counter_ns()
        if error is None:
            outcome, code = "ok", None
        elif isinstance(error, AccessDeniedError):
            outcome, code = "denied", error.code
        else:
            outcome, code = ("denied" if error.code.startswith(("rate", "quota")) else "error"), error.code
        if error is None:
            event = plan.served.render(  # type: ignore[union-attr]  # allowed, so it has one
                digest_in, ctx.digester.digest(outputs), (t5 - t0) // 1000)
        else:
            event = plan.template.render(
                decision="allow" if decision.allowed else "deny",
                reasons=[*decision.reasons, str(error)] if isinstance(error, InputValidationError)
                else decision.reasons,
                outcome=outcome,
                error_code=code,
                input_digest=digest_in if digest_in is not None
                else ctx.digester.digest(inputs) if _is_mapping(inputs) else None,
                output_digest=ctx.digester.digest(outputs) if outputs is not None else None,
                latency_us=(t5 - t0) // 1000,
            )
        receipt = ctx.audit.append(event)  # returns once durable: nothing acknowledged is lost
        t6 = time.perf_counter_ns()
        if ctx.telemetry is not None:
            ctx.telemetry.record_request(self._telemetry, (
                time.time(), next(_REQUESTS), outcome, code, caller.tenant or "default", priority,
                inputs[self._batch_from].shape[0] if error is None and self._batch_from
                else _batch(inputs, self._batch_from),
                (t1 - t0) / 1000, (t2 - t1) / 1000, (t4 - t3) / 1000, ((t3 - td) + (t5 - t4)) / 1000,
                ((t6 - t5) + (td - t2)) / 1000, (t6 - t0) / 1000,
            ))
        if error is not None:
            error.audit_seq = receipt.seq  # type: ignore[attr-defined]  # where to find the record
            raise error
        assert outputs is not None
        return outputs


def _is_mapping(inputs: object) -> bool:
    return type(inputs) is dict or isinstance(inputs, Mapping)  # a dict skips the ABC machinery


def _batch(inputs: Mapping[str, Any], first: str | None) -> int:
    """A refused request's batch: as for a served one, the first axis of the input ``first``.

    Failing that (it is missing or malformed, which may be why the request was refused), the first
    axis of the first input, in the caller's order, that has one. Never raises: telemetry is written
    after the audit record, and the caller must get the typed error, not one from here.
    """
    if not _is_mapping(inputs):  # refused by validation, and still recorded
        return 0
    values = list(inputs.values())
    if first is not None and first in inputs:
        values.insert(0, inputs[first])
    for value in values:
        try:
            shape = value.shape
            if shape:
                return int(shape[0])
        except (AttributeError, TypeError, ValueError, IndexError):  # not an array; refused anyway
            continue
    return 1
