"""``telemetry.db``: one row per request, written off the hot path, with per-minute rollups.

Telemetry is not acknowledged per call (DESIGN.md, "Stores"), so :meth:`TelemetryStore.record` only
appends to an in-memory buffer; a background thread writes batches with ``executemany`` and, in the
same transaction, folds them into ``rollup_minute`` (counts, sums, min/max) and ``rollup_latency``
(latency histogram, see :mod:`.histogram`). Dashboards read the rollups, so their cost grows with
minutes × groups rather than with requests. :meth:`close` writes everything still buffered.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlite_utils

from sealinfer.runtime.errors import StoreError
from sealinfer.runtime.telemetry import histogram
from sealinfer.runtime.telemetry.record import COLUMNS, PHASES, SessionFields, TelemetryRecord
from sealinfer.runtime.telemetry.schema import (
    HIST_KEY,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    check_kind,
    create_schema,
)

if TYPE_CHECKING:
    from sealinfer.runtime.telemetry.metrics import RuntimeMetrics

log = logging.getLogger(__name__)

_INSERT_REQUEST = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_INLINE_BATCH = 2048  # a recording thread that finds this many buffered writes them itself
_MIN_MAX = {"total_min": "min", "total_max": "max"}


def _merge_expr(col: str) -> str:
    if col in _MIN_MAX:
        fn = _MIN_MAX[col]
        # SQLite's scalar min()/max() return NULL if either side is NULL; a minute with only denials has none.
        return f"{col} = coalesce({fn}({col}, excluded.{col}), {col}, excluded.{col})"
    if col == "param_bytes":
        return f"{col} = max({col}, excluded.{col})"
    return f"{col} = coalesce({col}, 0) + coalesce(excluded.{col}, 0)"


_UPSERT_ROLLUP = (
    f"INSERT INTO rollup_minute ({', '.join(ROLLUP_KEY + ROLLUP_VALUES)}) "
    f"VALUES ({', '.join('?' * (len(ROLLUP_KEY) + len(ROLLUP_VALUES)))}) "
    f"ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {', '.join(_merge_expr(c) for c in ROLLUP_VALUES)}"
)
_UPSERT_HIST = (
    f"INSERT INTO rollup_latency ({', '.join(HIST_KEY)}, n) VALUES (?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT ({', '.join(HIST_KEY)}) DO UPDATE SET n = n + excluded.n"
)
_V = {name: i for i, name in enumerate(ROLLUP_VALUES)}


def rollup_rows(records: Iterable[TelemetryRecord]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Fold records into ``rollup_minute`` and ``rollup_latency`` delta rows (key + values)."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    hist: dict[tuple[Any, ...], int] = {}
    for r in records:
        minute = int(r.ts // 60)
        key = (minute, r.config, r.model, r.priority, r.device)
        g = groups.get(key)
        if g is None:
            g = groups[key] = [0, 0, 0, 0, 0.0, None, None, *([0.0] * len(PHASES)), 0, 0.0, 0.0, 0]
        g[0] += 1
        if r.model_param_bytes > g[-1]:
            g[-1] = r.model_param_bytes
        if r.outcome != "ok":
            g[_V["denied"] if r.outcome == "denied" else _V["errors"]] += 1
            continue
        total = r.total_us
        g[1] += 1
        g[4] += total
        g[5] = total if g[5] is None or total < g[5] else g[5]
        g[6] = total if g[6] is None or total > g[6] else g[6]
        g[7] += r.queue_us
        g[8] += r.authorize_us
        g[9] += r.validate_us
        g[10] += r.inference_us
        g[11] += r.guard_us
        g[12] += r.record_us
        if r.predicted_us is not None:
            g[13] += 1
            g[14] += r.predicted_us
            g[15] += r.inference_us
        hkey = (minute, r.config, r.model, r.priority, histogram.bucket_of(total))
        hist[hkey] = hist.get(hkey, 0) + 1
    return ([(*k, *v) for k, v in groups.items()], [(*k, n) for k, n in hist.items()])


# What the buffer holds: a session's fixed fields and one request's values, or (a finished record, None).
_Queued = tuple[SessionFields | TelemetryRecord, tuple[Any, ...] | None]


def _built(item: _Queued) -> TelemetryRecord:
    head, values = item
    return head if values is None else head.record(values)  # type: ignore[return-value,union-attr]


class TelemetryStore:
    """Buffered writer of ``telemetry.db``.

    ``record`` costs a lock and a list append; a daemon thread flushes every ``flush_interval_s``, and
    under load the recording thread that finds ``min(max_buffer, 2048)`` records buffered writes them
    itself. If writers outpace the disk by 4 × ``max_buffer``, ``record`` waits for its turn to write
    rather than drop telemetry or grow without bound. ``retention_days`` (if set) deletes
    requests and rollups older than that, checked at most once a minute.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval_s: float = 0.5,
        max_buffer: int = 10_000,
        retention_days: float | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        if flush_interval_s <= 0 or max_buffer <= 0:
            raise StoreError("flush_interval_s and max_buffer must be positive.",
                             hint="Use the defaults (0.5 s, 10000) unless you have measured otherwise.")
        if retention_days is not None and retention_days <= 0:
            raise StoreError(f"retention_days must be positive, got {retention_days}.",
                             hint="Pass None to keep telemetry forever.")
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._inline_batch = min(max_buffer, _INLINE_BATCH)
        self.retention_days = retention_days
        self._metrics = metrics
        self._conn = self._open(self.path)
        self._db = sqlite_utils.Database(self._conn)
        self._buf: list[_Queued] = []
        self._buf_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer on the connection at a time
        self._wake = threading.Event()
        self._closed = False
        self._last_retention = 0.0
        self._flush_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="telemetry-flush", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if path.is_dir():
            raise StoreError(f"{path} is a directory.", hint="Pass a file path such as telemetry.db.")
        if not path.parent.is_dir():
            raise StoreError(f"Folder {path.parent} does not exist.", hint="Create it or pass another path.")
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            fresh = not check_kind(conn, path, allow_new=True)
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            conn.execute("PRAGMA synchronous=NORMAL")
            if fresh:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    create_schema(db)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open telemetry database {path}: {exc}.",
                             hint="Check the path and its permissions.") from exc
        return conn

    # --- hot path ---------------------------------------------------------------------------------

    def record(self, rec: TelemetryRecord) -> None:
        """Queue one request's telemetry; never waits for the disk unless far behind."""
        self.record_request(rec, None)  # type: ignore[arg-type]  # a finished record queues as (record, None)

    def record_request(self, fields: SessionFields, values: tuple[Any, ...]) -> None:
        """``record(fields.record(values))``, with the record built by the writer, not by the request's thread.

        The one place records join the buffer: every request comes through here right after its model
        has run, when each further Python function entered costs a few µs (measured: 11.3 µs through a
        separate queueing method, 8.4 µs this way).
        """
        item = (fields, values)
        with self._buf_lock:  # checked under the lock so nothing slips in after close()'s final flush
            if self._closed:
                raise StoreError("The telemetry store is closed.",
                                 hint="Record before close(), or open a new store.")
            self._buf.append(item)
            pending = len(self._buf)
        if self._metrics is not None:
            self._metrics.observe(_built(item))
        if pending >= self._inline_batch:
            # Under load the recording threads write in turn (rarely: one call in thousands): a flush
            # thread of our own would fight every request thread for the GIL the whole time.
            if self._write_lock.acquire(blocking=pending >= 4 * self.max_buffer):
                try:
                    self._flush_held()
                except Exception:  # the flush thread retries and reports; telemetry never fails a request
                    pass
                finally:
                    self._write_lock.release()

    def record_many(self, recs: Iterable[TelemetryRecord]) -> None:
        for rec in recs:
            self.record(rec)

    # --- writing ----------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered so far; returns how many requests were written."""
        with self._write_lock:
            return self._flush_held()

    def _flush_held(self) -> int:
        with self._buf_lock:
            batch, self._buf = self._buf, []
        if not batch:
            return 0
        try:
            self._write(batch)
        except BaseException:
            with self._buf_lock:  # put it back: telemetry is only lost if the process dies
                self._buf[:0] = batch
            raise
        self._maybe_apply_retention()
        return len(batch)

    def _write(self, items: list[_Queued]) -> None:
        batch = [_built(item) for item in items]
        rollups, hist = rollup_rows(batch)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT_REQUEST, [r.as_row() for r in batch])
            conn.executemany(_UPSERT_ROLLUP, rollups)
            conn.executemany(_UPSERT_HIST, hist)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
                self._flush_error = None
            except Exception as exc:  # keep the records and retry; close() reports a lasting failure
                if self._flush_error is None:
                    log.warning("telemetry flush failed, will retry: %s", exc)
                self._flush_error = exc

    def record_model(
        self,
        digest: str,
        name: str,
        version: str = "",
        *,
        signer_key_id: str | None = None,
        signature_ok: bool | None = None,
        watermark_status: str | None = None,
        dp_epsilon: float | None = None,
        param_bytes: int = 0,
        loaded_at: float | None = None,
    ) -> None:
        """Upsert one loaded model (rare, so written at once)."""
        row = {
            "digest": digest, "name": name, "version": version, "signer_key_id": signer_key_id,
            "signature_ok": None if signature_ok is None else int(signature_ok),
            "watermark_status": watermark_status, "dp_epsilon": dp_epsilon, "param_bytes": param_bytes,
            "loaded_at": time.time() if loaded_at is None else loaded_at,
        }
        with self._write_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._db["models"].upsert(row, pk="digest")
            self._conn.execute("COMMIT")

    # --- retention --------------------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> int:
        """Delete requests and rollups older than ``retention_days``; returns requests deleted."""
        if self.retention_days is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        with self._write_lock:
            return self._purge(cutoff)

    def _maybe_apply_retention(self) -> None:
        if self.retention_days is not None and time.monotonic() - self._last_retention > 60:
            self._last_retention = time.monotonic()
            self._purge(time.time() - self.retention_days * 86400)

    def _purge(self, cutoff: float) -> int:
        # Whole minutes only, so the rollups keep agreeing with the raw rows they summarise.
        cutoff_minute = int(cutoff // 60)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute("DELETE FROM requests WHERE ts < ?", [cutoff_minute * 60]).rowcount
            conn.execute("DELETE FROM rollup_minute WHERE minute < ?", [cutoff_minute])
            conn.execute("DELETE FROM rollup_latency WHERE minute < ?", [cutoff_minute])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    # --- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the flusher and write everything still buffered."""
        with self._buf_lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            self._conn.close()

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Records recorded but not yet written."""
        with self._buf_lock:
            return len(self._buf)
