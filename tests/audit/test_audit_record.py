"""The audit record's canonical JSON: the fast field-by-field encoder must equal the generic one."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.record import AuditEvent
from sealinfer.runtime.audit.template import HexDigest
from sealinfer.runtime.audit.verify import verify_log

from .conftest import make_event, make_signer, trust_for

text = st.text(min_size=1, max_size=40).filter(lambda t: t.strip() != "")
maybe_text = st.none() | st.text(max_size=40)
digest = st.none() | st.text(alphabet="0123456789abcdef", min_size=16, max_size=128)
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | finite | st.text(max_size=20)
details = st.dictionaries(st.text(max_size=10), scalars | st.lists(scalars, max_size=3), max_size=4)


@settings(max_examples=400, deadline=None)
@given(
    actor=text, role=text, purpose=text, action=text, model_id=maybe_text, model_version=maybe_text,
    model_digest=digest, policy_id=maybe_text, policy_version=maybe_text,
    decision=st.sampled_from(["allow", "deny"]), reasons=st.lists(st.text(max_size=30), max_size=4),
    outcome=st.sampled_from(["ok", "denied", "error"]), error_code=maybe_text, device=maybe_text,
    input_digest=digest, output_digest=digest, latency_us=st.none() | st.integers(0, 2**63),
    tenant=maybe_text, break_glass=st.booleans(), details=details,
)
def test_canonical_json_is_exactly_what_json_dumps_gives(**kw: object) -> None:
    event = AuditEvent(**kw)  # type: ignore[arg-type]
    expected = {f.name: getattr(event, f.name) for f in fields(AuditEvent)}
    expected["reasons"] = list(event.reasons)
    assert event.to_json() == json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def test_checkpoints_fall_at_exact_multiples_even_when_records_are_stored_in_one_batch(tmp_path: Path) -> None:
    signer = make_signer()
    log = AuditLog(tmp_path / "a.db", signer=signer, checkpoint_every=3)
    for i in range(7):
        log.append(make_event(i))
    log.flush()  # all seven reach the database in one transaction, with checkpoints at 3 and 6 inside it
    cp = log.latest_checkpoint()
    assert cp is not None and cp.tree_size == 6
    log.close()
    result = verify_log(tmp_path / "a.db", trust_for(signer))
    assert result.ok and result.records == 7 and result.checkpoints == 3  # 3, 6 and 7 at close
    sizes = [r[0] for r in sqlite3.connect(tmp_path / "a.db").execute(
        "SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")]
    assert sizes == [3, 6, 7]


anything = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3) | st.just("f" * 16) | st.just([])


@settings(max_examples=400, deadline=None)
@given(values=st.fixed_dictionaries({f.name: anything for f in fields(AuditEvent)}))
def test_the_fast_validity_check_never_accepts_what_the_full_check_refuses(values: dict[str, object]) -> None:
    from sealinfer.runtime.audit.record import _explain, _plainly_valid

    event = AuditEvent(**values)  # type: ignore[arg-type]
    if _plainly_valid(event):
        _explain(event)  # must not raise: the fast path may only accept what the full check accepts


def test_event_ids_stay_unique_across_a_fork() -> None:
    import os

    from sealinfer.runtime.audit.record import uuid7

    uuid7(0)  # the parent's random pool is now filled; a child must not hand out the same bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, "\n".join(uuid7(0) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    mine = [uuid7(0) for _ in range(50)]
    with os.fdopen(read) as fh:
        theirs = fh.read().split("\n")
    os.waitpid(pid, 0)
    assert len(set(mine) | set(theirs)) == 100
    assert all(u[14] == "7" and u[19] in "89ab" for u in mine + theirs)  # version 7, variant 10


hexes = st.text(alphabet="0123456789abcdef", min_size=16, max_size=64)


@settings(max_examples=300, deadline=None)
@given(actor=text, tenant=st.none() | text, model=st.none() | text, device=st.none() | text,
       break_glass=st.booleans(), decision=st.sampled_from(["allow", "deny", "maybe"]),
       outcome=st.sampled_from(["ok", "denied", "error"]), error_code=st.none() | text,
       reasons=st.lists(st.text(max_size=20) | st.text(min_size=513, max_size=520), max_size=3),
       input_digest=st.none() | hexes | hexes.map(lambda h: HexDigest(h)) | st.just("raw patient data")
       | hexes.map(lambda h: h + "\n"),
       output_digest=st.none() | hexes | hexes.map(lambda h: HexDigest(h)),
       latency=st.integers(0, 10**9))
def test_a_template_renders_exactly_what_the_event_would(actor, tenant, model, device, break_glass, decision,
                                                         outcome, error_code, reasons, input_digest,
                                                         output_digest, latency) -> None:
    from dataclasses import replace

    from sealinfer.runtime.audit.record import InvalidAuditEventError
    from sealinfer.runtime.audit.template import EventTemplate

    base = AuditEvent(actor=actor, role="clinician", purpose="treatment", action="infer", model_id=model,
                      model_version="1", model_digest="ab" * 32, policy_id="hipaa", policy_version="v1",
                      device=device, tenant=tenant, break_glass=break_glass)
    varying = dict(decision=decision, reasons=reasons, outcome=outcome, error_code=error_code,
                   input_digest=input_digest, output_digest=output_digest, latency_us=latency)
    plain = {k: str(v) if type(v) is HexDigest else v for k, v in varying.items()}  # our digester's marker
    def narrowed() -> str:  # the same request through the template narrowed to its outcome
        ending = EventTemplate(base).ending(decision=decision, reasons=reasons, outcome=outcome, error_code=error_code)
        return ending.render(input_digest, output_digest, latency)

    try:
        expected = replace(base, **plain).to_json()
    except InvalidAuditEventError as exc:
        with pytest.raises(InvalidAuditEventError, match=str(exc).split(" ")[0]):
            EventTemplate(base).render(**varying)
        with pytest.raises(InvalidAuditEventError, match=str(exc).split(" ")[0]):
            narrowed()
    else:
        assert EventTemplate(base).render(**varying) == expected
        assert narrowed() == expected


def test_a_digest_with_a_trailing_newline_is_no_digest() -> None:
    from sealinfer.runtime.audit.record import InvalidAuditEventError

    with pytest.raises(InvalidAuditEventError, match="hex digest"):
        AuditEvent(actor="a", role="clinician", purpose="treatment", action="infer",
                   input_digest="ab" * 32 + "\n").to_json()
