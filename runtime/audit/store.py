"""``AuditStore``: the SQLite side of the audit log: stored records, the Merkle frontier, checkpoints.

Only the log's writer (its background thread, or ``flush``/``close`` under the same lock) calls it.
Records arrive already chained and acknowledged (see :mod:`.journal`); this stores them in batches,
signs a checkpoint every ``checkpoint_every`` records (exactly at those tree sizes), after
``checkpoint_seconds``, and on demand, each in the same transaction as the records it covers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.chain import Row
from sealinfer.runtime.audit.checkpoint import Checkpoint, sign_checkpoint
from sealinfer.runtime.audit.merkle import Frontier, MerkleTree, leaf_hash
from sealinfer.runtime.audit.record import rfc3339, rfc3339_ns
from sealinfer.runtime.errors import StoreError
from sealinfer.runtime.keys.signing import Signer

DURABILITY = {"process": "NORMAL", "power": "FULL"}
_CHUNK = 64  # rows per multi-row INSERT; the statements for 1..64 rows stay in sqlite3's statement cache
_INSERT_CP = "INSERT INTO audit_checkpoints (tree_size, root, time, key_id, signature) VALUES (?, ?, ?, ?, ?)"


@lru_cache(maxsize=_CHUNK)
def _insert_rows(n: int) -> str:
    return "INSERT INTO audit_events (seq, body, prev_hash, entry_hash) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)


class AuditStore:
    """One audit database opened for writing. Not thread-safe: its owner serialises calls."""

    def __init__(self, path: Path, *, signer: Signer | None, durability: str, checkpoint_every: int,
                 checkpoint_seconds: float) -> None:
        self.path = path
        self._signer = signer
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self.conn = schema.connect(path, readonly=False)
        try:
            self._open(durability)
        except BaseException:
            self.conn.close()
            raise

    def _open(self, durability: str) -> None:
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 10000")
        log_id = schema.check_kind(conn, self.path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"Audit log {self.path} cannot use WAL mode (got {mode}).",
                             hint="Put the audit log on a local filesystem that supports shared memory.")
        conn.execute(f"PRAGMA synchronous = {DURABILITY[durability]}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the writer copies the WAL back on its own schedule
        if log_id is None:
            log_id = schema.create(conn, rfc3339(time.time_ns()))
        self.log_id = log_id
        self.genesis = schema.genesis_hash(log_id)
        count, last = conn.execute("SELECT count(*), max(seq) FROM audit_events").fetchone()
        if count != (last or 0):
            raise schema.AuditSchemaError(
                f"Audit log {self.path} has {count} records but its last seq is {last}: records were removed.",
                hint="Run `sealinfer audit verify` and restore the log from the retention archive.")
        self.size = count
        self.head = self.genesis
        self.last_ns = 0
        if count:
            body, prev, head, ts = conn.execute(
                "SELECT CAST(body AS BLOB), prev_hash, entry_hash, time FROM audit_events WHERE seq = ?", [count]
            ).fetchone()
            if leaf_hash(schema.leaf_input(count, prev, body)) != head:
                raise schema.AuditSchemaError(
                    f"Audit log {self.path}: the last record (seq {count}) does not match its hash.",
                    hint="Run `sealinfer audit verify` and restore the log from the retention archive.")
            self.head = head
            self.last_ns = rfc3339_ns(ts)
        leaves = [r[0] for r in conn.execute("SELECT entry_hash FROM audit_events ORDER BY seq")]
        self._frontier = _frontier_of(leaves)
        row = conn.execute("SELECT max(tree_size) FROM audit_checkpoints").fetchone()
        self.cp_size = row[0] or 0
        self._cp_clock = time.monotonic()
        if self._signer is not None:
            self._register_key(self._signer)

    def _register_key(self, signer: Signer) -> None:
        public = signer.public_key_bytes()
        row = self.conn.execute("SELECT public_key FROM audit_keys WHERE key_id = ?", [signer.key_id]).fetchone()
        if row is None:
            with self.conn:
                self.conn.execute("INSERT INTO audit_keys (key_id, public_key, added) VALUES (?, ?, ?)",
                                  [signer.key_id, public, rfc3339(time.time_ns())])
        elif bytes(row[0]) != public:
            raise StoreError(f"Audit log {self.path} already knows key id {signer.key_id!r} with another public key.",
                             hint="Use the keyring that signed this log's checkpoints, or a new key id.")

    def checkpoint_due(self) -> bool:
        return (self._signer is not None and self.size > self.cp_size
                and time.monotonic() - self._cp_clock >= self._seconds)

    def store(self, rows: Sequence[Row], *, force_checkpoint: bool = False) -> None:
        """Insert ``rows`` (the next seqs, in order) and any checkpoints due, in one transaction."""
        signer = self._signer
        if not rows and not (force_checkpoint and signer is not None and self.size > self.cp_size):
            return
        if rows and rows[0].seq != self.size + 1:
            raise StoreError(f"Audit records out of order: got seq {rows[0].seq}, expected {self.size + 1}.",
                             hint="This is a bug in the writer; keep the journal files and report it.")
        now = rfc3339(time.time_ns())
        frontier = self._frontier.copy()
        checkpoints: list[Checkpoint] = []
        cp_size = self.cp_size
        for row in rows:
            frontier.append(row.entry_hash)
            if signer is not None and row.seq - cp_size >= self._every:
                checkpoints.append(sign_checkpoint(signer, self.log_id, row.seq, frontier.root(), now))
                cp_size = row.seq
        size = rows[-1].seq if rows else self.size
        if signer is not None and size > cp_size and (
                force_checkpoint or time.monotonic() - self._cp_clock >= self._seconds):
            checkpoints.append(sign_checkpoint(signer, self.log_id, size, frontier.root(), now))
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start:start + _CHUNK]
                conn.execute(_insert_rows(len(chunk)), [v for row in chunk for v in row])
            for cp in checkpoints:
                conn.execute(_INSERT_CP, [cp.tree_size, cp.root, cp.time, cp.key_id, cp.signature])
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            last = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] or 0
            raise StoreError(f"Another writer appended to {self.path} (last seq {last}, expected {self.size}).",
                             hint="Only one process may write an audit log; give each its own file.") from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.size, self._frontier = size, frontier
        if rows:
            self.head = rows[-1].entry_hash
        if checkpoints:
            self.cp_size = checkpoints[-1].tree_size
            self._cp_clock = time.monotonic()

    def copy_wal(self, *, truncate: bool = False) -> None:
        """Copy the WAL back into the database file (what keeps the WAL from growing without end)."""
        try:
            self.conn.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchall()
        except sqlite3.Error:  # busy: readers may hold old snapshots; the next round retries
            pass

    def close(self) -> None:
        self.conn.close()


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
