"""Cedar authorization: deny by default, each denial reason, break-glass, the decision cache."""

from __future__ import annotations

import threading
from importlib import resources

import pytest

from sealinfer.runtime.caller import Caller
from sealinfer.runtime.errors import AuthorizationError, PolicyError, UnknownPrincipalError
from sealinfer.runtime.policy.authz import AccessDeniedError, Authorizer, ModelResource
from sealinfer.runtime.policy.profile import load_profile

PHI = ModelResource("sepsis-risk", "1.2.0", "a" * 64, phi=True)
DEID = ModelResource("digits", "0.3.0", "b" * 64, phi=False)
SHIPPED = resources.files("sealinfer.policies").joinpath("authz.cedar").read_text("utf-8")


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer.from_profile(load_profile("hipaa"))


def who(role: str, purpose: str, *, user: str | None = None, break_glass: bool = False) -> Caller:
    return Caller(user or f"{role}-1", role, purpose, tenant="north", break_glass=break_glass)


@pytest.mark.parametrize(
    ("role", "purpose", "action", "model"),
    [
        ("clinician", "treatment", "load", PHI),
        ("clinician", "treatment", "infer", PHI),
        ("clinician", "research", "infer", DEID),
        ("researcher", "research", "infer", DEID),
        ("researcher", "research", "load", DEID),
        ("researcher", "research", "inspect", PHI),
        ("ops", "operations", "load", PHI),
        ("ops", "operations", "inspect", PHI),
        ("auditor", "operations", "report", PHI),
        ("auditor", "operations", "inspect", DEID),
        ("service", "operations", "load", PHI),
        ("service", "treatment", "infer", PHI),
    ],
)
def test_permitted_requests(authz, role, purpose, action, model):
    decision = authz.authorize(who(role, purpose), action, model)
    assert decision.allowed, decision.reasons
    assert decision.reasons and not decision.break_glass
    assert decision.policy_version == authz.policy_version


def test_researcher_on_phi_model_is_denied_by_the_forbid(authz):
    decision = authz.authorize(who("researcher", "research"), "infer", PHI)
    assert not decision.allowed
    assert decision.policy_ids == ("forbid-researcher-phi",)
    assert decision.reasons[0].startswith("forbid-researcher-phi: researchers may not")
    # even claiming treatment as the purpose does not help
    assert not authz.authorize(who("researcher", "treatment"), "infer", PHI).allowed


@pytest.mark.parametrize(
    ("role", "purpose", "action", "model"),
    [
        ("clinician", "operations", "infer", PHI),  # wrong purpose
        ("clinician", "research", "infer", PHI),  # research on PHI
        ("clinician", "treatment", "report", PHI),  # wrong action
        ("ops", "operations", "infer", DEID),  # ops never run models
        ("auditor", "operations", "infer", PHI),
        ("auditor", "operations", "load", DEID),
        ("service", "research", "infer", DEID),  # service only for treatment/operations
        ("researcher", "treatment", "infer", DEID),  # researchers only for research
    ],
)
def test_default_deny_reason(authz, role, purpose, action, model):
    decision = authz.authorize(who(role, purpose), action, model)
    assert not decision.allowed
    assert decision.policy_ids == ("deny-by-default",)
    (reason,) = decision.reasons
    assert reason.startswith("deny-by-default: no policy permits")
    assert role in reason and action in reason and purpose in reason


def test_break_glass_is_allowed_to_a_clinician_and_flagged(authz):
    decision = authz.authorize(who("clinician", "operations", break_glass=True), "infer", PHI)
    assert decision.allowed and decision.break_glass
    assert "clinician-break-glass" in decision.policy_ids
    # without break-glass the same request is denied
    assert not authz.authorize(who("clinician", "operations"), "infer", PHI).allowed


@pytest.mark.parametrize("role", ["researcher", "ops", "auditor", "service"])
def test_break_glass_is_denied_to_everyone_else_and_still_flagged(authz, role):
    decision = authz.authorize(who(role, "treatment", break_glass=True), "infer", PHI)
    assert not decision.allowed and decision.break_glass
    assert "forbid-break-glass-non-clinician" in decision.policy_ids


def test_break_glass_by_others_overrides_their_normal_permits(authz):
    # ops may normally load; asking for break-glass is itself a denial for non-clinicians
    assert authz.authorize(who("ops", "operations"), "load", PHI).allowed
    assert not authz.authorize(who("ops", "operations", break_glass=True), "load", PHI).allowed


@pytest.mark.parametrize(("role", "purpose"), [("surgeon", "treatment"), ("clinician", "curiosity")])
def test_unknown_role_or_purpose_is_an_unknown_principal(role, purpose):
    with pytest.raises(UnknownPrincipalError) as info:
        Caller("u", role, purpose)
    assert isinstance(info.value, AuthorizationError)


def test_unknown_action_and_malformed_request_raise(authz):
    with pytest.raises(AuthorizationError, match="Unknown action 'export'"):
        authz.authorize(who("clinician", "treatment"), "export", PHI)
    with pytest.raises(AuthorizationError, match="Malformed"):
        authz.authorize({"user": "x"}, "infer", PHI)  # type: ignore[arg-type]


def test_require_raises_access_denied_with_the_decision(authz):
    assert authz.require(who("clinician", "treatment"), "infer", PHI).allowed
    with pytest.raises(AccessDeniedError) as info:
        authz.require(who("researcher", "research"), "infer", PHI)
    assert info.value.decision is not None and not info.value.decision.allowed
    assert "forbid-researcher-phi" in str(info.value)
    assert info.value.code == "denied"


def test_repeated_request_hits_the_cache():
    authz = Authorizer(policy_version="v1")
    caller = who("clinician", "treatment")
    first = authz.authorize(caller, "infer", PHI)
    second = authz.authorize(caller, "infer", PHI)
    assert not first.cached and second.cached
    assert (first.allowed, first.reasons) == (second.allowed, second.reasons)
    info = authz.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)
    # any part of the key changing is a miss
    authz.authorize(who("clinician", "treatment", user="other"), "infer", PHI)
    authz.authorize(caller, "load", PHI)
    authz.authorize(caller, "infer", DEID)
    authz.authorize(Caller(caller.user, "clinician", "treatment", tenant="south"), "infer", PHI)
    authz.authorize(Caller(caller.user, "clinician", "treatment", "north", break_glass=True), "infer", PHI)
    assert authz.cache_info().misses == 6


def test_denials_are_cached_too():
    authz = Authorizer(policy_version="v1")
    caller = who("researcher", "research")
    assert not authz.authorize(caller, "infer", PHI).cached
    again = authz.authorize(caller, "infer", PHI)
    assert again.cached and not again.allowed


def test_new_policy_version_invalidates_cached_decisions():
    authz = Authorizer(policy_version="2026.1")
    caller = who("researcher", "research")
    assert authz.authorize(caller, "report", DEID).policy_ids == ("deny-by-default",)
    assert authz.authorize(caller, "report", DEID).cached
    extra = (
        '\n@id("researcher-report")\npermit (principal, action == Action::"report", resource)\n'
        'when { principal.role == "researcher" };\n'
    )
    authz.reload(SHIPPED + extra, policy_version="2026.2")
    decision = authz.authorize(caller, "report", DEID)
    assert decision.allowed and not decision.cached
    assert decision.policy_version == "2026.2"
    assert authz.authorize(caller, "report", DEID).cached


def test_failed_reload_keeps_the_old_rules():
    authz = Authorizer(policy_version="v1")
    caller = who("clinician", "treatment")
    authz.authorize(caller, "infer", PHI)
    with pytest.raises(PolicyError):
        authz.reload("permit (principal, action, resource) when {", policy_version="v2")
    assert authz.policy_version == "v1"
    assert authz.authorize(caller, "infer", PHI).cached


def test_profile_version_is_part_of_the_policy_version(tmp_path):
    text = resources.files("sealinfer.policies").joinpath("hipaa.yaml").read_text("utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace('"2026.11.1"', '"2026.12.0"'), encoding="utf-8")
    a = Authorizer.from_profile(load_profile("hipaa"))
    b = Authorizer.from_profile(load_profile(path))
    assert a.policy_version != b.policy_version
    assert a.policy_version.startswith("hipaa@2026.11.1+")


def test_lru_bound_evicts_the_least_recently_used():
    authz = Authorizer(policy_version="v1", cache_size=2)
    a, b, c = (who("clinician", "treatment", user=u) for u in "abc")
    authz.authorize(a, "infer", PHI)
    authz.authorize(b, "infer", PHI)
    assert authz.authorize(a, "infer", PHI).cached  # a is now most recent
    authz.authorize(c, "infer", PHI)  # evicts b
    assert authz.cache_info().size == 2
    assert authz.authorize(a, "infer", PHI).cached
    assert not authz.authorize(b, "infer", PHI).cached


def test_dev_profile_is_permissive_for_non_phi_but_still_deny_by_default():
    dev = Authorizer.from_profile(load_profile("dev"))
    assert dev.authorize(who("auditor", "research"), "infer", DEID).allowed
    assert not dev.authorize(who("researcher", "research"), "infer", PHI).allowed
    assert not dev.authorize(who("auditor", "operations"), "infer", PHI).allowed
    assert dev.authorize(who("auditor", "operations"), "infer", PHI).policy_ids == ("deny-by-default",)


def test_invalid_policy_text_is_a_policy_error():
    with pytest.raises(PolicyError, match="do not parse"):
        Authorizer("permit (principal, action, resource) when {", policy_version="x")
    with pytest.raises(PolicyError, match=r"\[typo\].*rol"):
        Authorizer(
            '@id("typo")\npermit (principal, action, resource) when { principal.rol == "x" };', policy_version="x"
        )
    with pytest.raises(PolicyError, match="do not validate"):
        Authorizer('permit (principal, action == Action::"export", resource);', policy_version="x")
    with pytest.raises(PolicyError, match="schema does not parse"):
        Authorizer(None, "entity User {", policy_version="x")
    with pytest.raises(PolicyError, match="empty"):
        Authorizer("// nothing\n", policy_version="x")
    with pytest.raises(PolicyError):
        Authorizer(policy_version="")


def test_a_forbid_that_fails_to_evaluate_denies():
    # Cedar skips an erroring policy; an erroring forbid must not let the permit through.
    text = (
        '@id("everyone") permit (principal, action, resource);\n'
        '@id("overflowing-forbid") forbid (principal, action, resource)\n'
        'when { (9223372036854775807 + (if principal.role == "clinician" then 1 else 0)) > 0 };\n'
    )
    authz = Authorizer(text, policy_version="x")
    decision = authz.authorize(who("clinician", "treatment"), "infer", PHI)
    assert not decision.allowed
    assert decision.policy_ids == ("evaluation-error",)
    assert "overflow" in decision.reasons[0]


def test_eight_threads_share_one_authorizer():
    authz = Authorizer(policy_version="v1", cache_size=64)
    callers = [
        who(r, p, user=f"{r}-{i}")
        for i in range(4)
        for r, p in [("clinician", "treatment"), ("researcher", "research"), ("service", "operations")]
    ]
    expected = {c: authz.authorize(c, "infer", PHI).allowed for c in callers}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        try:
            barrier.wait()
            for i in range(2000):
                c = callers[(seed * 7 + i) % len(callers)]
                if i % 500 == 0 and seed == 0:
                    authz.reload(SHIPPED, policy_version=f"v{i}")
                d = authz.authorize(c, "infer", PHI)
                assert d.allowed == expected[c]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    info = authz.cache_info()
    assert info.size <= 64 and info.hits > info.misses
