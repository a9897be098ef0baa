"""One audit record: the event a caller describes, and the exact bytes the log hashes.

The log stores each record's *canonical body* verbatim and hashes those stored bytes, so verification
never re-serialises anything (a JSON library upgrade in six years cannot break an old chain). The body
is ASCII JSON: first the fields the log assigns (``event_id``, ``time``, format ``v``), then the event's
own fields with sorted keys, no whitespace. Only digests of inputs and outputs are accepted (hex
strings); anything that looks like raw data is refused so patient data cannot leak into the log.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _ascii  # the C string encoder json.dumps uses
from typing import Any

from sealinfer.runtime.errors import StoreError

FORMAT_VERSION = 1
DECISIONS = frozenset({"allow", "deny"})
OUTCOMES = frozenset({"ok", "denied", "error"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{16,128}\Z")  # match() anchors the start; \Z, unlike $, no newline
_MODEL_DIGEST = re.compile(r"^(sha256:)?[0-9a-f]{16,128}$")
_TEXT_LIMIT = 512  # ids, names and reasons; longer values are a bug (or data) in the caller


class InvalidAuditEventError(StoreError):
    """An ``AuditEvent`` is malformed (wrong type, empty identity, non-digest where a digest belongs)."""

    code = "audit_event_invalid"


@dataclass(slots=True)
class AuditEvent:
    """What happened, who did it, why, and under which policy. The log adds seq, event id and time."""

    actor: str
    role: str
    purpose: str
    action: str
    model_id: str | None = None
    model_version: str | None = None
    model_digest: str | None = None
    policy_id: str | None = None
    policy_version: str | None = None
    decision: str = "allow"
    reasons: list[str] = field(default_factory=list)
    outcome: str = "ok"
    error_code: str | None = None
    device: str | None = None
    input_digest: str | None = None
    output_digest: str | None = None
    latency_us: int | None = None
    tenant: str | None = None
    break_glass: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Validated canonical JSON of the event's own fields (sorted keys, ASCII, no whitespace).

        Byte-for-byte what ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True)``
        gives (a property test holds it to that), written out field by field because this runs on
        every request and the generic encoder costs several times more.
        """
        _validate(self)
        if self.details:
            try:
                details = json.dumps(self.details, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                     allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidAuditEventError(
                    f"Audit event details are not JSON-safe ({exc}).",
                    hint="Pass only str/int/float/bool/None, lists and dicts with string keys in details.",
                ) from None
        else:
            details = "{}"
        s = _string
        return (
            f'{{"action":{s(self.action)},"actor":{s(self.actor)},'
            f'"break_glass":{"true" if self.break_glass else "false"},"decision":{s(self.decision)},'
            f'"details":{details},"device":{s(self.device)},"error_code":{s(self.error_code)},'
            f'"input_digest":{s(self.input_digest)},'
            f'"latency_us":{"null" if self.latency_us is None else int.__repr__(self.latency_us)},'
            f'"model_digest":{s(self.model_digest)},"model_id":{s(self.model_id)},'
            f'"model_version":{s(self.model_version)},"outcome":{s(self.outcome)},'
            f'"output_digest":{s(self.output_digest)},"policy_id":{s(self.policy_id)},'
            f'"policy_version":{s(self.policy_version)},"purpose":{s(self.purpose)},'
            f'"reasons":[{",".join(map(_ascii, self.reasons))}],"role":{s(self.role)},"tenant":{s(self.tenant)}}}'
        )


def _string(value: str | None) -> str:
    return "null" if value is None else _ascii(value)


def _bad(message: str, hint: str) -> InvalidAuditEventError:
    return InvalidAuditEventError(message, hint=hint)


def _validate(ev: AuditEvent) -> None:
    if not _plainly_valid(ev):
        _explain(ev)


def _short(value: object) -> bool:
    return value is None or (type(value) is str and len(value) <= _TEXT_LIMIT)


def _plainly_valid(ev: AuditEvent) -> bool:
    """A strict, cheap test that accepts the everyday event (it runs on every request).

    It accepts nothing that :func:`_explain` would refuse; whatever it does not accept, ``_explain``
    checks field by field and names the first problem.
    """
    return bool(
        type(ev.actor) is str and type(ev.role) is str and type(ev.purpose) is str and type(ev.action) is str
        and ev.actor.strip() != "" and ev.role.strip() != "" and ev.purpose.strip() != ""
        and ev.action.strip() != "" and len(ev.actor) <= _TEXT_LIMIT and len(ev.role) <= _TEXT_LIMIT
        and len(ev.purpose) <= _TEXT_LIMIT and len(ev.action) <= _TEXT_LIMIT
        and _short(ev.model_id) and _short(ev.model_version) and _short(ev.policy_id)
        and _short(ev.policy_version) and _short(ev.error_code) and _short(ev.device) and _short(ev.tenant)
        and ev.decision in DECISIONS and ev.outcome in OUTCOMES
        and (ev.input_digest is None or (type(ev.input_digest) is str and _HEX_DIGEST.match(ev.input_digest)))
        and (ev.output_digest is None or (type(ev.output_digest) is str and _HEX_DIGEST.match(ev.output_digest)))
        and (ev.model_digest is None or (type(ev.model_digest) is str and _MODEL_DIGEST.match(ev.model_digest)))
        and type(ev.reasons) is list and all(type(r) is str and len(r) <= _TEXT_LIMIT for r in ev.reasons)
        and type(ev.break_glass) is bool
        and (ev.latency_us is None or (type(ev.latency_us) is int and ev.latency_us >= 0))
        and type(ev.details) is dict and not ev.details
    )


def _explain(ev: AuditEvent) -> None:
    for name in ("actor", "role", "purpose", "action"):
        value = getattr(ev, name)
        if not isinstance(value, str) or not value.strip():
            raise _bad(f"Audit event field {name!r} must be a non-empty string, got {value!r}.",
                       "Every record must say who acted, in which role, for what purpose, doing what.")
    for name in ("actor", "role", "purpose", "action", "model_id", "model_version", "policy_id",
                 "policy_version", "error_code", "device", "tenant"):
        value = getattr(ev, name)
        if value is not None and (not isinstance(value, str) or len(value) > _TEXT_LIMIT):
            raise _bad(f"Audit event field {name!r} must be a string of at most {_TEXT_LIMIT} characters.",
                       "Record identifiers here, never data.")
    if ev.decision not in DECISIONS:
        raise _bad(f"Audit decision {ev.decision!r} is not one of {sorted(DECISIONS)}.", "Use allow or deny.")
    if ev.outcome not in OUTCOMES:
        raise _bad(f"Audit outcome {ev.outcome!r} is not one of {sorted(OUTCOMES)}.",
                   "Use ok, denied or error.")
    for name in ("input_digest", "output_digest"):
        value = getattr(ev, name)
        if value is not None and (not isinstance(value, str) or not _HEX_DIGEST.match(value)):
            raise _bad(f"Audit field {name!r} must be a lowercase hex digest (16-128 hex digits).",
                       "Store a keyed HMAC digest of the tensor, never the tensor itself.")
    if ev.model_digest is not None and (
        not isinstance(ev.model_digest, str) or not _MODEL_DIGEST.match(ev.model_digest)
    ):
        raise _bad("Audit field 'model_digest' must be a hex SHA-256 digest (optionally 'sha256:'-prefixed).",
                   "Pass the manifest's plaintext digest.")
    if not isinstance(ev.reasons, list | tuple) or not all(
        isinstance(r, str) and len(r) <= _TEXT_LIMIT for r in ev.reasons
    ):
        raise _bad("Audit field 'reasons' must be a list of short strings.", "Pass reason codes or sentences.")
    if not isinstance(ev.break_glass, bool):
        raise _bad("Audit field 'break_glass' must be a bool.", "Pass Caller.break_glass.")
    if ev.latency_us is not None and (isinstance(ev.latency_us, bool) or not isinstance(ev.latency_us, int)
                                      or ev.latency_us < 0):
        raise _bad("Audit field 'latency_us' must be a non-negative int (microseconds).", "Round it.")
    if not isinstance(ev.details, dict):
        raise _bad("Audit field 'details' must be a dict.", "Wrap the value in a dict with a descriptive key.")
    for value in ev.details.values():
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad("Audit details contain a NaN or infinite number.", "Record None instead.")


# --- assigned fields ---------------------------------------------------------------------------


class _RandomTails:
    """The random part of UUIDv7s ("7xxx-yxxx-xxxxxxxxxxxx": version, 74 random bits, variant), made
    256 at a time from one ``os.urandom`` read: a getrandom(2) costs ~9 µs in a VM, and formatting
    ahead leaves each id one list pop and one join. Dropped after ``fork`` so parent and child never
    hand out the same bits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tails: list[str] = []

    def take(self) -> str:
        while True:
            try:
                return self._tails.pop()  # atomic: two threads never get the same tail
            except IndexError:
                with self._lock:
                    if not self._tails:
                        self._tails = _tails(os.urandom(10 * 256))

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._tails = []


def _tails(random: bytes) -> list[str]:
    out = []
    for i in range(0, len(random) - 9, 10):
        r = random[i:i + 10]
        h = (bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F))) + r[3:]).hex()
        out.append(f"{h[:4]}-{h[4:8]}-{h[8:]}")
    return out


_TAILS = _RandomTails()
os.register_at_fork(after_in_child=_TAILS.reset)


def uuid7(unix_ms: int) -> str:
    """An RFC 9562 UUIDv7 string: 48-bit Unix milliseconds, version 7, variant 10, 74 random bits."""
    ms = f"{unix_ms & 0xFFFF_FFFF_FFFF:012x}"
    return f"{ms[:8]}-{ms[8:]}-{_TAILS.take()}"


def rfc3339(time_ns: int) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``: fixed width, so strings sort like times."""
    global _second_text
    seconds, rest = divmod(time_ns, 1_000_000_000)
    cached = _second_text
    if cached[0] != seconds:  # formatting the date is most of the cost; it changes once a second
        cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
        _second_text = cached  # one tuple swap: threads see the old or the new pair, never a mix
    return f"{cached[1]}.{rest // 1000:06d}Z"


_second_text: tuple[int, str] = (-1, "")


def to_rfc3339(moment: datetime) -> str:
    """Format a datetime (naive means UTC) in the log's time format, for range comparisons."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond:06d}Z"


def parse_rfc3339(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"{text!r} is not an RFC 3339 time.", hint="Use e.g. 2026-01-31T00:00:00Z.") from None


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of a time in the log's format (microsecond precision)."""
    moment = parse_rfc3339(text)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def make_body(event_json: str, event_id: str, time_text: str) -> str:
    """The canonical body: assigned fields first, then the event's sorted fields."""
    return f'{{"event_id":"{event_id}","time":"{time_text}","v":{FORMAT_VERSION},{event_json[1:]}'
