"""The audit log's acknowledgement journal: where a record is durable before it reaches SQLite.

An append is acknowledged once its frame is in this journal. Segments are preallocated files mapped
shared into memory: a frame is copied into the mapping, which is the kernel's page cache, so it
survives a crash of the process (``process`` durability) without a system call, and the copy never
releases the GIL, so concurrent appenders do not queue behind one another. In ``power`` durability the
segment is ``fdatasync``-ed before the append returns. The log's writer moves records from memory into
``audit.db`` in batches behind the appenders; a segment is deleted only once every record in it is
stored. Opening the log for writing moves in whatever a crash left behind.

A segment starts with ``MAGIC`` (its format), then its frames. A frame is ``len(event) (4 bytes) |
crc32 (4) | seq (8) | time_ns (8) | event``, padded with zeros to a multiple of 8, where ``event``
is the canonical event JSON and the CRC-32 covers seq, time and event: the record's position and
time are fixed here, and its body and chain hash are made from them when it is stored
(:mod:`.chain`). The length is written last, so a frame the crash cut short still reads as length 0,
the end of the segment (it was never acknowledged); a frame whose checksum, padding or place in the
sequence does not check out is damage, and refused.

Segments are files ``<db>-ack-<n>``, 0600, next to the database; a lock file makes one writer per log.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.chain import Acked
from sealinfer.runtime.errors import StoreError

FRAME_OVERHEAD = 4 + 4 + 8 + 8  # length, crc32, seq, time_ns
_MAX_BODY = 1 << 20  # an event is a few hundred bytes; anything near this is damage, not a record
SEGMENT_BYTES = 16 << 20  # preallocated size of a segment (larger if one batch needs more)
_SEQ_TIME = struct.Struct(">QQ")
MAGIC = b"SIACK\x00\x00\x02"  # sealinfer acknowledgement journal, format 2: frames of (seq, time, event)
_PADDING = [bytes(n) for n in range(8)]


def frame_size(length: int) -> int:
    """Bytes a frame with an event of ``length`` bytes takes, padding included."""
    return FRAME_OVERHEAD + length + (-(FRAME_OVERHEAD + length) % 8)


def frame(seq: int, time_ns: int, event: str) -> tuple[int, bytes]:
    """The frame of an acknowledged event as (event length, everything after the length)."""
    raw = event.encode()
    seq_time = _SEQ_TIME.pack(seq, time_ns)
    crc = zlib.crc32(raw, zlib.crc32(seq_time))
    return len(raw), crc.to_bytes(4, "big") + seq_time + raw + _PADDING[-(FRAME_OVERHEAD + len(raw)) % 8]


def segment_paths(db_path: Path) -> list[Path]:
    """The journal segments of ``db_path``, oldest first."""
    pattern = re.compile(re.escape(db_path.name) + r"-ack-(\d{8})")
    found = []
    for entry in db_path.parent.iterdir() if db_path.parent.exists() else ():
        m = pattern.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return [p for _, p in sorted(found)]


def read_acked(db_path: Path) -> Iterator[Acked]:
    """Every acknowledged event of every segment, in order; each segment ends at its first zero length."""
    for path in segment_paths(db_path):
        data = path.read_bytes()
        head = data[:len(MAGIC)]
        if head != MAGIC:
            if not any(head):
                continue  # created, then the crash came before anything was written to it
            raise schema.AuditSchemaError(
                f"Audit journal {path} is not in the format this sealinfer writes (format 2); it holds "
                "acknowledged records of an older version.",
                hint="Run `sealinfer audit recover` with the sealinfer version that wrote it, so its records "
                "are stored in the database, then upgrade.")
        offset = len(MAGIC)
        while len(data) - offset >= 4:
            length = int.from_bytes(data[offset:offset + 4], "big")
            if length == 0:
                break  # the end, or a frame the crash cut short before its length was written
            acked = _parse(data, offset, length)
            if acked is None:
                raise schema.AuditSchemaError(
                    f"Audit journal {path} is damaged at byte {offset}: a record that was acknowledged "
                    "cannot be read back.",
                    hint="Keep the file for investigation, restore the log from the retention archive, "
                    "and run `sealinfer audit verify`.")
            yield acked
            offset += frame_size(length)


def _parse(data: bytes, offset: int, length: int) -> Acked | None:
    end = offset + FRAME_OVERHEAD + length
    padded = offset + frame_size(length)
    if length > _MAX_BODY or padded > len(data) or any(data[end:padded]):
        return None
    crc = int.from_bytes(data[offset + 4:offset + 8], "big")
    if zlib.crc32(data[offset + 8:end]) != crc:
        return None
    seq, time_ns = _SEQ_TIME.unpack_from(data, offset + 8)
    try:
        event = data[offset + FRAME_OVERHEAD:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    return seq, time_ns, event


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
        mm[:len(MAGIC)] = MAGIC  # in power durability it reaches the disk with the first frame's fdatasync
        self._fd, self._mm, self._size, self._end = fd, mm, size, len(MAGIC)

    def _path(self, number: int) -> Path:
        return self.db_path.with_name(f"{self.db_path.name}-ack-{number:08d}")

    def write(self, seq: int, time_ns: int, event: str) -> None:
        """``append([frame(seq, time_ns, event)], seq)`` for the lone appender, written out in one function.

        Every request comes through here right after its model has run, when each Python function
        entered costs 2-3 µs of fetching its code from memory again (measured): so the framing and the
        copy are not calls of their own. A test holds the bytes to ``frame``'s.
        """
        raw = event.encode()
        head = seq.to_bytes(8, "big") + time_ns.to_bytes(8, "big")  # _SEQ_TIME's layout, without struct's code
        pad = -(FRAME_OVERHEAD + len(raw)) % 8
        size = FRAME_OVERHEAD + len(raw) + pad
        if self._end + size > self._size:
            self._rotate(max(SEGMENT_BYTES, len(MAGIC) + size))
        mm, at = self._mm, self._end
        assert mm is not None
        try:
            mm[at + 4: at + size] = zlib.crc32(raw, zlib.crc32(head)).to_bytes(4, "big") + head + raw + _PADDING[pad]
            mm[at: at + 4] = len(raw).to_bytes(4, "big")  # last: until now the frame reads as absent
            if self.sync:
                os.fdatasync(self._fd)
        except BaseException:
            mm[at: at + size] = bytes(size)
            raise
        self._end = at + size
        self._last_seq = seq

    def append(self, frames: list[tuple[int, bytes]], last_seq: int) -> None:
        """Copy frames (as ``frame`` makes them) into the segment; durable for ``process`` on return.

        On failure nothing stays behind: the frames written so far are zeroed again.
        """
        need = sum(frame_size(length) for length, _ in frames)
        if self._end + need > self._size:
            self._rotate(max(SEGMENT_BYTES, len(MAGIC) + need))
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
    """How many acknowledged records wait in the journal beyond ``stored`` (for verify and reports).

    Raises ``AuditSchemaError`` for a journal that cannot be read (damaged, or an older format).
    """
    try:
        return sum(1 for seq, _, _ in read_acked(db_path) if seq > stored)
    except OSError:  # a segment the writer deleted while we listed it: its records are stored
        return 0
