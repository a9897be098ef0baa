"""The acknowledgement journal: records are durable before they reach audit.db, and nothing acked is lost."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sealinfer.runtime.audit import log as log_module
from sealinfer.runtime.audit.chain import chain
from sealinfer.runtime.audit.journal import FRAME_OVERHEAD, MAGIC, frame_size, read_acked, segment_paths
from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.audit.schema import AuditSchemaError
from sealinfer.runtime.audit.verify import verify_log
from sealinfer.runtime.errors import StoreError

from .conftest import SEED_KEY, make_event, make_signer, trust_for

# A writer that acknowledges 30 records and dies before its writer thread stores any of them.
CHILD = r"""
import os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealinfer.runtime.audit import log as log_module
from sealinfer.runtime.keys.signing import Signer
from sealinfer.tests.audit.conftest import make_event
log_module._STORE_INTERVAL = 3600.0
signer = Signer("audit-test-1", Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2])))
log = log_module.AuditLog(sys.argv[1], signer=signer)
for i in range(30):
    log.append(make_event(i))
os._exit(0)
"""


def _db_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]


@pytest.fixture
def crashed(tmp_path: Path) -> Path:
    """A folder whose audit log has 5 stored records and 30 more only in its journal."""
    path = tmp_path / "crashed" / "audit.db"
    path.parent.mkdir()
    with AuditLog(path, signer=make_signer()) as log:
        for i in range(5):
            log.append(make_event(100 + i))
    subprocess.run([sys.executable, "-c", CHILD, str(path), SEED_KEY.hex()], check=True)
    assert _db_count(path) == 5 and len(list(read_acked(path))) == 30
    return path


def _copy(crashed: Path, dest: Path) -> Path:
    shutil.copytree(crashed.parent, dest)
    return dest / crashed.name


def test_reopening_after_a_crash_stores_the_journal_and_signs_it(crashed: Path) -> None:
    before = verify_log(crashed, trust_for(make_signer()))
    assert before.ok and before.records == 5
    assert any("30 acknowledged record(s) wait in the audit journal" in w for w in before.warnings)
    with AuditLog(crashed, signer=make_signer()) as log:
        assert log.size == 35
        assert log.append(make_event(1)).seq == 36
    assert _db_count(crashed) == 36 and not list(read_acked(crashed))
    result = verify_log(crashed, trust_for(make_signer()))
    assert result.ok and result.records == 36 and result.covered == 36
    assert not any("journal" in w for w in result.warnings)


def _frames_end(segment: Path) -> int:
    data = segment.read_bytes()
    offset = len(MAGIC)
    while int.from_bytes(data[offset:offset + 4], "big"):
        length = int.from_bytes(data[offset:offset + 4], "big")
        offset += frame_size(length)
    return offset


def test_a_frame_the_crash_cut_short_is_dropped(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "cut")
    segment = segment_paths(path)[-1]
    data = bytearray(segment.read_bytes())
    end = _frames_end(segment)
    copy_of_last = data[end - 600:end]
    data[end + 4:end + 4 + len(copy_of_last)] = copy_of_last  # a 31st frame copied in, its length not yet
    segment.write_bytes(bytes(data))
    with AuditLog(path, signer=make_signer()) as log:
        assert log.size == 35
    assert verify_log(path, trust_for(make_signer())).ok


def test_a_damaged_journal_is_refused_not_skipped(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "damaged")
    segment = segment_paths(path)[-1]
    data = bytearray(segment.read_bytes())
    data[_frames_end(segment) // 2] ^= 0x01  # a record in the middle: acknowledged, now unreadable
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditSchemaError, match="damaged at byte"):
        AuditLog(path, signer=make_signer())
    assert _db_count(path) == 5  # nothing after the damage was stored out of order


def test_flush_makes_acknowledged_records_visible_in_the_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(log_module, "_STORE_INTERVAL", 3600.0)
    with AuditLog(tmp_path / "a.db", signer=make_signer()) as log:
        for i in range(3):
            log.append(make_event(i))
        assert _db_count(tmp_path / "a.db") == 0  # acknowledged, journaled, not yet stored
        log.flush()
        assert _db_count(tmp_path / "a.db") == 3


def test_a_database_that_cannot_be_written_fails_closed_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.db"
    log = AuditLog(path, signer=make_signer())
    acked = [log.append(make_event(i)).seq for i in range(4)]
    real = log._store.store

    def disk_full(rows, *, force_checkpoint=False):
        raise OSError("database or disk is full")

    monkeypatch.setattr(log._store, "store", disk_full)
    acked.append(log.append(make_event(4)).seq)
    with pytest.raises(StoreError, match="disk is full"):
        log.flush()
    with pytest.raises(StoreError, match="requests are refused until then"):
        log.append(make_event(5))  # fail closed: no more acknowledgements while the database is failing
    monkeypatch.setattr(log._store, "store", real)
    log.flush()  # the database works again: the held records go in and appends resume
    acked.append(log.append(make_event(6)).seq)
    log.close()
    assert acked == [1, 2, 3, 4, 5, 6]
    assert _db_count(path) == 6
    assert verify_log(path, trust_for(make_signer())).ok


def test_segments_rotate_and_stored_ones_are_deleted(tmp_path: Path, monkeypatch) -> None:
    from sealinfer.runtime.audit import journal

    monkeypatch.setattr(journal, "SEGMENT_BYTES", 4096)  # ~6 records per segment
    path = tmp_path / "a.db"
    with AuditLog(path, signer=make_signer()) as log:
        for i in range(60):
            log.append(make_event(i))
            if i % 10 == 9:
                log.flush()
                assert len(segment_paths(path)) == 1  # the segment in use; stored ones are gone
    assert not segment_paths(path)
    assert _db_count(path) == 60 and verify_log(path, trust_for(make_signer())).ok


def test_a_lone_append_whose_journal_write_fails_is_refused_and_the_chain_goes_on(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    path = tmp_path / "a.db"
    with AuditLog(path, signer=make_signer()) as log:
        assert log.append(make_event(0)).seq == 1
        real = log._journal.write

        def unplugged(seq, time_ns, event) -> None:
            raise OSError("No space left on device")

        monkeypatch.setattr(log._journal, "write", unplugged)
        with pytest.raises(StoreError, match="No space left"):
            log.append(make_event(1))
        monkeypatch.setattr(log._journal, "write", real)
        assert log.append(make_event(2)).seq == 2  # the refused record took no seq; the writer role was freed
    assert _db_count(path) == 2 and verify_log(path, trust_for(make_signer())).ok


def test_appends_are_not_sent_to_the_batching_path_while_another_thread_stores(tmp_path: Path, monkeypatch) -> None:
    """A slow store must not slow every appender: they stay on the lone-caller path and are acknowledged.

    (Sending them to the batching path while records waited made 16 appending threads queue behind one
    another for the GIL: that was the p99 tail of benchmarks/audit.py.)
    """
    import threading

    monkeypatch.setattr(log_module, "_STORE_BATCH", 8)
    monkeypatch.setattr(log_module, "_STORE_INTERVAL", 3600.0)
    path = tmp_path / "a.db"
    log = AuditLog(path, signer=make_signer())
    real, entered, release = log._store.store, threading.Event(), threading.Event()

    def slow_store(rows, *, force_checkpoint=False):
        entered.set()
        release.wait(30)
        real(rows, force_checkpoint=force_checkpoint)

    monkeypatch.setattr(log._store, "store", slow_store)
    storer = threading.Thread(target=log.flush)
    storer.start()
    assert entered.wait(10)
    batching = []
    submit = log._submit
    monkeypatch.setattr(log, "_submit", lambda payloads: batching.append(len(payloads)) or submit(payloads))
    seqs = [log.append(make_event(i)).seq for i in range(30)]  # well past _STORE_BATCH while the store runs
    assert seqs == list(range(1, 31)) and batching == []
    release.set()
    storer.join(10)
    log.close()
    assert _db_count(path) == 30 and verify_log(path, trust_for(make_signer())).ok


def test_a_frame_with_damaged_padding_is_refused(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "padding")
    segment = segment_paths(path)[-1]
    data = bytearray(segment.read_bytes())
    start = len(MAGIC)
    length = int.from_bytes(data[start:start + 4], "big")
    padding = frame_size(length) - FRAME_OVERHEAD - length
    assert padding  # the test's events are sized so that the first frame is padded
    data[start + frame_size(length) - 1] = 0x20
    segment.write_bytes(bytes(data))
    with pytest.raises(AuditSchemaError, match=f"damaged at byte {start}"):
        AuditLog(path, signer=make_signer())


def test_a_journal_that_skips_a_seq_is_refused(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "gap")
    segment = segment_paths(path)[-1]
    data = bytearray(segment.read_bytes())
    first = len(MAGIC) + frame_size(int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big"))
    second = frame_size(int.from_bytes(data[first:first + 4], "big"))
    del data[first:first + second]  # seq 7 gone: the frames still check themselves, the sequence does not
    segment.write_bytes(bytes(data) + bytes(second))
    with pytest.raises(AuditSchemaError, match="does not continue the stored log at seq 8"):
        AuditLog(path, signer=make_signer())
    assert _db_count(path) == 5


def test_chain_is_the_leaf_hash_of_the_stored_body() -> None:
    from sealinfer.runtime.audit.merkle import leaf_hash
    from sealinfer.runtime.audit.record import rfc3339
    from sealinfer.runtime.audit.schema import leaf_input

    genesis = bytes(range(32))
    t = 1_767_225_600_123_456_789
    acked = [(4, t, make_event(1).to_json()), (5, t + 1_000, make_event(2).to_json())]
    rows = chain(acked, genesis)
    assert [r.seq for r in rows] == [4, 5] and rows[0].prev_hash == genesis
    assert rows[1].prev_hash == rows[0].entry_hash
    for row, (_, ns, event) in zip(rows, acked, strict=True):
        assert row.entry_hash == leaf_hash(leaf_input(row.seq, row.prev_hash, row.body.encode()))
        body = json.loads(row.body)
        assert body["time"] == rfc3339(ns) and body["event_id"].startswith(f"{ns // 1_000_000:012x}"[:8])
        assert row.body.endswith(event[1:])  # the event's own fields verbatim after the assigned ones


def test_a_store_that_fails_is_retried_with_the_same_records(tmp_path: Path, monkeypatch) -> None:
    """Records are chained once: the retry stores the bodies (and event ids) the failed attempt had."""
    monkeypatch.setattr(log_module, "_STORE_INTERVAL", 3600.0)
    path = tmp_path / "a.db"
    log = AuditLog(path, signer=make_signer())
    for i in range(3):
        log.append(make_event(i))
    real, attempts = log._store.store, []

    def failing_once(rows, *, force_checkpoint=False):
        attempts.append([r.body for r in rows])
        if len(attempts) == 1:
            raise OSError("database or disk is full")
        real(rows, force_checkpoint=force_checkpoint)

    monkeypatch.setattr(log._store, "store", failing_once)
    with pytest.raises(StoreError, match="disk is full"):
        log.flush()
    log.flush()
    log.close()
    assert len(attempts[0]) == 3 and attempts[1] == attempts[0]
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT body FROM audit_events ORDER BY seq")] == attempts[0]
    assert verify_log(path, trust_for(make_signer())).ok


def test_the_lone_appenders_write_frames_exactly_as_a_batch_does(tmp_path: Path) -> None:
    from sealinfer.runtime.audit.journal import AckJournal, frame

    events = [(i + 1, 1_767_225_600_000_000_000 + i, make_event(i).to_json()[: 300 + i]) for i in range(9)]
    segments = []
    for name, batched in (("lone", False), ("batch", True)):
        folder = tmp_path / name
        folder.mkdir()
        journal = AckJournal(folder / "a.db", sync=False)
        journal.start()
        for seq, ns, event in events:
            if batched:
                journal.append([frame(seq, ns, event)], seq)
            else:
                journal.write(seq, ns, event)
        journal.close(all_stored=False)
        segments.append(segment_paths(folder / "a.db")[-1].read_bytes())
    assert segments[0] == segments[1]
    assert list(read_acked(tmp_path / "lone" / "a.db")) == events  # paddings 0-7 all read back


def test_a_journal_of_an_older_format_is_refused_with_what_to_do(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "old")
    segment = segment_paths(path)[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[len(MAGIC):] + bytes(len(MAGIC)))  # frames from byte 0: how format 1 began
    with pytest.raises(AuditSchemaError, match="not in the format") as info:
        AuditLog(path, signer=make_signer())
    assert "audit recover" in (info.value.hint or "")
    assert _db_count(path) == 5


def test_a_segment_created_just_before_a_crash_holds_nothing(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "empty")
    number = int(segment_paths(path)[-1].name.rsplit("-", 1)[1]) + 1
    path.with_name(f"{path.name}-ack-{number:08d}").write_bytes(bytes(4096))  # fallocated, nothing written
    with AuditLog(path, signer=make_signer()) as log:
        assert log.size == 35


def test_verify_warns_of_a_journal_it_cannot_read(crashed: Path, tmp_path: Path) -> None:
    path = _copy(crashed, tmp_path / "unreadable")
    segment = segment_paths(path)[-1]
    data = bytearray(segment.read_bytes())
    data[_frames_end(segment) // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    result = verify_log(path, trust_for(make_signer()))
    assert result.ok and result.records == 5  # what the database holds verifies
    assert any("journal next to this database cannot be read" in w and "damaged at byte" in w
               for w in result.warnings)


@pytest.mark.parametrize("batched", [False, True], ids=["lone", "batch"])
def test_a_journal_write_that_fails_leaves_no_bytes_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            batched: bool) -> None:
    from sealinfer.runtime.audit import journal as journal_module
    from sealinfer.runtime.audit.journal import AckJournal, frame

    journal = AckJournal(tmp_path / "a.db", sync=True)  # power durability: fdatasync can fail after the copy
    journal.start()
    journal.write(1, 10, '{"n":1}')

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", failing)
    refused = '{"n":"' + "x" * 200 + '"}'  # longer than what follows: leftovers would be read as a frame
    with pytest.raises(OSError):
        if batched:
            journal.append([frame(2, 11, refused)], 2)
        else:
            journal.write(2, 11, refused)
    monkeypatch.undo()
    journal.write(2, 12, '{"n":2}')
    journal.close(all_stored=False)
    assert list(read_acked(tmp_path / "a.db")) == [(1, 10, '{"n":1}'), (2, 12, '{"n":2}')]
