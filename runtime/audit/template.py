"""``EventTemplate``: the canonical JSON of one caller's requests to one model, validated once.

A session's requests differ only in decision, reasons, outcome, error code, digests and latency;
who asked, for what, under which policy and on which device stay the same. The template checks and
encodes those fixed fields once (through :meth:`AuditEvent.to_json`'s own checks) and then renders
each request with one string join. ``render`` gives byte for byte what ``AuditEvent.to_json`` gives
for the same fields (a property test holds it to that); anything it would have to think about
(a reason too long, a digest that is not hex) goes through the full path and its error.

:meth:`EventTemplate.ending` narrows a template further to requests that end one way (allowed for
these reasons and served, say): an :class:`OutcomeTemplate`, where only the digests and the latency
are left to fill in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from json.encoder import encode_basestring_ascii as _ascii

from sealinfer.runtime.audit.record import (
    _HEX_DIGEST,
    _TEXT_LIMIT,
    DECISIONS,
    OUTCOMES,
    AuditEvent,
)


class RenderedEvent(str):
    """Canonical event JSON produced by a template (only these may skip ``AuditEvent`` on append)."""

    __slots__ = ()


class HexDigest(str):
    """A lowercase hex SHA-256 digest as the runtime's own keyed digester made it (templates skip re-checking)."""

    __slots__ = ()


class EventTemplate:
    """Fixed fields of ``base``; ``render`` supplies the per-request ones."""

    __slots__ = ("_base", "_parts")

    def __init__(self, base: AuditEvent) -> None:
        self._base = replace(base, decision="allow", reasons=[], outcome="ok", error_code=None, input_digest=None,
                             output_digest=None, latency_us=0)
        # to_json validates the fixed fields; the markers split its text
        self._parts = _split(self._base.to_json(), ('"decision":"allow"', '"error_code":null', '"input_digest":null',
                                                    '"latency_us":0', '"outcome":"ok"', '"output_digest":null',
                                                    '"reasons":[]'))

    def ending(self, *, decision: str, reasons: Sequence[str], outcome: str,
               error_code: str | None = None) -> OutcomeTemplate:
        """This template narrowed to requests with this decision, these reasons and this outcome.

        Raises ``InvalidAuditEventError`` for values ``AuditEvent`` refuses, as ``render`` would.
        """
        return OutcomeTemplate(self, replace(self._base, decision=decision, reasons=list(reasons), outcome=outcome,
                                             error_code=error_code))

    def render(self, *, decision: str, reasons: list[str], outcome: str, error_code: str | None,
               input_digest: str | None, output_digest: str | None, latency_us: int) -> RenderedEvent:
        if not (decision in DECISIONS and outcome in OUTCOMES and type(latency_us) is int and latency_us >= 0
                and (error_code is None or (type(error_code) is str and len(error_code) <= _TEXT_LIMIT))
                and _is_digest(input_digest) and _is_digest(output_digest)
                and all(type(r) is str and len(r) <= _TEXT_LIMIT for r in reasons)):
            # the full path names the problem (or, for a reason list that is merely a tuple, accepts it)
            return RenderedEvent(replace(
                self._base, decision=decision, reasons=list(reasons), outcome=outcome, error_code=error_code,
                input_digest=None if input_digest is None else str(input_digest),
                output_digest=None if output_digest is None else str(output_digest), latency_us=latency_us,
            ).to_json())
        p = self._parts
        digest_in = _quoted(input_digest)
        digest_out = _quoted(output_digest)
        return RenderedEvent(
            f'{p[0]}"{decision}"{p[1]}{"null" if error_code is None else _ascii(error_code)}'
            f'{p[2]}{digest_in}{p[3]}{latency_us}{p[4]}"{outcome}"{p[5]}{digest_out}'
            f'{p[6]}[{",".join(map(_ascii, reasons))}]{p[7]}'
        )


class OutcomeTemplate:
    """One caller's requests that end one way: ``render`` fills in the digests and the latency.

    Made by :meth:`EventTemplate.ending`; renders byte for byte what the event template's ``render``
    gives for the same fields (a property test holds it to that).
    """

    __slots__ = ("_event", "_fixed", "_parts")

    def __init__(self, event: EventTemplate, fixed: AuditEvent) -> None:
        self._event = event
        self._fixed = fixed
        self._parts = _split(fixed.to_json(), ('"input_digest":null', '"latency_us":0', '"output_digest":null'))

    def render(self, input_digest: str | None, output_digest: str | None, latency_us: int) -> RenderedEvent:
        p = self._parts
        if type(input_digest) is HexDigest and type(output_digest) is HexDigest and type(latency_us) is int \
                and latency_us >= 0:  # the runtime's own request: nothing to check or escape
            return RenderedEvent(f'{p[0]}"{input_digest}"{p[1]}{latency_us}{p[2]}"{output_digest}"{p[3]}')
        f = self._fixed  # anything else: the event template checks it (and names a problem)
        return self._event.render(decision=f.decision, reasons=f.reasons, outcome=f.outcome, error_code=f.error_code,
                                  input_digest=input_digest, output_digest=output_digest, latency_us=latency_us)


def _split(canonical: str, markers: tuple[str, ...]) -> tuple[str, ...]:
    """``canonical`` cut at each marker (``"field":value``, in key order), each piece ending in ``"field":``."""
    parts: list[str] = []
    rest = canonical
    for marker in markers:
        head, found, rest = rest.partition(marker)
        if not found:  # pragma: no cover - to_json's layout changed; the property test fails first
            raise AssertionError(f"canonical JSON lost field {marker}")
        parts.append(head + marker.split(":", 1)[0] + ":")
    parts.append(rest)
    return tuple(parts)


def _quoted(digest: str | None) -> str:
    if digest is None:
        return "null"
    return '"' + digest + '"' if type(digest) is HexDigest else _ascii(digest)  # our hex needs no escaping


def _is_digest(value: object) -> bool:
    """None, a digest of our own digester, or a string the record's digest pattern accepts (hex: no escaping)."""
    return value is None or type(value) is HexDigest or (type(value) is str and bool(_HEX_DIGEST.match(value)))
