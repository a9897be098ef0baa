"""TelemetryStore: nothing lost under concurrency, rollups agree with raw rows, retention, bad files."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sealinfer.dashboard.fixtures import telemetry_records
from sealinfer.runtime.errors import StoreError
from sealinfer.runtime.telemetry import histogram
from sealinfer.runtime.telemetry.record import PHASES, TelemetryRecord
from sealinfer.runtime.telemetry.schema import open_readonly
from sealinfer.runtime.telemetry.store import TelemetryStore


def _rec(i: int, ts: float = 1_780_000_000.0, **kw) -> TelemetryRecord:
    return TelemetryRecord(ts=ts, request_id=f"r{i}", model="m", inference_us=100.0 + i % 97, **kw)


def test_many_threads_lose_nothing_after_close(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = TelemetryStore(path, flush_interval_s=0.01, max_buffer=300)
    threads, per_thread = 8, 2_500

    def work(t: int) -> None:
        for i in range(per_thread):
            store.record(_rec(t * per_thread + i, ts=1_780_000_000.0 + i * 0.05))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()
    conn = sqlite3.connect(path)
    ids = {r[0] for r in conn.execute("SELECT request_id FROM requests")}
    assert ids == {f"r{i}" for i in range(threads * per_thread)}
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == threads * per_thread
    assert conn.execute("SELECT sum(n) FROM rollup_minute").fetchone()[0] == threads * per_thread


def test_background_thread_flushes_without_close(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.db", flush_interval_s=0.02) as store:
        store.record(_rec(1))
        conn = sqlite3.connect(tmp_path / "t.db")
        count = lambda: conn.execute("SELECT count(*) FROM requests").fetchone()[0]  # noqa: E731
        deadline = time.monotonic() + 10
        while count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count() == 1 and store.pending == 0


def test_rollups_agree_with_raw_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    # Several flushes so that upserts merge into existing rollup rows.
    with TelemetryStore(path, flush_interval_s=3600, max_buffer=10**6) as store:
        recs = telemetry_records(4_000, seed=21, span_s=900)
        for chunk in range(0, len(recs), 700):
            store.record_many(recs[chunk:chunk + 700])
            store.flush()
    conn = sqlite3.connect(path)
    key = "CAST(ts / 60 AS INTEGER), config, model, priority, device"
    phase_sums = ", ".join(f"sum(CASE WHEN outcome='ok' THEN {p}_us END)" for p in PHASES)
    raw = conn.execute(
        f"SELECT {key}, count(*), sum(outcome='ok'), sum(outcome='denied'), sum(outcome='error'), "
        f"sum(CASE WHEN outcome='ok' THEN total_us END), min(CASE WHEN outcome='ok' THEN total_us END), "
        f"max(CASE WHEN outcome='ok' THEN total_us END), {phase_sums}, "
        f"sum(outcome='ok' AND predicted_us IS NOT NULL) FROM requests GROUP BY {key} ORDER BY {key}"
    ).fetchall()
    phase_cols = ", ".join(f"{p}_sum" for p in PHASES)
    roll = conn.execute(
        f"SELECT minute, config, model, priority, device, n, ok, denied, errors, total_sum, total_min, "
        f"total_max, {phase_cols}, predicted_n FROM rollup_minute ORDER BY minute, config, model, priority, device"
    ).fetchall()
    assert len(raw) == len(roll) > 50
    for a, b in zip(raw, roll, strict=True):
        assert a[:9] == b[:9]
        np.testing.assert_allclose([x or 0.0 for x in a[9:-1]], [x or 0.0 for x in b[9:-1]], rtol=1e-9)
        assert a[-1] == b[-1]
    # Histogram: every successful request sits in the bucket its latency belongs to.
    expected: dict[tuple, int] = {}
    for minute, config, model, prio, total in conn.execute(
        "SELECT CAST(ts / 60 AS INTEGER), config, model, priority, total_us FROM requests WHERE outcome='ok'"
    ):
        k = (minute, config, model, prio, histogram.bucket_of(total))
        expected[k] = expected.get(k, 0) + 1
    got = {tuple(r[:5]): r[5] for r in conn.execute("SELECT * FROM rollup_latency")}
    assert got == expected


def test_histogram_quantiles_within_one_bucket() -> None:
    rng = np.random.default_rng(1)
    values = rng.lognormal(8, 1.2, 20_000)
    counts: dict[int, int] = {}
    for v in values:
        counts[histogram.bucket_of(v)] = counts.get(histogram.bucket_of(v), 0) + 1
    for q, est in zip((0.5, 0.95, 0.99), histogram.quantiles(counts, (0.5, 0.95, 0.99)), strict=True):
        exact = float(np.quantile(values, q))
        assert exact / 1.25 <= est <= exact * 1.25
    deadline = 200_000.0
    assert histogram.fraction_at_most(counts, deadline) == pytest.approx(float(np.mean(values <= deadline)))


def test_retention_deletes_old_rows_and_rollups(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "t.db"
    with TelemetryStore(path, retention_days=7) as store:
        for i in range(50):
            store.record(_rec(i, ts=now - 10 * 86400 + i))
        for i in range(50, 80):
            store.record(_rec(i, ts=now - 3600 + i))
        store.flush()  # the flush applies retention itself
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 30
        assert conn.execute("SELECT min(ts) FROM requests").fetchone()[0] >= now - 7 * 86400
        assert conn.execute("SELECT sum(n) FROM rollup_minute").fetchone()[0] == 30
        assert conn.execute("SELECT sum(n) FROM rollup_latency").fetchone()[0] == 30
        # A week later the rest has aged out too.
        assert store.apply_retention(now=now + 8 * 86400) == 30
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM rollup_minute").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM rollup_latency").fetchone()[0] == 0


def test_models_table_upserts(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.db") as store:
        store.record_model("ab" * 32, "sepsis", "1", signature_ok=True, watermark_status="verified",
                           dp_epsilon=3.0, param_bytes=100)
        store.record_model("ab" * 32, "sepsis", "1", signature_ok=True, watermark_status="missing",
                           dp_epsilon=3.0, param_bytes=100)
    conn = open_readonly(tmp_path / "t.db")
    rows = conn.execute("SELECT name, watermark_status, signature_ok, dp_epsilon FROM models").fetchall()
    assert rows == [("sepsis", "missing", 1, 3.0)]


def test_reopen_appends(tmp_path: Path) -> None:
    for i in range(2):
        with TelemetryStore(tmp_path / "t.db") as store:
            store.record(_rec(i))
    assert sqlite3.connect(tmp_path / "t.db").execute("SELECT count(*) FROM requests").fetchone()[0] == 2


def test_wrong_kind_and_garbage_raise_store_error(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE audit_events (seq INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a sealinfer telemetry database") as err:
        TelemetryStore(other)
    assert "--audit-db" in str(err.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        TelemetryStore(garbage)
    with pytest.raises(StoreError, match="does not exist"):
        TelemetryStore(tmp_path / "missing-dir" / "t.db")
    with pytest.raises(StoreError, match="does not exist"):
        open_readonly(tmp_path / "nothing.db")
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        open_readonly(tmp_path / "empty.db")


def test_record_after_close_raises(tmp_path: Path) -> None:
    store = TelemetryStore(tmp_path / "t.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.record(_rec(1))


def test_invalid_outcome_rejected() -> None:
    with pytest.raises(ValueError, match="outcome"):
        TelemetryRecord(ts=0, request_id="x", model="m", outcome="maybe")


def test_a_sessions_request_values_are_stored_as_the_record_they_stand_for(tmp_path: Path) -> None:
    """The hot path hands over a tuple; the writer builds the record: rows and rollups are the same as record()'s."""
    from sealinfer.runtime.telemetry.record import SessionFields

    fields = SessionFields(model="m", model_version="2", model_digest="ab" * 32, config="sealed+authz",
                           features={"sealed": True}, device="cpu0", model_param_bytes=1234, request_prefix="p",
                           features_json='{"sealed":true}')
    values = [(1_780_000_000.0 + i, i, "ok" if i % 3 else "denied", None if i % 3 else "denied", "ward7", "stat",
               4, 1.0, 2.0, 100.0 + i, 3.0, 4.0, 110.0 + i) for i in range(50)]
    with TelemetryStore(tmp_path / "a.db", flush_interval_s=60) as direct, \
            TelemetryStore(tmp_path / "b.db", flush_interval_s=60) as lazy:
        for v in values:
            direct.record(fields.record(v))
            lazy.record_request(fields, v)
    tables = ("requests", "rollup_minute", "rollup_latency")
    with sqlite3.connect(tmp_path / "a.db") as a, sqlite3.connect(tmp_path / "b.db") as b:
        for table in tables:
            rows = a.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            assert rows and rows == b.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        first = b.execute("SELECT request_id, model_version, device, tenant, priority, outcome, inference_us, "
                          "model_param_bytes FROM requests ORDER BY ts LIMIT 2").fetchall()
    assert first == [("p-0", "2", "cpu0", "ward7", "stat", "denied", 100.0, 1234),
                     ("p-1", "2", "cpu0", "ward7", "stat", "ok", 101.0, 1234)]
