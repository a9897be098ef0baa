"""The audit log's acknowledgement journal: where a record is durable before it reaches SQLite.

An append is acknowledged once its frame is in this journal: written with one ``write(2)`` (the
kernel's page cache survives a crash of the process: ``process`` durability) and, in ``power`` mode,
``fdatasync``-ed. The log's writer thread moves records from memory into ``audit.db`` in batches
behind the appenders; a record's frame stays in the journal until the transaction that holds it in
``audit.db`` has committed. Opening the log for writing moves in whatever a crash left behind.

A frame is ``len(body) (4 bytes) | seq (8) | prev_hash (32) | entry_hash (32) | body``, and
``entry_hash`` is the record's chain hash over ``seq``, ``prev_hash`` and ``body``: every frame
checks itself, so a frame cut short by a crash (never acknowledged: its ``write`` never returned)
is recognised and dropped, while damage anywhere before the newest frame is an error.

Segments are files ``<db>-ack-<n>``, 0600, next to the database; a lock file makes one writer per log.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from sealinfer.runtime.audit import schema
from sealinfer.runtime.errors import StoreError

_HEAD = struct.Struct(">IQ")
FRAME_OVERHEAD = _HEAD.size + 64
_MAX_BODY = 1 << 20  # a body is a few hundred bytes; anything near this is damage, not a record
ROTATE_BYTES = 4 << 20  # a segment is replaced once it is this big and its records are stored


class Row(NamedTuple):
    """One record as the log stores it."""

    seq: int
    body: str
    prev_hash: bytes
    entry_hash: bytes


def frame(row: Row) -> bytes:
    body = row.body.encode()
    return frame_bytes(len(body), row.seq.to_bytes(8, "big") + row.prev_hash, row.entry_hash, body)


def frame_bytes(length: int, seq_and_prev: bytes, entry: bytes, body: bytes) -> bytes:
    """A frame from parts the appender has already encoded for the chain hash."""
    return length.to_bytes(4, "big") + seq_and_prev + entry + body


def entry_hash(seq: int, prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + schema.leaf_input(seq, prev_hash, body)).digest()


def segment_paths(db_path: Path) -> list[Path]:
    """The journal segments of ``db_path``, oldest first."""
    pattern = re.compile(re.escape(db_path.name) + r"-ack-(\d{8})")
    found = []
    for entry in db_path.parent.iterdir() if db_path.parent.exists() else ():
        m = pattern.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return [p for _, p in sorted(found)]


def read_rows(db_path: Path) -> Iterator[Row]:
    """Every intact frame of every segment, in order; a cut-short newest frame ends the last segment."""
    paths = segment_paths(db_path)
    for i, path in enumerate(paths):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            row, size = _parse(data, offset)
            if row is None:
                if i == len(paths) - 1 and _only_a_torn_tail(data, offset):
                    break  # the write that was cut short by the crash: it was never acknowledged
                raise schema.AuditSchemaError(
                    f"Audit journal {path} is damaged at byte {offset}: a record that was acknowledged "
                    "cannot be read back.",
                    hint="Keep the file for investigation, restore the log from the retention archive, "
                    "and run `sealinfer audit verify`.")
            yield row
            offset += size


def _parse(data: bytes, offset: int) -> tuple[Row | None, int]:
    if len(data) - offset < FRAME_OVERHEAD:
        return None, 0
    length, seq = _HEAD.unpack_from(data, offset)
    end = offset + FRAME_OVERHEAD + length
    if length > _MAX_BODY or end > len(data):
        return None, 0
    prev = data[offset + _HEAD.size: offset + _HEAD.size + 32]
    entry = data[offset + _HEAD.size + 32: offset + FRAME_OVERHEAD]
    body = data[offset + FRAME_OVERHEAD: end]
    if entry_hash(seq, prev, body) != entry:
        return None, 0
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None, 0
    return Row(seq, text, prev, entry), end - offset


def _only_a_torn_tail(data: bytes, offset: int) -> bool:
    """True if the bytes from ``offset`` are one write cut short, not a damaged record.

    A cut write leaves a prefix of its frames, so the first unreadable frame is the last one and runs
    past the end of the file (or its header is incomplete); after a power cut the unwritten tail of an
    unacknowledged write may also read back as zeros.
    """
    rest = len(data) - offset
    if rest < FRAME_OVERHEAD or not any(data[offset:]):
        return True
    length, _ = _HEAD.unpack_from(data, offset)
    return offset + FRAME_OVERHEAD + length > len(data)


class AckJournal:
    """The writing side: one open segment, appended with ``O_APPEND``; not thread-safe (the log locks)."""

    def __init__(self, db_path: Path, *, sync: bool) -> None:
        self.db_path = db_path
        self.sync = sync
        self._lock_fd = os.open(f"{db_path}-ack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(f"Another writer has audit log {db_path} open.",
                             hint="Only one process may write an audit log; give each runtime its own file.") from None
        existing = segment_paths(db_path)
        self._number = int(existing[-1].name.rsplit("-", 1)[1]) + 1 if existing else 0
        self._fd = -1
        self.end = 0

    def start(self) -> None:
        """Open a fresh segment (after recovery has stored and removed the old ones)."""
        self._fd = self._open_segment(self._number)

    def _open_segment(self, number: int) -> int:
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if self.sync:  # the new name must survive a power cut too, not only its contents
            _fsync_dir(self.db_path.parent)
        self.end = 0
        return fd

    def _path(self, number: int) -> Path:
        return self.db_path.with_name(f"{self.db_path.name}-ack-{number:08d}")

    def write(self, data: bytes) -> None:
        """Append frames; on any failure the segment is cut back so no partial frame stays behind."""
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a regular file takes it all at once unless the disk is full
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view):]
            if self.sync:
                os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, self.end)
            except OSError as exc:
                raise StoreError(f"Audit journal {self._path(self._number)} could not be cut back after a "
                                 f"failed write ({exc}).",
                                 hint="Stop the runtime, free disk space, and reopen the log.") from exc
            raise
        self.end += len(data)

    def rotate(self) -> Path | None:
        """Switch appends to a new segment if this one is big; returns the old one, to delete once stored."""
        if self.end < ROTATE_BYTES:
            return None
        old_fd, old = self._fd, self._path(self._number)
        self._number += 1
        self._fd = self._open_segment(self._number)
        os.close(old_fd)
        return old

    def empty_if_at(self, end: int) -> None:
        """Drop the current segment's contents if nothing was appended after ``end`` (all stored)."""
        if self.end == end and end:
            os.ftruncate(self._fd, 0)
            self.end = 0

    def remove_stale(self) -> None:
        """Delete every segment but the open one (their records are stored)."""
        current = self._path(self._number)
        for path in segment_paths(self.db_path):
            if path != current:
                path.unlink(missing_ok=True)
        if self.sync:
            _fsync_dir(self.db_path.parent)

    def close(self, *, all_stored: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if all_stored:
                self._path(self._number).unlink(missing_ok=True)
        os.close(self._lock_fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pending_records(db_path: Path, stored: int) -> int:
    """How many acknowledged records wait in the journal beyond ``stored`` (for verify and reports)."""
    try:
        return sum(1 for row in read_rows(db_path) if row.seq > stored)
    except (OSError, StoreError):
        return 0
