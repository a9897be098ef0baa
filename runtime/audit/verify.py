"""``verify_log``: re-derive the whole chain, the Merkle roots and every checkpoint signature.

One pass over the stored bytes: each record's hash is recomputed from ``seq || prev_hash || body``
(hashlib in a tight loop, no JSON parsing), the Merkle tree is built level by level, and each signed
checkpoint's root is then an O(log n) lookup. The result names the first record that cannot be
trusted and why; it never reports integrity it did not check (keys read from the log itself are
reported as *not independently trusted*).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.checkpoint import Checkpoint, verify_trusted, verify_with_key
from sealinfer.runtime.audit.journal import pending_records
from sealinfer.runtime.audit.merkle import MerkleTree
from sealinfer.runtime.errors import SealinferError
from sealinfer.runtime.keys.signing import TrustStore


@dataclass
class VerifyResult:
    ok: bool
    records: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None
    checkpoints: int
    last_checkpoint_time: str | None
    log_id: str = ""
    root: str = ""
    #: records covered by the newest checkpoint whose root and signature verified
    covered: int = 0
    #: every checkpoint verified against keys from a trust store (not keys stored in the log)
    keys_trusted: bool = False
    signer_key_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok:
            where = f" at seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
            return f"FAILED{where}: {self.problem}"
        trust = "trusted keys" if self.keys_trusted else "keys NOT independently trusted"
        return (f"OK: {self.records} records, head {self.head_hash[:16]}..., {self.checkpoints} checkpoints "
                f"({trust}), {self.covered} records covered by a signed checkpoint")


def walk(rows: Iterable[tuple[int, bytes, bytes, bytes]], genesis: bytes | None, start: int = 1
         ) -> tuple[list[bytes], tuple[int, str] | None, bytes]:
    """Recompute every entry hash; return (leaves, first chain problem, last stored entry hash).

    ``genesis`` is the prev_hash the first record must carry; None accepts the first record's own
    (a later range of a split verification; the caller checks that link).
    """
    sha = hashlib.sha256
    leaves: list[bytes] = []
    append = leaves.append
    it = iter(rows)
    prev, expected = genesis, start
    problem: tuple[int, str] | None = None
    if prev is None:
        first = next(it, None)
        if first is None:
            return leaves, None, b""
        prev = _b(first[2])
        it = itertools.chain([first], it)
    for seq, body, prev_hash, entry_hash in it:
        if seq != expected or prev_hash != prev:
            if seq != expected:
                problem = (expected, f"record {expected} is missing (the next record is seq {seq}): "
                                     "records were deleted or renumbered")
            else:
                problem = (seq, f"record {seq}: prev_hash does not match the hash of record {seq - 1}: "
                                "the chain is broken (a record was inserted, removed, reordered or altered)")
            append(sha(b"\x00" + seq.to_bytes(8, "big") + _b(prev_hash) + _b(body)).digest())
            prev = _b(entry_hash)
            break
        h = sha(b"\x00" + seq.to_bytes(8, "big") + prev + body).digest()
        append(h)
        if h != entry_hash:
            problem = (seq, f"record {seq}: its seq, prev_hash or body does not match its entry_hash: "
                            "the record was altered")
            prev = _b(entry_hash)
            break
        prev = h
        expected += 1
    for seq, body, prev_hash, entry_hash in it:  # after the first problem: only count and hash
        append(sha(b"\x00" + seq.to_bytes(8, "big") + _b(prev_hash) + _b(body)).digest())
        prev = _b(entry_hash)
    return leaves, problem, prev


_SELECT_RANGE = ("SELECT seq, CAST(body AS BLOB), prev_hash, entry_hash FROM audit_events "
                 "WHERE seq > ? AND seq <= ? ORDER BY seq")
_PARALLEL_MIN = 200_000  # below this a second process costs more than it saves


def _walk_range(db_path: str | os.PathLike[str], lo: int, hi: int, genesis: bytes | None, start: int
                ) -> tuple[list[bytes], tuple[int, str] | None, bytes, bytes | None]:
    conn = schema.connect(db_path, readonly=True)
    try:
        first = conn.execute("SELECT prev_hash FROM audit_events WHERE seq > ? ORDER BY seq LIMIT 1", [lo]).fetchone()
        leaves, problem, last = walk(conn.execute(_SELECT_RANGE, [lo, hi]), genesis, start)
    finally:
        conn.close()
    return leaves, problem, last, _b(first[0]) if first else None


def _child(db_path: str, lo: int, hi: int, pipe: Any) -> None:
    try:
        leaves, problem, last, first_prev = _walk_range(db_path, lo, hi, None, lo + 1)
        pipe.send((b"".join(leaves), len(leaves), problem, last, first_prev))
    except BaseException as exc:  # reported, and the parent falls back to one process
        pipe.send(exc)
    finally:
        pipe.close()


def _read_chain(db_path: str | os.PathLike[str], genesis: bytes, last_seq: int
                ) -> tuple[list[bytes], tuple[int, str] | None, bytes]:
    """Walk the chain; on a big log and a free second core, the upper half is hashed in a forked process."""
    bottom, top = -(1 << 63), (1 << 63) - 1
    parallel = (last_seq >= _PARALLEL_MIN and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1
                and "fork" in multiprocessing.get_all_start_methods())
    if not parallel:
        leaves, problem, last, _ = _walk_range(db_path, bottom, top, genesis, 1)
        return leaves, problem, last
    mid = last_seq // 2
    ctx = multiprocessing.get_context("fork")  # only with no other thread alive (checked above)
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(str(db_path), mid, top, sender), daemon=True)
    child.start()
    sender.close()
    leaves, problem, last, _ = _walk_range(db_path, bottom, mid, genesis, 1)
    try:
        message = receiver.recv()
    except EOFError:
        message = RuntimeError("verification worker exited")
    child.join()
    if isinstance(message, BaseException):
        leaves, problem, last, _ = _walk_range(db_path, bottom, top, genesis, 1)
        return leaves, problem, last
    buf, count, upper_problem, upper_last, first_prev = message
    if count:
        if problem is None and first_prev != last:
            problem = (mid + 1, f"record {mid + 1}: prev_hash does not match the hash of record {mid}: the chain "
                                "is broken (a record was inserted, removed, reordered or altered)")
        problem = problem or upper_problem
        leaves.extend(buf[i:i + 32] for i in range(0, len(buf), 32))
        last = upper_last
    return leaves, problem, last


def _b(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b"" if value is None else str(value).encode()


def verify_log(
    db_path: str | os.PathLike[str],
    trust_store: TrustStore | None = None,
    *,
    external_checkpoints: Sequence[Checkpoint] = (),
) -> VerifyResult:
    """Verify the chain, every checkpoint signature and Merkle root (and exported checkpoints, if given).

    Raises ``StoreError`` only when the file is not an audit log; tampering is reported in the result.
    """
    conn, log_id = schema.open_readonly(db_path)
    try:
        last_seq = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
        keys = {k: bytes(v) for k, v in conn.execute("SELECT key_id, public_key FROM audit_keys")}
        stored = [Checkpoint(log_id, int(r[0]), _b(r[1]), str(r[2]), str(r[3]), _b(r[4])) for r in conn.execute(
            "SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints ORDER BY tree_size")]
    finally:
        conn.close()
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived row tuples: generational GC passes would cost ~10 %
    try:
        leaves, chain_problem, head = _read_chain(db_path, schema.genesis_hash(log_id), last_seq)
        result = assess(log_id, leaves, chain_problem, head, keys, stored, trust_store, external_checkpoints)
        try:
            waiting = pending_records(Path(db_path), last_seq)
        except schema.AuditSchemaError as exc:  # the database verified; what waits beside it cannot be read
            waiting = 0
            what_to_do = f" {exc.hint}" if exc.hint else ""
            result.warnings.append(f"the audit journal next to this database cannot be read: {exc}{what_to_do}")
        if waiting:
            result.warnings.append(
                f"{waiting:,} acknowledged record(s) wait in the audit journal and are not in this database yet "
                "(its writer is running, or crashed): they are stored when the log is next opened for writing, "
                "or by `sealinfer audit recover`")
        return result
    except sqlite3.DatabaseError as exc:
        return _failed(log_id, f"the database file is corrupt ({exc})")
    finally:
        if collecting:
            gc.enable()


def assess(log_id: str, leaves: list[bytes], chain_problem: tuple[int, str] | None, head: bytes,
           keys: dict[str, bytes], stored: list[Checkpoint], trust_store: TrustStore | None,
           external_checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult:
    """Judge a walked chain against its checkpoints (shared by ``verify_log`` and archive verification)."""
    n = len(leaves)
    tree = MerkleTree(leaves)
    problems: list[tuple[int | None, str]] = []
    warnings: list[str] = []
    if chain_problem is not None:
        problems.append(chain_problem)
    chain_ok_upto = chain_problem[0] - 1 if chain_problem else n
    covered = 0
    signers: list[str] = []
    trusted_all = trust_store is not None
    cps = [(cp, "checkpoint") for cp in stored] + [(cp, "exported checkpoint") for cp in external_checkpoints]
    cps.sort(key=lambda item: item[0].tree_size)
    for cp, label in cps:
        where = f"{label} at tree size {cp.tree_size} (key {cp.key_id!r}, {cp.time})"
        if cp.log_id != log_id:
            problems.append((None, f"{where} belongs to another log ({cp.log_id})"))
            continue
        try:
            if trust_store is not None:
                verify_trusted(cp, trust_store)
            elif cp.key_id in keys:
                verify_with_key(cp, keys[cp.key_id])
            else:
                problems.append((None, f"{where}: its public key is neither in the log nor in a trust store"))
                continue
        except SealinferError as exc:
            problems.append((None, f"{where}: {exc.message}"))
            continue
        if cp.key_id not in signers:
            signers.append(cp.key_id)
        if cp.tree_size > n:
            problems.append((n + 1, f"the log ends at seq {n} but a {where} covers {cp.tree_size} records: "
                                    f"records {n + 1}..{cp.tree_size} were removed (truncated)"))
            continue
        if cp.tree_size > chain_ok_upto:
            continue  # already explained by the chain problem
        if tree.root(cp.tree_size) != cp.root:
            problems.append((covered + 1, f"records {covered + 1}..{cp.tree_size} do not match the Merkle root "
                                          f"signed in the {where}: history was rewritten"))
            continue
        covered = max(covered, cp.tree_size)

    if not stored:
        warnings.append("the log holds no signed checkpoint: records are chained but no signature anchors them")
    elif covered < n and not problems:
        warnings.append(f"records {covered + 1}..{n} are not yet covered by a signed checkpoint "
                        "(normal after a crash; a later checkpoint or close() covers them)")
    if trust_store is None and stored:
        warnings.append("checkpoint signatures were checked against public keys stored in the log itself, "
                        "not independently trusted keys; pass the keyring's trust store to rule out re-signing")
        trusted_all = False
    keyed = [p for p in problems if p[0] is not None]
    first = min(keyed, key=lambda p: p[0]) if keyed else (problems[0] if problems else None)  # type: ignore[arg-type]
    return VerifyResult(
        ok=not problems, records=n, head_hash=head.hex() if n else "", first_bad_seq=first[0] if first else None,
        problem=first[1] if first else None, checkpoints=len(stored),
        last_checkpoint_time=stored[-1].time if stored else None, log_id=log_id,
        root=tree.root().hex(), covered=covered, keys_trusted=trusted_all and bool(stored) and not problems,
        signer_key_ids=signers, problems=[p[1] for p in problems], warnings=warnings,
    )


def _failed(log_id: str, problem: str) -> VerifyResult:
    return VerifyResult(ok=False, records=0, head_hash="", first_bad_seq=None, problem=problem, checkpoints=0,
                        last_checkpoint_time=None, log_id=log_id, problems=[problem])
