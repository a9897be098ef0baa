"""The audit log's acknowledgement journal: where a record is durable before it reaches SQLite.

An append is acknowledged once its frame is in this journal. Segments are preallocated files mapped
shared into memory: a frame is copied into the mapping, which is the kernel's page cache, so it
survives a crash of the process (``process`` durability) without a system call, and the copy never
releases the GIL, so concurrent appenders do not queue behind one another. In ``power`` durability the
segment is ``fdatasync``-ed before the append returns. The log's writer moves records from memory into
``audit.db`` in batches behind the appenders; a segment is deleted only once every record in it is
stored. Opening the log for writing moves in whatever a crash left behind.

A frame is ``len(body) (4 bytes) | seq (8) | prev_hash (32) | entry_hash (32) | body``, padded with
zeros to a multiple of 8, and ``entry_hash`` is the record's chain hash over ``seq``, ``prev_hash`` and
``body``: every frame checks itself. The length is written last, so a frame the crash cut short still
reads as length 0, the end of the segment (it was never acknowledged); a frame with a length that does
not check out is damage, and refused.

Segments are files ``<db>-ack-<n>``, 0600, next to the database; a lock file makes one writer per log.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.merkle import leaf_hash
from sealinfer.runtime.errors import StoreError

FRAME_OVERHEAD = 4 + 8 + 64  # length, seq, prev_hash, entry_hash
_MAX_BODY = 1 << 20  # a body is a few hundred bytes; anything near this is damage, not a record
SEGMENT_BYTES = 16 << 20  # preallocated size of a segment (larger if one batch needs more)


class Row(NamedTuple):
    """One record as the log stores it."""

    seq: int
    body: str
    prev_hash: bytes
    entry_hash: bytes


def frame_size(length: int) -> int:
    """Bytes a frame with a body of ``length`` bytes takes, padding included."""
    return FRAME_OVERHEAD + length + (-(FRAME_OVERHEAD + length) % 8)


_LEAF = hashlib.sha256(b"\x00")  # the Merkle leaf prefix every entry hash starts with


def chain_frame(seq: int, prev_hash: bytes, body: str) -> tuple[Row, tuple[int, bytes]]:
    """The record after ``prev_hash`` and its frame as (body length, everything after the length).

    The entry hash is ``merkle.leaf_hash(schema.leaf_input(...))`` written out, because this runs on
    every append and its encoded parts are reused for the frame.
    """
    raw = body.encode()
    head = seq.to_bytes(8, "big") + prev_hash
    h = _LEAF.copy()  # copying a started hash costs less than starting one (and than joining the bytes)
    h.update(head)
    h.update(raw)
    entry = h.digest()
    rest = head + entry + raw + bytes(frame_size(len(raw)) - FRAME_OVERHEAD - len(raw))
    return Row(seq, body, prev_hash, entry), (len(raw), rest)


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
    """Every frame of every segment, in order; each segment ends at its first zero length."""
    for path in segment_paths(db_path):
        data = path.read_bytes()
        offset = 0
        while len(data) - offset >= 4:
            length = int.from_bytes(data[offset:offset + 4], "big")
            if length == 0:
                break  # the end, or a frame the crash cut short before its length was written
            row = _parse(data, offset, length)
            if row is None:
                raise schema.AuditSchemaError(
                    f"Audit journal {path} is damaged at byte {offset}: a record that was acknowledged "
                    "cannot be read back.",
                    hint="Keep the file for investigation, restore the log from the retention archive, "
                    "and run `sealinfer audit verify`.")
            yield row
            offset += frame_size(length)


def _parse(data: bytes, offset: int, length: int) -> Row | None:
    end = offset + FRAME_OVERHEAD + length
    if length > _MAX_BODY or end > len(data):
        return None
    seq = int.from_bytes(data[offset + 4: offset + 12], "big")
    prev = data[offset + 12: offset + 44]
    entry = data[offset + 44: offset + FRAME_OVERHEAD]
    body = data[offset + FRAME_OVERHEAD: end]
    if leaf_hash(schema.leaf_input(seq, prev, body)) != entry:
        return None
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Row(seq, text, prev, entry)


class AckJournal:
    """The writing side: one mapped segment; ``append`` runs under the log's commit role."""

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
        self._mm: mmap.mmap | None = None
        self._size = 0
        self._end = 0
        self._last_seq = 0
        self._closed: list[tuple[Path, int]] = []  # full segments and the last seq each holds
        self._closed_lock = threading.Lock()

    def start(self) -> None:
        """Open a fresh segment (after recovery has stored and removed the old ones)."""
        self._open_segment(SEGMENT_BYTES)

    def _open_segment(self, size: int) -> None:
        path = self._path(self._number)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # blocks reserved now: no allocation (or ENOSPC) inside an append
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            if self.sync:  # the new name must survive a power cut too, not only its contents
                _fsync_dir(self.db_path.parent)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise StoreError(f"Cannot create audit journal segment {path} ({exc}).",
                             hint="Free disk space in the audit log's folder.") from exc
        self._fd, self._mm, self._size, self._end = fd, mm, size, 0

    def _path(self, number: int) -> Path:
        return self.db_path.with_name(f"{self.db_path.name}-ack-{number:08d}")

    def append(self, frames: list[tuple[int, bytes]], last_seq: int) -> None:
        """Copy frames (as ``chain_frame`` makes them) into the segment; durable for ``process`` on return.

        On failure nothing stays behind: the frames written so far are zeroed again.
        """
        need = sum(frame_size(length) for length, _ in frames)
        if self._end + need > self._size:
            self._rotate(max(SEGMENT_BYTES, need))
        mm, start = self._mm, self._end
        assert mm is not None
        off = start
        try:
            for length, rest in frames:
                mm[off + 4: off + 4 + len(rest)] = rest
                mm[off: off + 4] = length.to_bytes(4, "big")  # last: until now the frame reads as absent
                off += 4 + len(rest)
            if self.sync:
                os.fdatasync(self._fd)
        except BaseException:
            mm[start:off] = bytes(off - start)
            raise
        self._end = off
        self._last_seq = last_seq

    def _rotate(self, size: int) -> None:
        old_fd, old_mm, old = self._fd, self._mm, self._path(self._number)
        self._number += 1
        self._open_segment(size)
        with self._closed_lock:
            self._closed.append((old, self._last_seq))
        if old_mm is not None:
            old_mm.close()
        os.close(old_fd)

    def drop_stored(self, stored_seq: int) -> None:
        """Delete full segments whose records are all in the database."""
        with self._closed_lock:
            done = [path for path, last in self._closed if last <= stored_seq]
            self._closed = [(path, last) for path, last in self._closed if last > stored_seq]
        for path in done:
            path.unlink(missing_ok=True)

    def remove_stale(self) -> None:
        """Delete every segment on disk (recovery has stored their records); called before ``start``."""
        for path in segment_paths(self.db_path):
            path.unlink(missing_ok=True)
        if self.sync:
            _fsync_dir(self.db_path.parent)

    def close(self, *, all_stored: bool) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if all_stored:
                self._path(self._number).unlink(missing_ok=True)
                self.drop_stored(1 << 62)
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
