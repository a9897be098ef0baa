"""The append-only store: triggers, reopening, concurrency, durability modes and bad input."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sealinfer.runtime.audit.journal import frame
from sealinfer.runtime.audit.log import AuditLog, AuditReceipt
from sealinfer.runtime.audit.record import AuditEvent, InvalidAuditEventError, rfc3339_ns
from sealinfer.runtime.audit.verify import verify_log
from sealinfer.runtime.errors import ConfigurationError, StoreError

from .conftest import build_log, make_event, make_signer, trust_for


def test_update_and_delete_are_refused_by_triggers(tmp_path: Path) -> None:
    path = build_log(tmp_path / "audit.db", 5)
    conn = sqlite3.connect(path)
    for sql in ("UPDATE audit_events SET prev_hash = x'00' WHERE seq = 2", "DELETE FROM audit_events WHERE seq = 5",
                "UPDATE audit_checkpoints SET time = 'x'", "DELETE FROM audit_checkpoints",
                "DELETE FROM audit_keys", "UPDATE audit_meta SET value = 'x' WHERE key = 'log_id'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()
    assert verify_log(path, trust_for(make_signer())).ok


def test_records_hold_what_was_appended_and_generated_columns_read_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    event = make_event(0)
    with AuditLog(path, signer=make_signer()) as log:
        before = time.time_ns()
        receipt = log.append(event)
        after = time.time_ns()
    assert receipt.seq == 1 and isinstance(receipt, AuditReceipt)
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT seq, actor, role, action, model_digest, break_glass, time, event_id, body "
                       "FROM audit_events").fetchone()
    assert row[:6] == (receipt.seq, event.actor, event.role, event.action, event.model_digest,
                       int(event.break_glass))
    assert row[6].endswith("Z") and row[7][14] == "7"  # RFC 3339 UTC, UUID version 7
    # the time is the acknowledgement's, though the text is written when the record is stored
    assert before // 1000 <= rfc3339_ns(row[6]) // 1000 <= after // 1000
    assert json.loads(row[8])["details"] == event.details


def test_reopening_continues_the_chain_and_times_never_go_back(tmp_path: Path) -> None:
    path = build_log(tmp_path / "audit.db", 12, checkpoint_every=5)
    with AuditLog(path, signer=make_signer()) as log:
        assert log.size == 12
        assert log.append(make_event(99)).seq == 13
    result = verify_log(path, trust_for(make_signer()))
    assert result.ok and result.records == 13 and result.covered == 13
    conn = sqlite3.connect(path)
    times = [r[0] for r in conn.execute("SELECT time FROM audit_events ORDER BY seq")]
    assert times == sorted(times)


@pytest.mark.parametrize("durability", ["process", "power"])
def test_threads_lose_nothing(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "audit.db"
    receipts: list[int] = []
    lock = threading.Lock()
    with AuditLog(path, signer=make_signer(), durability=durability, checkpoint_every=97) as log:
        def work(t: int) -> None:
            for i in range(250):
                r = log.append(make_event(t * 1000 + i))
                with lock:
                    receipts.append(r.seq)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(receipts) == list(range(1, 2001))
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    result = verify_log(path, trust_for(make_signer()))
    assert result.ok and result.records == 2000 and result.covered == 2000


def test_a_failed_group_commit_reaches_every_waiter_of_its_batch(tmp_path: Path, monkeypatch) -> None:
    # Waiters are woken in a chain; a batch whose journal write fails must still wake every one of them,
    # each with an error, and the callers after it must carry on with an intact chain.
    import time

    with AuditLog(tmp_path / "a.db", signer=make_signer()) as log:
        real = log._journal.append
        calls = {"n": 0}

        def slow_then_failing(frames, last_seq):
            calls["n"] += 1
            if calls["n"] == 3:
                time.sleep(0.2)  # let the other appenders queue up behind this batch's successor
            if calls["n"] == 4:
                raise OSError("disk unplugged")
            return real(frames, last_seq)

        monkeypatch.setattr(log._journal, "append", slow_then_failing)
        monkeypatch.setattr(log._journal, "write", lambda seq, ns, ev: slow_then_failing([frame(seq, ns, ev)], seq))
        ok: list[int] = []
        failed: list[str] = []
        lock = threading.Lock()

        def work(t: int) -> None:
            for i in range(20):
                try:
                    seq = log.append(make_event(t * 100 + i)).seq
                except StoreError as exc:
                    with lock:
                        failed.append(str(exc))
                else:
                    with lock:
                        ok.append(seq)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a waiter of the failed batch was never woken"
    assert len(failed) >= 2 and all("disk unplugged" in f for f in failed)  # a whole batch, not one caller
    assert len(ok) + len(failed) == 160 and sorted(ok) == list(range(1, len(ok) + 1))
    assert verify_log(tmp_path / "a.db", trust_for(make_signer())).ok


def test_naive_mode_commits_one_record_per_transaction(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db", signer=None, group_commit=False) as log:
        seqs = [log.append(make_event(i)).seq for i in range(10)]
    assert seqs == list(range(1, 11))
    result = verify_log(tmp_path / "a.db")
    assert result.ok and result.checkpoints == 0
    assert any("no signed checkpoint" in w for w in result.warnings)


def test_not_an_audit_log(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a sealinfer audit log"):
        AuditLog(text, signer=None)
    with pytest.raises(StoreError, match="not a sealinfer audit log"):
        verify_log(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE patients (id INTEGER)").connection.commit()
    with pytest.raises(StoreError, match="tables patients"):
        AuditLog(other, signer=None)
    with pytest.raises(StoreError, match="does not exist"):
        verify_log(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="empty"):
        verify_log(empty)


def test_bad_events_and_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="durability"):
        AuditLog(tmp_path / "a.db", signer=None, durability="eventually")
    with AuditLog(tmp_path / "a.db", signer=None) as log:
        for bad in (AuditEvent(actor="", role="clinician", purpose="treatment", action="infer"),
                    AuditEvent(actor="a", role="r", purpose="p", action="infer", input_digest="raw patient data"),
                    AuditEvent(actor="a", role="r", purpose="p", action="infer", decision="maybe"),
                    AuditEvent(actor="a", role="r", purpose="p", action="infer", details={"x": object()}),
                    AuditEvent(actor="a", role="r", purpose="p", action="infer", details={"x": float("nan")})):
            with pytest.raises(InvalidAuditEventError):
                log.append(bad)
        assert log.size == 0
    log.close()
    with pytest.raises(StoreError, match="closed"):
        log.append(make_event(1))


def test_a_second_writer_is_refused_and_the_chain_survives(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, signer=None) as first:
        first.append(make_event(1))
        with pytest.raises(StoreError, match="Another writer"):
            AuditLog(path, signer=None)
        first.append(make_event(2))  # the refused opener took nothing from the first
    with AuditLog(path, signer=None) as again:  # the lock goes with the writer that held it
        assert again.size == 2
    assert verify_log(path).ok


def test_another_key_under_the_same_id_is_refused(tmp_path: Path) -> None:
    path = build_log(tmp_path / "audit.db", 3)
    with pytest.raises(StoreError, match="another public key"):
        AuditLog(path, signer=make_signer(seed=bytes(32)))


def test_key_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    path = build_log(tmp_path / "audit.db", 4)
    new = make_signer("audit-test-2", bytes([7]) * 32)
    with AuditLog(path, signer=new) as log:
        log.append(make_event(5))
    store = trust_for(make_signer())
    store.add(new.key_id, new.public_key_bytes())
    result = verify_log(path, store)
    assert result.ok and set(result.signer_key_ids) == {"audit-test-1", "audit-test-2"}
