"""``AuditLog``: the append-only, hash-chained, checkpointed audit log, acknowledged through a journal.

An append is acknowledged once it has its seq and time and its frame is in the acknowledgement
journal (:mod:`.journal`): copied into a shared file mapping in ``process`` durability (the page cache
survives a crash of the process), plus ``fdatasync`` in ``power`` durability. The record's body and
chain hash are made from the acknowledged event when it is stored (:mod:`.chain`), off the request.
Appends group-commit on that journal, leader/follower: the caller that finds no write in progress
leads, takes every pending record and writes them at once; callers arriving meanwhile queue and wait,
and the next one to wake without a receipt leads the next batch. A lone caller writes its own record
with no hand-off.

Acknowledged records reach ``audit.db`` (:mod:`.store`) in batches: under load the appender that
finds enough waiting stores them, otherwise the writer thread; checkpoints are signed there and the
WAL kept short. A full journal segment is deleted only after the transaction holding its records has
committed. ``flush()`` waits until every acknowledged record is in the database; ``close()`` flushes
and signs a final checkpoint. After a crash, opening the log for writing moves the journal's records
in before anything else is appended.
"""

from __future__ import annotations

import os
import threading
import time
from _thread import LockType
from _thread import allocate_lock as _allocate_lock
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.chain import Acked, Row, chain
from sealinfer.runtime.audit.checkpoint import Checkpoint
from sealinfer.runtime.audit.journal import AckJournal, frame, read_acked
from sealinfer.runtime.audit.record import AuditEvent
from sealinfer.runtime.audit.store import DURABILITY, AuditStore
from sealinfer.runtime.audit.template import RenderedEvent
from sealinfer.runtime.errors import ConfigurationError, StoreError
from sealinfer.runtime.keys.signing import Signer

_WAL_INTERVAL = 0.5  # seconds between copies of the WAL into the database file
_STORE_BATCH = 256  # the appender that finds this many records waiting stores them (~2 ms, 1 call in ~250)
_STORE_DELAY = 0.25  # seconds; records that waited this long are stored by the writer thread
_STORE_INTERVAL = 0.05  # how often the writer thread looks
_MAX_BACKLOG = 200_000  # appenders wait when this many acknowledged records are not yet stored


class AuditReceipt(int):
    """Proof of acknowledgement: the record's position in the log (its seq), fixed once it is acknowledged.

    The entry hash is not part of it: the chain is computed when the record is stored (``flush()``
    makes that happen now; ``sealinfer audit verify`` checks it). An ``int`` subclass, not a named
    tuple: every request makes one, and a named tuple's ``__new__`` is Python code (measured right
    after a few-ms model's run: 10 µs against 2.5).
    """

    __slots__ = ()

    @property
    def seq(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"AuditReceipt(seq={int(self)})"


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
    """Append-only audit log in one SQLite file and its journal. Thread-safe; one writer per file."""

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
        self._group = group_commit
        self._store = AuditStore(self.path, signer=signer, durability=durability,
                                 checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds)
        try:
            self._journal = AckJournal(self.path, sync=durability == "power")
        except BaseException:
            self._store.close()
            raise
        try:
            self._recover()
        except BaseException:
            self._journal.close(all_stored=False)
            self._store.close()
            raise
        self.log_id = self._store.log_id
        self._size, self._last_ns = self._store.size, self._store.last_ns
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)  # signalled when nobody holds the commit role
        self._stored_cond = threading.Condition(self._mutex)  # signalled after each store
        self._pending: list[_Pending] = []
        self._unstored: list[Acked] = []  # acknowledged, in seq order, not yet chained and stored
        self._chained: list[Row] = []  # chained for a store that failed: retried as they are (under _store_lock)
        self._committing = False
        self._role_waiters = 0  # threads waiting in _role(); only they need the idle signal
        self._closed = False
        self._store_lock = threading.Lock()  # one storer at a time: the writer thread, flush or close
        self._store_error: BaseException | None = None
        self._finished = False
        self._unstored_since = 0.0
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def _recover(self) -> None:
        """Move records a crash left in the journal into the database, then start a fresh segment."""
        store = self._store
        acked = [a for a in read_acked(self.path) if a[0] > store.size]
        for expected, (seq, _, _) in enumerate(acked, store.size + 1):
            if seq != expected:
                raise schema.AuditSchemaError(
                    f"Audit journal of {self.path} does not continue the stored log at seq {seq} "
                    f"(expected seq {expected}).",
                    hint="Keep the journal files for investigation, restore the log from the retention "
                    "archive, and run `sealinfer audit verify`.")
        for start in range(0, len(acked), _STORE_BATCH):
            rows = chain(acked[start:start + _STORE_BATCH], store.head)
            store.store(rows, force_checkpoint=start + _STORE_BATCH >= len(acked))
        if acked:
            store.last_ns = max(store.last_ns, acked[-1][1])
        self._journal.remove_stale()
        self._journal.start()

    # --- appending ------------------------------------------------------------------------------

    def append(self, event: AuditEvent | RenderedEvent) -> AuditReceipt:
        """Append one record; returns once it is acknowledged (its seq and time fixed, durable in the journal).

        ``event`` is an :class:`AuditEvent`, or the same already rendered by an :class:`EventTemplate`.
        """
        payload = event if type(event) is RenderedEvent else event.to_json()  # type: ignore[union-attr]
        mutex = self._mutex
        mutex.acquire()
        if (self._committing or not self._group or self._closed or self._store_error is not None
                or len(self._unstored) >= _MAX_BACKLOG):
            mutex.release()
            return self._submit([payload])[0]  # queue behind a writer, fail, or wait: the general path
        self._committing = True  # a lone caller: write our own record, no batch bookkeeping
        mutex.release()
        # Not under the mutex: a thread the GIL switches away from mid-write would make every other
        # appender block on it (tried: the 16-thread p99 went from 0.05 to 5 ms); with the role
        # taken, they queue for the next batch instead.
        now = time.time_ns()
        if now < self._last_ns:  # times never go backwards along the log
            now = self._last_ns
        seq = self._size + 1
        try:
            self._journal.write(seq, now, payload)
        except BaseException as exc:
            with mutex:
                self._release_role()
            raise self._not_written(exc) from exc
        self._size, self._last_ns = seq, now
        with mutex:
            if not self._unstored:  # _queue's work, without entering it (see AckJournal.write)
                self._unstored_since = time.monotonic()
            self._unstored.append((seq, now, payload))
            if self._pending or self._role_waiters:
                self._release_role()  # someone waits for the role: hand it on
            else:
                self._committing = False  # what _release_role does when nobody waits, without entering it
        if len(self._unstored) >= _STORE_BATCH:
            self._store_if_idle()
        return AuditReceipt(seq)

    def append_many(self, events: Sequence[AuditEvent | RenderedEvent]) -> list[AuditReceipt]:
        """Append several records in one journal write (imports, benchmarks)."""
        if not events:
            return []
        # validated and serialised outside the lock; a template's rendering was validated as it was made
        return self._submit([e if type(e) is RenderedEvent else e.to_json() for e in events])

    def _submit(self, payloads: list[str]) -> list[AuditReceipt]:
        """Append validated canonical event JSON (``to_json`` or a template's rendering)."""
        mine = _Pending(payloads)
        with self._mutex:
            if self._closed:
                raise StoreError(f"Audit log {self.path} is closed.", hint="Open a new AuditLog.")
            while True:
                if self._store_error is not None:
                    raise self._failing()
                if len(self._unstored) < _MAX_BACKLOG:
                    break
                self._wanted.set()  # the database fell behind: wait for the writer, do not grow
                self._stored_cond.wait(1.0)
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
                mine.wake.acquire()  # released once: either our record is written or we lead next
            finally:  # even if interrupted here, the rest of the batch must still be woken
                if mine.done and mine.next is not None:
                    mine.next.wake.release()  # type: ignore[union-attr]
            if not mine.done:
                mine.wake = None  # spent: as the leader it is in its own batch, and nobody wakes a leader
                with self._mutex:
                    if self._group:
                        batch, self._pending = self._pending, []
                    else:  # the naive baseline: one write per append
                        batch = [mine]
                        self._pending.remove(mine)
                leader = True
        if leader:
            self._lead(batch)
        if mine.error is not None:
            raise self._not_written(mine.error)
        if not self._group:  # the naive baseline also waits for its own database commit
            self.flush()
        elif len(self._unstored) >= _STORE_BATCH:
            self._store_if_idle()
        return mine.receipts

    def _store_if_idle(self) -> None:
        """Store the waiting records unless another thread already is (our own record is acknowledged).

        Under load, appenders store in turn: a thread of our own storing in the background would fight
        every appender for the GIL. While one appender stores, the others stay on the lone-caller path
        (a backlog sent them all to the batching path, where each waits for the GIL once more);
        only a backlog of ``_MAX_BACKLOG`` records makes them wait.
        """
        if self._store_lock.acquire(blocking=False):
            try:
                self._store_held()
            except Exception:  # recorded in _store_error; the next appends fail closed until it clears
                pass
            finally:
                self._store_lock.release()

    def _lead(self, batch: list[_Pending]) -> None:
        """Write ``batch`` (we hold the commit role), wake its waiters, hand the role on or drop it."""
        error: BaseException | None = None
        acked: list[Acked] = []
        try:
            acked = self._write(batch)
        except BaseException as exc:  # every waiter of the batch must learn its record was not written
            error = exc
        with self._mutex:
            if acked:
                self._queue(acked)
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
            self._release_role()

    def _queue(self, acked: list[Acked]) -> None:
        """Hand acknowledged events to storing (call with the mutex held)."""
        if not self._unstored:
            self._unstored_since = time.monotonic()
        self._unstored.extend(acked)

    def _not_written(self, cause: BaseException) -> StoreError:
        return StoreError(f"Audit record not written to {self.path}: {cause}",
                          hint="Check disk space and permissions; the request must not proceed unaudited.")

    def _release_role(self) -> None:
        """Hand the commit role to the oldest waiter, or drop it (call with the mutex held)."""
        if self._pending:  # the oldest waiter leads the next batch, nobody else wakes
            self._pending[0].wake.release()  # type: ignore[union-attr]  # queued callers have one
        else:
            self._committing = False
            if self._role_waiters:
                self._idle.notify_all()

    def _write(self, batch: list[_Pending]) -> list[Acked]:
        """Journal ``batch``; returns its acknowledged events (the acknowledgement point is the journal write)."""
        if self._group and self._pending:  # whoever queued while we were waking joins this write
            with self._mutex:
                batch.extend(self._pending)
                self._pending = []
        now = max(time.time_ns(), self._last_ns)  # times never go backwards along the log
        seq = self._size + 1
        acked: list[Acked] = []
        frames: list[tuple[int, bytes]] = []
        for p in batch:
            receipts = []
            for payload in p.payloads:
                acked.append((seq, now, payload))
                frames.append(frame(seq, now, payload))
                receipts.append(AuditReceipt(seq))
                seq += 1
            p.receipts = receipts
        if acked:
            self._journal.append(frames, seq - 1)
            self._size, self._last_ns = seq - 1, now
        return acked

    @contextmanager
    def _role(self) -> Iterator[None]:
        """Hold the commit role: no journal write runs meanwhile (for switching segments)."""
        with self._mutex:
            self._role_waiters += 1
            try:
                while self._committing:
                    self._idle.wait()
            finally:
                self._role_waiters -= 1
            self._committing = True
        try:
            yield
        finally:
            with self._mutex:
                self._release_role()

    # --- storing --------------------------------------------------------------------------------

    def _store_pending(self, *, force_checkpoint: bool = False) -> None:
        """Move every acknowledged record into the database (one storer at a time)."""
        with self._store_lock:
            self._store_held(force_checkpoint=force_checkpoint)

    def _store_held(self, *, force_checkpoint: bool = False) -> None:
        """Chain every acknowledged record and store it; the caller holds ``_store_lock``."""
        with self._mutex:  # appenders add events in seq order under it: what we take is a contiguous run
            acked, self._unstored = self._unstored, []
        rows = self._chained
        if acked:  # chained once: a retry stores the very same bodies (event ids included)
            rows = rows + chain(acked, rows[-1].entry_hash if rows else self._store.head)
        try:
            self._store.store(rows, force_checkpoint=force_checkpoint)
        except BaseException as exc:
            self._chained = rows  # still acknowledged, still in the journal: retried
            with self._mutex:
                self._store_error = exc
                self._stored_cond.notify_all()
            raise
        self._chained = []
        self._journal.drop_stored(self._store.size)
        with self._mutex:
            self._store_error = None
            self._stored_cond.notify_all()

    def _write_loop(self) -> None:
        wal_clock = time.monotonic()
        while not self._stop.is_set():
            self._wanted.wait(_STORE_INTERVAL)
            self._wanted.clear()
            if self._stop.is_set():
                break
            due = self._store.checkpoint_due()
            waited = bool(self._unstored) and time.monotonic() - self._unstored_since >= _STORE_DELAY
            if waited or due:
                try:
                    self._store_pending(force_checkpoint=due)
                except Exception:  # recorded in _store_error: appends fail closed until a retry works
                    time.sleep(_STORE_INTERVAL)
            if time.monotonic() - wal_clock >= _WAL_INTERVAL:
                with self._store_lock:
                    self._store.copy_wal()
                wal_clock = time.monotonic()

    def _failing(self) -> StoreError:
        return StoreError(
            f"Audit database {self.path} cannot be written ({self._store_error}); acknowledged records are "
            "safe in its journal and are stored when the database can be written again.",
            hint="Check disk space and permissions of the audit log's folder; requests are refused until then.")

    def flush(self) -> None:
        """Return once every record acknowledged so far is in the database (for readers of audit.db)."""
        if self._finished:  # close() stored everything
            return
        try:
            self._store_pending()
        except Exception as exc:
            raise self._failing() from exc

    def checkpoint(self) -> None:
        """Store every acknowledged record and sign a checkpoint now if records were added since the last."""
        if self._signer is None:
            raise ConfigurationError("This audit log has no signer, so it cannot write checkpoints.",
                                     hint="Open it with signer=keyring.signer().")
        if self._finished:
            raise StoreError(f"Audit log {self.path} is closed (its final checkpoint was signed at close).",
                             hint="Open a new AuditLog.")
        try:
            self._store_pending(force_checkpoint=True)
        except Exception as exc:
            raise self._failing() from exc

    def close(self) -> None:
        """Store every acknowledged record, sign a final checkpoint (with a signer), and close the files."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True  # refuse new appends; those already queued are still written
        with self._role():
            pass  # waits for the last leader
        self._stop.set()
        self._wanted.set()
        self._writer.join()
        stored = False
        try:
            self._store_pending(force_checkpoint=self._signer is not None)
            stored = True
            with self._store_lock:
                self._store.copy_wal(truncate=True)
        except Exception as exc:
            raise StoreError(f"Could not store the audit log's last records or checkpoint: {exc}; they are "
                             f"safe in its journal and are stored when {self.path} is next opened.",
                             hint="Check disk space and permissions of the audit log's folder.") from exc
        finally:
            self._journal.close(all_stored=stored)
            self._store.close()
            self._finished = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- state ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Records acknowledged so far."""
        return self._size

    def latest_checkpoint(self) -> Checkpoint | None:
        conn = schema.connect(self.path, readonly=True)  # the store's connection belongs to the writer
        try:
            row = conn.execute(
                "SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints "
                "ORDER BY tree_size DESC LIMIT 1").fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        return Checkpoint(self.log_id, row[0], bytes(row[1]), row[2], row[3], bytes(row[4]))
