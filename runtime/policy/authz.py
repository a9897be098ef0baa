"""Who may do what with which model: Cedar policies, parsed once, decisions cached.

The principal is ``User::"<user>"`` with attribute ``role``; the resource is ``Model::"<digest>"``
with ``name``, ``version``, ``digest`` and ``phi``; the context carries the purpose of use,
break-glass and the tenant. Cedar is deny-by-default and forbid-overrides-permit, and we add one
rule of our own: a policy that fails to evaluate makes the decision a denial, because Cedar skips an
erroring policy and an erroring *forbid* would otherwise fail open.

A decision depends only on (user, role, purpose, break-glass, tenant, model digest and PHI flag,
action, policy version), so it is cached under exactly that key in a bounded LRU: a repeated request
costs a dictionary lookup. The policy version is part of the key, and ``reload`` clears the cache,
so new rules can never be answered by old decisions.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cedarpy

from sealinfer.runtime.caller import Caller
from sealinfer.runtime.errors import AuthorizationError, PolicyError
from sealinfer.runtime.policy.profile import shipped_resource_text

if TYPE_CHECKING:
    from sealinfer.runtime.policy.profile import PolicyProfile

ACTIONS = frozenset({"load", "infer", "inspect", "report"})
DEFAULT_POLICIES = "authz.cedar"
CEDAR_SCHEMA = "sealinfer.cedarschema"


@dataclass(frozen=True, slots=True)
class ModelResource:
    """The model a request is about; ``digest`` is the SHA-256 of its plaintext ONNX."""

    name: str
    version: str
    digest: str
    phi: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one authorization.

    ``reasons`` are ``"<policy @id>: <@reason sentence>"`` for the policies that decided (the permits
    on allow, the forbids on deny), or one ``deny-by-default: ...`` line when nothing permitted.
    ``break_glass`` is True whenever the caller invoked break-glass, allowed or not, so the
    runtime audits every such request loudly. ``policy_ids`` are the bare @ids for machine use.
    Decisions are immutable because cached ones are shared between threads.
    """

    allowed: bool
    reasons: tuple[str, ...]
    break_glass: bool
    policy_version: str
    cached: bool = False
    policy_ids: tuple[str, ...] = ()


class AccessDeniedError(AuthorizationError):
    """Cedar denied the request; ``decision`` holds the reasons for the audit record."""

    code = "denied"

    def __init__(self, message: str, *, hint: str | None = None, decision: Decision | None = None) -> None:
        super().__init__(message, hint=hint)
        self.decision = decision


@dataclass(frozen=True, slots=True)
class _PolicyState:
    version: str
    policies: Any  # cedarpy.PolicySet
    schema: Any  # cedarpy.Schema
    labels: dict[str, tuple[str, str]]  # Cedar policy id -> (@id, @reason)
    order: dict[str, int]  # Cedar policy id -> position in the policy text


@dataclass(frozen=True, slots=True)
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


class Authorizer:
    """Cedar authorization with a decision cache. Thread-safe; share one per runtime.

    ``policies_text`` / ``schema_text`` default to the shipped ``authz.cedar`` and
    ``sealinfer.cedarschema``. ``policy_version`` must change whenever the rules change; use
    ``Authorizer.from_profile`` to derive it from the profile and the policy text.
    """

    def __init__(
        self,
        policies_text: str | None = None,
        schema_text: str | None = None,
        *,
        policy_version: str,
        cache_size: int = 65536,
    ) -> None:
        if cache_size < 1:
            raise PolicyError("The decision cache needs at least one slot.", hint="Pass cache_size >= 1.")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], Decision] = OrderedDict()
        self._maxsize = cache_size
        self._hits = 0
        self._misses = 0
        self._state = _compile(policies_text, schema_text, policy_version)
        # The rules' version, read by every request: a plain attribute, not a property (a property is a
        # Python call, a few µs on caches a model's run has just taken over). Set after ``_state``: a
        # request that reads the old version meanwhile gets a decision made under the new rules, and
        # the pipeline keeps a decision only if the versions agree.
        self.policy_version: str = policy_version

    @classmethod
    def from_profile(cls, profile: PolicyProfile, *, cache_size: int = 65536) -> Authorizer:
        """The authorizer a profile names (``authorization.policies``, default ``authz.cedar``)."""
        text = profile.cedar_policies_text()
        return cls(text, policy_version=policy_version_for(profile, text), cache_size=cache_size)

    def reload(self, policies_text: str | None = None, schema_text: str | None = None, *, policy_version: str) -> None:
        """Swap in new rules atomically; every cached decision is dropped."""
        state = _compile(policies_text, schema_text, policy_version)  # fails before anything changes
        with self._lock:
            self._state = state
            self.policy_version = policy_version
            self._cache.clear()

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._maxsize)

    def authorize(self, caller: Caller, action: str, model: ModelResource) -> Decision:
        """Decide whether ``caller`` may perform ``action`` on ``model``. Never raises for a denial."""
        state = self._state
        try:
            key = (
                caller.user,
                caller.role,
                caller.purpose,
                caller.break_glass,
                caller.tenant,
                model.digest,
                model.phi,
                action,
                state.version,
            )
        except AttributeError as exc:
            raise AuthorizationError(
                f"Malformed authorization request: {exc}.",
                hint="Pass a Caller(user, role, purpose) and a ModelResource(name, version, digest, phi).",
            ) from exc
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return hit
            self._misses += 1
        decision = self._evaluate(state, caller, action, model)
        with self._lock:
            if state is self._state:  # a reload meanwhile: don't cache under rules that are gone
                self._cache[key] = _as_cached(decision)
                if len(self._cache) > self._maxsize:
                    self._cache.popitem(last=False)
        return decision

    def require(self, caller: Caller, action: str, model: ModelResource) -> Decision:
        """Like ``authorize`` but raise ``AccessDeniedError`` (carrying the decision) on denial."""
        decision = self.authorize(caller, action, model)
        if not decision.allowed:
            raise AccessDeniedError(
                f"{caller.role} {caller.user!r} may not {action} model {model.name} {model.version} "
                f"for {caller.purpose}{' (break-glass)' if caller.break_glass else ''}: "
                + "; ".join(decision.reasons),
                hint="Ask for the role or purpose this model's policy requires; the denial is in the audit log.",
                decision=decision,
            )
        return decision

    def _evaluate(self, state: _PolicyState, caller: Caller, action: str, model: ModelResource) -> Decision:
        if not isinstance(caller, Caller):
            raise AuthorizationError(
                f"Expected a Caller, got {type(caller).__name__}.", hint="Pass Caller(user, role, purpose)."
            )
        if action not in ACTIONS:
            raise AuthorizationError(
                f"Unknown action {action!r}.", hint=f"Use one of: {', '.join(sorted(ACTIONS))}."
            )
        principal = {"type": "User", "id": caller.user}
        resource = {"type": "Model", "id": model.digest}
        entities = [
            {"uid": principal, "attrs": {"role": caller.role}, "parents": []},
            {
                "uid": resource,
                "attrs": {
                    "name": str(model.name),
                    "version": str(model.version),
                    "digest": str(model.digest),
                    "phi": bool(model.phi),
                },
                "parents": [],
            },
        ]
        request = {
            "principal": principal,
            "action": {"type": "Action", "id": action},
            "resource": resource,
            "context": {
                "purpose": caller.purpose,
                "break_glass": bool(caller.break_glass),
                "tenant": caller.tenant or "",
            },
        }
        try:
            result = cedarpy.is_authorized(request, state.policies, entities, state.schema)
        except (ValueError, TypeError) as exc:  # fail closed on anything Cedar cannot evaluate
            return _deny(state, caller, (f"evaluation-error: {exc}",), ("evaluation-error",))
        errors = result.diagnostics.errors
        # Cedar reports matching policies in no fixed order; audit records must be reproducible.
        matched = sorted(result.diagnostics.reasons, key=lambda p: state.order.get(p, 1 << 30))
        ids = tuple(state.labels.get(p, (p, ""))[0] for p in matched)
        reasons = tuple(_reason_line(state.labels.get(p, (p, ""))) for p in matched)
        if errors:
            return _deny(state, caller, tuple(f"evaluation-error: {e}" for e in errors), ("evaluation-error",))
        if result.allowed:
            return Decision(True, reasons, bool(caller.break_glass), state.version, False, ids)
        if not reasons:
            phi = "PHI " if model.phi else ""
            article = "an" if caller.role[:1] in "aeiou" else "a"
            reasons = (
                f"deny-by-default: no policy permits {article} {caller.role} to {action} a {phi}model "
                f"for {caller.purpose}{' with break-glass' if caller.break_glass else ''}",
            )
            ids = ("deny-by-default",)
        return _deny(state, caller, reasons, ids)


def policy_version_for(profile: PolicyProfile, policies_text: str) -> str:
    """``<profile id>@<profile version>+<sha256(policies)[:12]>``: changes whenever either does."""
    return f"{profile.id}@{profile.version}+{hashlib.sha256(policies_text.encode('utf-8')).hexdigest()[:12]}"


def _deny(state: _PolicyState, caller: Caller, reasons: tuple[str, ...], ids: tuple[str, ...]) -> Decision:
    return Decision(False, reasons, bool(caller.break_glass), state.version, False, ids)


def _as_cached(d: Decision) -> Decision:
    return Decision(d.allowed, d.reasons, d.break_glass, d.policy_version, True, d.policy_ids)


def _reason_line(label: tuple[str, str]) -> str:
    pid, sentence = label
    return f"{pid}: {sentence}" if sentence else pid


def _compile(policies_text: str | None, schema_text: str | None, policy_version: str) -> _PolicyState:
    if not policy_version or not isinstance(policy_version, str):
        raise PolicyError("policy_version is empty.", hint="Pass the profile version (see Authorizer.from_profile).")
    text = shipped_resource_text(DEFAULT_POLICIES) if policies_text is None else policies_text
    schema_src = shipped_resource_text(CEDAR_SCHEMA) if schema_text is None else schema_text
    try:
        schema = cedarpy.Schema.from_str(schema_src)
    except ValueError as exc:
        raise PolicyError(f"The Cedar schema does not parse: {exc}", hint="Fix the .cedarschema file.") from exc
    try:
        policies = cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise PolicyError(f"The Cedar policies do not parse: {exc}", hint="Fix the .cedar file.") from exc
    labels = _labels(policies)
    validation = cedarpy.validate_policies(text, schema)
    if not validation.validation_passed:
        problems = "; ".join(
            f"[{labels.get(e.policy_id, (e.policy_id, ''))[0]}] {e.error}" if e.policy_id else e.error
            for e in validation.errors
        )
        raise PolicyError(
            f"The Cedar policies do not validate against the schema: {problems}",
            hint="Fix the policies (attribute names, action names, types) or the schema.",
        )
    if len(labels) == 0:
        raise PolicyError("The Cedar policy set is empty, so everything would be denied.", hint="Add policies.")
    order = {pid: _position(pid) for pid in labels}
    return _PolicyState(policy_version, policies, schema, labels, order)


def _position(pid: str) -> int:
    # Cedar names surface-syntax policies policy0, policy1, ... in source order.
    digits = pid[len("policy"):] if pid.startswith("policy") else ""
    return int(digits) if digits.isdigit() else 1 << 29


def _labels(policies: Any) -> dict[str, tuple[str, str]]:
    """Cedar's positional ids (policy0, ...) -> (@id, @reason), so reasons name policies stably."""
    labels: dict[str, tuple[str, str]] = {}
    for pid, node in policies.to_pst().static_policies.items():
        ann = dict(node.annotations or {})
        labels[pid] = (str(ann.get("id") or pid), str(ann.get("reason") or ""))
    return labels


__all__ = [
    "ACTIONS",
    "AccessDeniedError",
    "Authorizer",
    "CacheInfo",
    "Decision",
    "ModelResource",
    "policy_version_for",
]
