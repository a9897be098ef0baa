"""``AuditLog``: the append-only, hash-chained, checkpointed audit database with group commit.

Group commit is leader/follower (DESIGN.md, Stores): the caller that finds no commit in progress
becomes the leader, takes every pending record, writes them in one transaction and COMMITs inline;
callers arriving meanwhile queue and wait on a condition, and the next one to wake without a receipt
leads the next batch. A lone caller pays one inline commit (no hand-off to a writer thread); many
callers share one. ``append`` returns only after the COMMIT that holds its record, so an acknowledged
record survives a crash of the process (``process``: WAL with synchronous=NORMAL) or of the machine
(``power``: synchronous=FULL, the WAL is fsynced at every commit).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from _thread import LockType
from _thread import allocate_lock as _allocate_lock
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.checkpoint import Checkpoint, sign_checkpoint
from sealinfer.runtime.audit.merkle import Frontier, MerkleTree
from sealinfer.runtime.audit.record import AuditEvent, make_body, rfc3339, uuid7
from sealinfer.runtime.errors import ConfigurationError, StoreError
from sealinfer.runtime.keys.signing import Signer

DURABILITY = {"process": "NORMAL", "power": "FULL"}
_WAL_INTERVAL = 0.5  # seconds between WAL checkpoints (copying the WAL into the main file)
_INSERT = "INSERT INTO audit_events (seq, body, prev_hash, entry_hash) VALUES (?, ?, ?, ?)"
_CHUNK = 64  # rows per multi-row INSERT; the statements for 2..64 rows stay in sqlite3's statement cache


@lru_cache(maxsize=_CHUNK)
def _insert_rows(n: int) -> str:
    return "INSERT INTO audit_events (seq, body, prev_hash, entry_hash) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)


_INSERT_CP = "INSERT INTO audit_checkpoints (tree_size, root, time, key_id, signature) VALUES (?, ?, ?, ?, ?)"


class AuditReceipt(NamedTuple):
    """Proof of acknowledgement: the record's position and hash (hex) once it is committed."""

    seq: int
    entry_hash: str


class _Pending:
    __slots__ = ("done", "error", "next", "payloads", "receipts", "wake")

    def __init__(self, payloads: list[str]) -> None:
        self.payloads = payloads
        self.wake: LockType | None = None  # only a caller that has to wait gets one
        self.receipts: list[AuditReceipt] = []
        self.error: BaseException | None = None
        self.done = False
        self.next: _Pending | None = None  # the next waiter of the same batch, woken by this one


class AuditLog:
    """Append-only audit log in one SQLite file. Thread-safe; one writing ``AuditLog`` per file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signer: Signer | None,
        durability: str = "process",
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        group_commit: bool = True,
    ) -> None:
        if durability not in DURABILITY:
            raise ConfigurationError(f"Unknown audit durability {durability!r}.",
                                     hint="Use 'process' (survives a process crash) or 'power' (fsync).")
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise ConfigurationError("checkpoint_every must be >= 1 and checkpoint_seconds > 0.",
                                     hint="Set audit.checkpoint_every / checkpoint_seconds in the profile.")
        self.path = Path(path)
        self.durability = durability
        self._signer = signer
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self._group = group_commit
        self._conn = schema.connect(self.path, readonly=False)
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)  # signalled when nobody holds the commit role
        self._pending: list[_Pending] = []
        self._committing = False
        self._closed = False
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="audit-housekeeping", daemon=True)
        self._timer.start()

    # --- opening --------------------------------------------------------------------------------

    def _open(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 10000")
        log_id = schema.check_kind(conn, self.path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"Audit log {self.path} cannot use WAL mode (got {mode}).",
                             hint="Put the audit log on a local filesystem that supports shared memory.")
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        # Copying the WAL back into the database (and its fsync) happens in the housekeeping thread,
        # never inside an appender's commit: that is what keeps p99 acknowledgement low.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        if log_id is None:
            log_id = schema.create(conn, rfc3339(time.time_ns()))
        self.log_id = log_id
        self._genesis = schema.genesis_hash(log_id)
        count, last = conn.execute("SELECT count(*), max(seq) FROM audit_events").fetchone()
        if count != (last or 0):
            raise schema.AuditSchemaError(
                f"Audit log {self.path} has {count} records but its last seq is {last}: records were removed.",
                hint="Run `sealinfer audit verify` and restore the log from the retention archive.")
        self._size = count
        self._head = self._genesis
        self._last_ns = 0
        if count:
            body, prev, head, ts = conn.execute(
                "SELECT CAST(body AS BLOB), prev_hash, entry_hash, time FROM audit_events WHERE seq = ?", [count]
            ).fetchone()
            if hashlib.sha256(b"\x00" + schema.leaf_input(count, prev, body)).digest() != head:
                raise schema.AuditSchemaError(
                    f"Audit log {self.path}: the last record (seq {count}) does not match its hash.",
                    hint="Run `sealinfer audit verify` and restore the log from the retention archive.")
            self._head = head
            self._last_ns = _parse_ns(ts)
        leaves = [r[0] for r in conn.execute("SELECT entry_hash FROM audit_events ORDER BY seq")]
        self._frontier = _frontier_of(leaves)
        row = conn.execute("SELECT max(tree_size) FROM audit_checkpoints").fetchone()
        self._cp_size = row[0] or 0
        self._cp_clock = time.monotonic()
        if self._signer is not None:
            self._register_key(self._signer)

    def _register_key(self, signer: Signer) -> None:
        public = signer.public_key_bytes()
        row = self._conn.execute("SELECT public_key FROM audit_keys WHERE key_id = ?", [signer.key_id]).fetchone()
        if row is None:
            with self._conn:
                self._conn.execute("INSERT INTO audit_keys (key_id, public_key, added) VALUES (?, ?, ?)",
                                   [signer.key_id, public, rfc3339(time.time_ns())])
        elif bytes(row[0]) != public:
            raise StoreError(f"Audit log {self.path} already knows key id {signer.key_id!r} with another public key.",
                             hint="Use the keyring that signed this log's checkpoints, or a new key id.")

    # --- appending ------------------------------------------------------------------------------

    def append(self, event: AuditEvent) -> AuditReceipt:
        """Append one record; returns after the COMMIT that holds it."""
        return self._submit([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[AuditReceipt]:
        """Append several records in one transaction (imports, benchmarks)."""
        if not events:
            return []
        return self._submit(list(events))

    def _submit(self, events: list[AuditEvent]) -> list[AuditReceipt]:
        mine = _Pending([e.to_json() for e in events])  # validate and serialise outside the lock
        with self._mutex:
            if self._closed:
                raise StoreError(f"Audit log {self.path} is closed.", hint="Open a new AuditLog.")
            if self._committing:
                mine.wake = _allocate_lock()
                mine.wake.acquire()
                self._pending.append(mine)
                leader = False
            else:
                self._committing = True
                leader = True
                if self._group:
                    batch, self._pending = self._pending, []
                    batch.append(mine)
                else:
                    batch = [mine]
        if not leader:
            assert mine.wake is not None
            try:
                mine.wake.acquire()  # released once: either our record is committed or we lead next
            finally:  # even if interrupted here, the rest of the batch must still be woken
                if mine.done and mine.next is not None:
                    mine.next.wake.release()  # type: ignore[union-attr]
            if not mine.done:
                mine.wake = None  # spent: as the leader it is in its own batch, and nobody wakes a leader
                with self._mutex:
                    if self._group:
                        batch, self._pending = self._pending, []
                    else:  # the naive baseline: one commit per append
                        batch = [mine]
                        self._pending.remove(mine)
                leader = True
        if leader:
            self._lead(batch)
        if mine.error is not None:
            raise StoreError(f"Audit record not written to {self.path}: {mine.error}",
                             hint="Check disk space and permissions; the request must not proceed unaudited.")
        return mine.receipts

    def _lead(self, batch: list[_Pending], *, force_checkpoint: bool = False) -> BaseException | None:
        """Commit ``batch`` (we hold the commit role), wake its waiters, hand the role on or drop it."""
        error: BaseException | None = None
        try:
            self._write(batch, force_checkpoint=force_checkpoint)
        except BaseException as exc:  # every waiter of the batch must learn its record was not written
            error = exc
        with self._mutex:
            # Waiters wake one another in a chain rather than all at once: a crowd woken together only
            # queues again for the GIL, and each of those hand-offs is another context switch.
            first: _Pending | None = None
            for p in reversed(batch):
                p.error = error
                p.done = True
                if p.wake is not None:
                    p.next, first = first, p
            if first is not None:
                first.wake.release()  # type: ignore[union-attr]
            if self._pending:  # hand over: the oldest waiter leads the next batch, nobody else wakes
                self._pending[0].wake.release()  # type: ignore[union-attr]  # queued callers have one
            else:
                self._committing = False
                self._idle.notify_all()
        return error

    def _write(self, batch: list[_Pending], *, force_checkpoint: bool) -> None:
        if not batch and (self._signer is None or self._size <= self._cp_size):
            return  # nothing to commit and nothing to sign
        conn = self._conn
        if len(batch) == 1 and len(batch[0].payloads) == 1 and not force_checkpoint and not self._pending:
            # A lone record: its INSERT in autocommit mode is its own transaction, exactly as durable
            # as BEGIN/INSERT/COMMIT and one statement instead of three (it is the whole cost a lone
            # caller pays). _write_rows opens a transaction itself if a checkpoint falls due.
            self._write_rows(batch, force_checkpoint=False)
            return
        # BEGIN releases the GIL: callers that were serialising records meanwhile queue up, and the
        # leader takes them into this same transaction (no sleep, no thread hand-off).
        conn.execute("BEGIN IMMEDIATE")
        try:
            # No SELECT max(seq) per commit: a second writer shows up as a seq primary-key conflict on
            # INSERT inside this same transaction (see _write_rows), at no cost to the common case.
            if self._group:
                with self._mutex:
                    if self._pending:
                        batch.extend(self._pending)
                        self._pending = []
            self._write_rows(batch, force_checkpoint=force_checkpoint)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_rows(self, batch: list[_Pending], *, force_checkpoint: bool) -> None:
        now = max(time.time_ns(), self._last_ns)  # times never go backwards along the chain
        ts = rfc3339(now)
        ms = now // 1_000_000
        seq, prev = self._size + 1, self._head
        frontier = self._frontier.copy()
        sha = hashlib.sha256
        rows = []
        for p in batch:
            receipts = []
            for payload in p.payloads:
                body = make_body(payload, uuid7(ms), ts)
                entry = sha(b"\x00" + seq.to_bytes(8, "big") + prev + body.encode()).digest()
                rows.append((seq, body, prev, entry))
                frontier.append(entry)
                receipts.append(AuditReceipt(seq, entry.hex()))
                prev = entry
                seq += 1
            p.receipts = receipts
        size = seq - 1
        checkpoint = None
        if self._signer is not None and size > self._cp_size and (
            force_checkpoint or size - self._cp_size >= self._every
            or time.monotonic() - self._cp_clock >= self._seconds
        ):
            checkpoint = sign_checkpoint(self._signer, self.log_id, size, frontier.root(), ts)
        conn = self._conn
        opened = checkpoint is not None and not conn.in_transaction
        if opened:  # a lone record that falls due for a checkpoint: both commit together or not at all
            conn.execute("BEGIN IMMEDIATE")
        try:
            if len(rows) == 1:
                conn.execute(_INSERT, rows[0])
            else:
                # One multi-row INSERT per chunk, not executemany: executemany releases and retakes
                # the GIL at every row, and with many appending threads each release hands the GIL
                # to another thread, so the leader's commit crawled behind its own followers.
                for start in range(0, len(rows), _CHUNK):
                    chunk = rows[start:start + _CHUNK]
                    conn.execute(_insert_rows(len(chunk)), [v for row in chunk for v in row])
            if checkpoint is not None:
                conn.execute(_INSERT_CP, [checkpoint.tree_size, checkpoint.root, checkpoint.time,
                                          checkpoint.key_id, checkpoint.signature])
        except sqlite3.IntegrityError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
            raise StoreError(f"Another writer appended to {self.path} (last seq {last}, expected {self._size}).",
                             hint="Only one process may write an audit log; give each its own file.") from None
        except BaseException:
            if opened and conn.in_transaction:  # a transaction _write opened is _write's to roll back
                conn.execute("ROLLBACK")
            raise
        if conn.in_transaction:  # otherwise the lone INSERT was its own (autocommit) transaction
            conn.execute("COMMIT")
        self._size, self._head, self._frontier, self._last_ns = size, prev, frontier, now
        if checkpoint is not None:
            self._cp_size = size
            self._cp_clock = time.monotonic()

    # --- checkpoints and closing ----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Sign a checkpoint now if records were appended since the last one (and commit pending ones)."""
        if self._signer is None:
            raise ConfigurationError("This audit log has no signer, so it cannot write checkpoints.",
                                     hint="Open it with signer=keyring.signer().")
        self._take_lead_and_flush(final=False)

    def _take_lead_and_flush(self, *, final: bool) -> None:
        with self._mutex:
            if self._closed:
                return
            if final:  # refuse new appends at once; those already queued are still committed
                self._closed = True
            while self._committing:
                self._idle.wait()
            self._committing = True
            batch, self._pending = self._pending, []
        error = self._lead(batch, force_checkpoint=self._signer is not None)
        if error is not None:
            raise StoreError(f"Could not commit the audit log's pending records or checkpoint: {error}",
                             hint="Check disk space and permissions of the audit log's folder.")

    def _tick(self) -> None:
        """Housekeeping: copy the WAL into the database and sign time-based checkpoints."""
        wal = schema.connect(self.path, readonly=False)
        try:
            wal.execute("PRAGMA busy_timeout = 1000")
            while not self._stop.wait(min(self._seconds, _WAL_INTERVAL)):
                try:
                    wal.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # busy: the next tick retries; readers may hold old snapshots
                    pass
                if (self._signer is not None and self._size > self._cp_size
                        and time.monotonic() - self._cp_clock >= self._seconds):
                    try:
                        self._take_lead_and_flush(final=False)
                    except StoreError:  # the next append or close retries; never kill the process from here
                        pass
        finally:
            wal.close()

    def close(self) -> None:
        """Commit pending records, sign a final checkpoint (with a signer), and close the file."""
        if self._closed:
            return
        self._stop.set()
        self._timer.join()
        self._take_lead_and_flush(final=True)
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def head_hash(self) -> str:
        return self._head.hex()

    def latest_checkpoint(self) -> Checkpoint | None:
        conn = schema.connect(self.path, readonly=True)  # the writer's connection belongs to the leader
        try:
            row = conn.execute(
                "SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints "
                "ORDER BY tree_size DESC LIMIT 1").fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        return Checkpoint(self.log_id, row[0], bytes(row[1]), row[2], row[3], bytes(row[4]))


def _parse_ns(text: str) -> int:
    from sealinfer.runtime.audit.record import parse_rfc3339

    moment = parse_rfc3339(text)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _frontier_of(leaves: list[bytes]) -> Frontier:
    """The frontier of a tree over ``leaves``, from complete-subtree levels (fast on reopen)."""
    frontier = Frontier()
    if not leaves:
        return frontier
    tree = MerkleTree(leaves)
    n, start = len(leaves), 0
    for height in range(n.bit_length() - 1, -1, -1):
        if n >> height & 1:
            frontier.nodes.append((height, tree.levels[height][start >> height]))
            start += 1 << height
    frontier.size = n
    return frontier
