"""From acknowledged events to stored records: the fields the log assigns, and the hash chain.

An append is acknowledged as ``(seq, time_ns, event JSON)`` in the journal (:mod:`.journal`): its
position and its time are fixed there, under the log's commit role. The record's canonical body (event
id, time text, format version, then the event) and its entry hash over the previous one are made from
that when it is stored, or recovered after a crash, by :func:`chain`. So the request that asked for
the record does not pay for formatting ids and times or for SHA-256: on a machine where a few-ms model
has just streamed its weights through every cache, each of those costs the request 8-10 µs.

The chain is the same wherever it is computed: ``entry_hash = SHA-256(0x00 || seq (8 bytes, big-endian)
|| prev_hash || body)``, an RFC 9162 leaf (``merkle.leaf_hash(schema.leaf_input(...))``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

from sealinfer.runtime.audit.record import make_body, rfc3339, uuid7

Acked = tuple[int, int, str]  # seq, time in ns since the epoch, canonical event JSON (AuditEvent.to_json)


class Row(NamedTuple):
    """One record as the log stores it."""

    seq: int
    body: str
    prev_hash: bytes
    entry_hash: bytes


_LEAF = hashlib.sha256(b"\x00")  # the Merkle leaf prefix every entry hash starts with


def chain(acked: Iterable[Acked], prev_hash: bytes) -> list[Row]:
    """The records of ``acked`` (consecutive seqs, in order), chained on from ``prev_hash``."""
    rows = []
    for seq, time_ns, event in acked:
        body = make_body(event, uuid7(time_ns // 1_000_000), rfc3339(time_ns))
        h = _LEAF.copy()  # copying a started hash costs less than starting one
        h.update(seq.to_bytes(8, "big"))
        h.update(prev_hash)
        h.update(body.encode())
        entry = h.digest()
        rows.append(Row(seq, body, prev_hash, entry))
        prev_hash = entry
    return rows
