"""HIPAA §164.312 technical safeguards, each judged only on evidence actually found in the stores.

Statuses: EVIDENCE (the stores show the control operating), PARTIAL (some of it is shown; what is
missing is named), NO EVIDENCE (nothing in the stores shows it - said plainly, never passed), FAILED
(the evidence contradicts the control, e.g. the audit chain does not verify).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sealinfer.runtime.reports.evidence import Report

EVIDENCE, PARTIAL, NO_EVIDENCE, FAILED = "EVIDENCE", "PARTIAL", "NO EVIDENCE", "FAILED"

SAFEGUARDS: tuple[tuple[str, str], ...] = (
    ("164.312(a)(1)", "Access control"),
    ("164.312(a)(2)(i)", "Unique user identification"),
    ("164.312(a)(2)(ii)", "Emergency access procedure"),
    ("164.312(a)(2)(iii)", "Automatic logoff"),
    ("164.312(a)(2)(iv)", "Encryption and decryption"),
    ("164.312(b)", "Audit controls"),
    ("164.312(c)(1)/(c)(2)", "Integrity / mechanism to authenticate ePHI"),
    ("164.312(d)", "Person or entity authentication"),
    ("164.312(e)(1)/(e)(2)", "Transmission security"),
)


@dataclass
class SafeguardRow:
    ref: str
    name: str
    status: str
    evidence: list[str] = field(default_factory=list)


def _unverified_note(r: Report) -> str | None:
    if r.integrity == "FAILED":
        return "Drawn from an audit log that FAILED verification: not reliable."
    return None


def assess_safeguards(r: Report) -> list[SafeguardRow]:
    v = r.verification
    rows: dict[str, SafeguardRow] = {ref: SafeguardRow(ref, name, NO_EVIDENCE) for ref, name in SAFEGUARDS}
    deny = r.by_decision.get("deny", 0)
    allow = r.by_decision.get("allow", 0)

    row = rows["164.312(a)(1)"]
    if allow + deny:
        row.status = EVIDENCE
        row.evidence.append(f"{allow + deny} authorization decisions recorded ({allow} allowed, {deny} denied).")
        if r.policies:
            row.evidence.append("Policy versions in force: " + ", ".join(
                f"{p['policy_id']} {p['policy_version']}" for p in r.policies[:8]) + ".")
        if deny == 0:
            row.status = PARTIAL
            row.evidence.append("No denial in the period: the log does not show the policy refusing anything.")
    else:
        row.evidence.append("NO EVIDENCE: no authorization decision was recorded in the period.")

    row = rows["164.312(a)(2)(i)"]
    if r.events:
        row.status = EVIDENCE
        row.evidence.append(f"Every one of {r.events} records names its actor (required by the log); "
                            f"{r.actors} distinct user ids, roles: "
                            + ", ".join(f"{k} {n}" for k, n in r.by_role.items()) + ".")
    else:
        row.evidence.append("NO EVIDENCE: no records in the period.")

    row = rows["164.312(a)(2)(ii)"]
    if r.break_glass_count:
        row.status = EVIDENCE
        row.evidence.append(f"{r.break_glass_count} break-glass (emergency) accesses, each flagged in the log; "
                            "listed below for review.")
    else:
        row.evidence.append("NO EVIDENCE: no emergency (break-glass) access was exercised in the period, so the "
                            "logs cannot show the procedure working.")

    row = rows["164.312(a)(2)(iii)"]
    if r.logoff_events:
        row.status = PARTIAL
        row.evidence.append(f"{r.logoff_events} logoff / session-timeout events recorded.")
    else:
        row.evidence.append("NO EVIDENCE: sealinfer has no interactive sessions (each request is authorized on "
                            "its own); automatic logoff must be evidenced by the calling application.")

    row = rows["164.312(a)(2)(iv)"]
    loaded = [m for m in r.models if m["loads"]]
    if loaded:
        signed = [m for m in loaded if m["signature"] == "valid"]
        row.status = EVIDENCE if len(signed) == len(loaded) else PARTIAL
        row.evidence.append(f"{len(loaded)} model(s) loaded from sealed artifacts (AES-256-GCM, decrypted in memory "
                            f"only); {len(signed)} with a valid signature recorded at load.")
    else:
        row.evidence.append("NO EVIDENCE: no model load was recorded in the period.")
    kek = [k for k in r.keys if k.get("kind") == "kek"]
    if kek:
        row.evidence.append(f"Key-encryption keys: {', '.join(k['id'] for k in kek)}.")
    elif loaded:
        row.evidence.append("No key inventory supplied: key ids and rotation dates are NOT evidenced.")

    row = rows["164.312(b)"]
    if not v["ok"]:
        row.status = FAILED
        where = f" at seq {v['first_bad_seq']}" if v["first_bad_seq"] is not None else ""
        row.evidence.append(f"Audit chain verification FAILED{where}: {v['problem']}")
    else:
        row.status = EVIDENCE if r.integrity == "VERIFIED" else PARTIAL
        row.evidence.append(f"Hash chain of {v['records']} records verified; head hash {v['head_hash']}; "
                            f"Merkle root {v['root']}.")
        if v["checkpoints"]:
            row.evidence.append(f"{v['checkpoints']} Ed25519-signed checkpoints verified (keys "
                                f"{', '.join(v['signer_key_ids'])}); {v['covered']} records covered; last "
                                f"{v['last_checkpoint_time']}.")
        else:
            row.status = PARTIAL
            row.evidence.append("No signed checkpoint: the chain is not anchored by any signature.")
        if r.integrity != "VERIFIED":
            row.evidence.append("Checkpoint keys were NOT independently trusted (read from the log itself).")

    row = rows["164.312(c)(1)/(c)(2)"]
    if not v["ok"]:
        row.status = FAILED
        row.evidence.append("The audit log itself failed its integrity check (see audit controls).")
    elif loaded:
        bad = [m for m in loaded if m["signature"] != "valid"]
        row.status = PARTIAL if bad or r.integrity != "VERIFIED" else EVIDENCE
        row.evidence.append(f"{len(loaded) - len(bad)} of {len(loaded)} loaded models carried a valid signature "
                            "(SHA-256 digest of the plaintext model); records are hash-chained.")
        for m in bad:
            row.evidence.append(f"Model {m['model_id']} {m['model_version']}: signature {m['signature']}.")
    else:
        row.status = PARTIAL if r.events else NO_EVIDENCE
        row.evidence.append("Audit records are hash-chained, but no model load (signature check) was recorded "
                            "in the period." if r.events else "NO EVIDENCE: no records in the period.")

    row = rows["164.312(d)"]
    if r.events:
        row.status = PARTIAL
        row.evidence.append(f"Each request names a principal and role ({r.actors} distinct); unknown principals "
                            "are denied. Authentication itself happens in the calling application and is NOT "
                            "evidenced by these stores.")
    else:
        row.evidence.append("NO EVIDENCE: no records in the period.")

    row = rows["164.312(e)(1)/(e)(2)"]
    if loaded:
        row.status = PARTIAL
        row.evidence.append("Models travel as sealed artifacts (encrypted and signed). Network transport of "
                            "requests (TLS) is outside sealinfer: NO EVIDENCE for it in these stores.")
    else:
        row.evidence.append("NO EVIDENCE: transport encryption is not recorded in these stores.")

    note = _unverified_note(r)
    if note:
        for ref, item in rows.items():
            if ref not in ("164.312(b)", "164.312(c)(1)/(c)(2)"):
                item.evidence.append(note)
                if item.status == EVIDENCE:
                    item.status = PARTIAL
    return list(rows.values())
