"""The acknowledgement journal: records are durable before they reach audit.db, and nothing acked is lost."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sealinfer.runtime.audit import log as log_module
from sealinfer.runtime.audit.journal import FRAME_OVERHEAD, read_rows, segment_paths
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
    assert _db_count(path) == 5 and len(list(read_rows(path))) == 30
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
    assert _db_count(crashed) == 36 and not list(read_rows(crashed))
    result = verify_log(crashed, trust_for(make_signer()))
    assert result.ok and result.records == 36 and result.covered == 36
    assert not any("journal" in w for w in result.warnings)


def _frames_end(segment: Path) -> int:
    data = segment.read_bytes()
    offset = 0
    while int.from_bytes(data[offset:offset + 4], "big"):
        length = int.from_bytes(data[offset:offset + 4], "big")
        offset += FRAME_OVERHEAD + length + (-(FRAME_OVERHEAD + length) % 8)
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
        real = log._journal.append

        def unplugged(frames, last_seq) -> None:
            raise OSError("No space left on device")

        monkeypatch.setattr(log._journal, "append", unplugged)
        with pytest.raises(StoreError, match="No space left"):
            log.append(make_event(1))
        monkeypatch.setattr(log._journal, "append", real)
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
