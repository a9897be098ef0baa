"""Property tests: every kind of tampering is found, and the first bad seq is named."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealinfer.runtime.audit.checkpoint import Checkpoint
from sealinfer.runtime.audit.verify import verify_log

from .conftest import Raw, build_log, make_signer, trust_for

N = 60
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_log(tmp_path_factory.mktemp("base") / "audit.db", N, checkpoint_every=10)


@pytest.fixture
def copy(base_log: Path, tmp_path: Path):
    counter = iter(range(10**6))

    def make() -> Path:
        dst = tmp_path / f"copy{next(counter)}.db"
        shutil.copy(base_log, dst)
        return dst

    return make


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def _assert_bad(path: Path, seq: int, *words: str) -> None:
    result = verify_log(path, trust_for(make_signer()))
    assert not result.ok
    assert result.first_bad_seq == seq, result
    for w in words:
        assert w in result.problem, result.problem


def test_untouched_log_verifies(base_log: Path) -> None:
    result = verify_log(base_log, trust_for(make_signer()))
    assert result.ok and result.keys_trusted and result.records == N and result.covered == N
    assert result.checkpoints == N // 10 and result.first_bad_seq is None


@SETTINGS
@given(seq=st.integers(1, N), column=st.sampled_from(["body", "prev_hash", "entry_hash"]), data=st.data())
def test_bit_flip_in_any_column_is_found(copy, seq: int, column: str, data: st.DataObject) -> None:
    path = copy()
    raw = Raw(path)
    _, body, prev, entry = raw.row(seq)
    value = {"body": body, "prev_hash": prev, "entry_hash": entry}[column]
    bit = data.draw(st.integers(0, len(value) * 8 - 1), label="bit")
    if column == "body":
        # SQLite re-derives the generated columns on UPDATE and refuses malformed JSON, so flip the bit
        # in the file itself, as an attacker with disk access would.
        raw.close()
        content = path.read_bytes()
        assert content.count(body) == 1
        at = content.index(body) + bit // 8
        path.write_bytes(content[:at] + bytes([content[at] ^ (1 << (bit % 8))]) + content[at + 1:])
    else:
        raw.conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", [_flip(value, bit), seq])
        raw.close()
    _assert_bad(path, seq)


@SETTINGS
@given(seq=st.integers(1, N), bit=st.integers(6, 40))  # 2**6 > N: the new seq collides with no record
def test_bit_flip_in_seq_is_found(copy, seq: int, bit: int) -> None:
    path = copy()
    raw = Raw(path)
    raw.conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", [seq ^ (1 << bit), seq])
    raw.close()
    _assert_bad(path, seq)


@SETTINGS
@given(seq=st.integers(1, N))
def test_deleted_record_is_found(copy, seq: int) -> None:
    path = copy()
    raw = Raw(path)
    raw.conn.execute("DELETE FROM audit_events WHERE seq = ?", [seq])
    raw.close()
    _assert_bad(path, seq)


@SETTINGS
@given(pair=st.lists(st.integers(1, N), min_size=2, max_size=2, unique=True))
def test_reordered_records_are_found(copy, pair: list[int]) -> None:
    i, j = sorted(pair)
    path = copy()
    raw = Raw(path)
    a, b = raw.row(i), raw.row(j)
    for target, src in ((i, b), (j, a)):
        raw.conn.execute("UPDATE audit_events SET body = CAST(? AS TEXT), prev_hash = ?, entry_hash = ? "
                         "WHERE seq = ?", [src[1], src[2], src[3], target])
    raw.close()
    _assert_bad(path, i)


def _insert_at(raw: Raw, k: int, body: bytes, prev: bytes, entry: bytes) -> None:
    raw.conn.execute("UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= ?", [k])
    raw.conn.execute("UPDATE audit_events SET seq = seq - 999999 WHERE seq >= 1000000")
    raw.conn.execute("INSERT INTO audit_events (seq, body, prev_hash, entry_hash) VALUES (?, CAST(? AS TEXT), ?, ?)",
                     [k, body, prev, entry])


@SETTINGS
@given(k=st.integers(1, N), src=st.integers(1, N))
def test_inserted_record_is_found(copy, k: int, src: int) -> None:
    path = copy()
    raw = Raw(path)
    _, body, _, _ = raw.row(src)
    _insert_at(raw, k, body, os.urandom(32), os.urandom(32))
    raw.close()
    _assert_bad(path, k)


@SETTINGS
@given(k=st.integers(2, N))
def test_inserted_record_with_forged_hashes_breaks_the_next_link(copy, k: int) -> None:
    """An attacker who recomputes the forged record's hashes still breaks the link to its successor."""
    import hashlib

    from sealinfer.runtime.audit.schema import leaf_input

    path = copy()
    raw = Raw(path)
    _, body, _, prev_entry = raw.row(k - 1)
    forged = body.replace(b'"actor":"user', b'"actor":"mallory')
    entry = hashlib.sha256(b"\x00" + leaf_input(k, prev_entry, forged)).digest()
    _insert_at(raw, k, forged, prev_entry, entry)
    raw.close()
    if k % 10:
        _assert_bad(path, k + 1, "prev_hash")
    else:  # the forgery is the last leaf of a checkpoint: its signed root flags that checkpoint's range
        _assert_bad(path, k - 9, "Merkle root")


@SETTINGS
@given(t=st.integers(1, N))
def test_truncation_behind_last_checkpoint_is_found(copy, t: int) -> None:
    path = copy()
    raw = Raw(path)
    raw.conn.execute("DELETE FROM audit_events WHERE seq >= ?", [t])
    raw.close()
    _assert_bad(path, t)


def test_truncating_records_and_checkpoints_is_found_with_an_exported_checkpoint(copy) -> None:
    path = copy()
    conn = sqlite3.connect(path)
    row = conn.execute("SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints "
                       "ORDER BY tree_size DESC LIMIT 1").fetchone()
    log_id = conn.execute("SELECT value FROM audit_meta WHERE key='log_id'").fetchone()[0]
    conn.close()
    exported = Checkpoint(log_id, row[0], row[1], row[2], row[3], row[4])
    raw = Raw(path)
    raw.conn.execute("DELETE FROM audit_events WHERE seq > 40")
    raw.conn.execute("DELETE FROM audit_checkpoints WHERE tree_size > 40")
    raw.close()
    assert verify_log(path, trust_for(make_signer())).ok  # undetectable from inside the file alone...
    result = verify_log(path, trust_for(make_signer()), external_checkpoints=[exported])
    assert not result.ok and result.first_bad_seq == 41 and "truncated" in result.problem  # ...but not outside


def test_rewritten_history_is_caught_by_the_checkpoint_root(copy) -> None:
    """Rewrite records 25.. with a consistent chain: only the signed Merkle root can tell."""
    import hashlib

    from sealinfer.runtime.audit.schema import leaf_input

    path = copy()
    raw = Raw(path)
    _, _, _, prev = raw.row(24)
    for seq in range(25, N + 1):
        _, body, _, _ = raw.row(seq)
        body = body.replace(b'"actor":"user', b'"actor":"eve')
        entry = hashlib.sha256(b"\x00" + leaf_input(seq, prev, body)).digest()
        raw.conn.execute("UPDATE audit_events SET body = CAST(? AS TEXT), prev_hash = ?, entry_hash = ? "
                         "WHERE seq = ?", [body, prev, entry, seq])
        prev = entry
    raw.close()
    _assert_bad(path, 21, "Merkle root")  # the last checkpoint that still holds is at 20


@SETTINGS
@given(size_index=st.integers(0, N // 10 - 1), column=st.sampled_from(["root", "signature", "time", "key_id"]))
def test_tampered_checkpoint_is_found(copy, size_index: int, column: str) -> None:
    path = copy()
    raw = Raw(path)
    size = (size_index + 1) * 10
    value = raw.conn.execute(f"SELECT {column} FROM audit_checkpoints WHERE tree_size = ?", [size]).fetchone()[0]
    new = _flip(value, 3) if isinstance(value, bytes) else value + "x"
    raw.conn.execute(f"UPDATE audit_checkpoints SET {column} = ? WHERE tree_size = ?", [new, size])
    raw.close()
    result = verify_log(path, trust_for(make_signer()))
    assert not result.ok and f"tree size {size}" in result.problem


def test_untrusted_or_missing_checkpoint_key(copy) -> None:
    path = copy()
    other = make_signer("someone-else", bytes(32))
    result = verify_log(path, trust_for(other))
    assert not result.ok and "not in the trusted-signers list" in result.problem
    untrusted = verify_log(path)  # no trust store: keys from the log itself, said plainly
    assert untrusted.ok and not untrusted.keys_trusted
    assert any("not independently trusted" in w for w in untrusted.warnings)
    raw = Raw(path)
    raw.conn.execute("DELETE FROM audit_keys")
    raw.close()
    missing = verify_log(path)
    assert not missing.ok and "neither in the log nor in a trust store" in missing.problem


def test_revoked_checkpoint_key_fails(copy) -> None:
    path = copy()
    store = trust_for(make_signer())
    store.revoked.add(make_signer().key_id)
    result = verify_log(path, store)
    assert not result.ok and "revoked" in result.problem


@pytest.mark.parametrize("victim", [3, 50, 51, 52, 99, 100])
def test_split_verification_finds_tampering_in_either_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           victim: int) -> None:
    """Large logs are hashed in two processes; the link between the halves is checked too."""
    import threading

    from sealinfer.runtime.audit import verify as verify_module

    assert threading.active_count() == 1  # otherwise verify_log stays in one process
    monkeypatch.setattr(verify_module, "_PARALLEL_MIN", 10)
    path = build_log(tmp_path / "audit.db", 100, checkpoint_every=10)
    good = verify_log(path, trust_for(make_signer()))
    assert good.ok and good.records == 100 and good.covered == 100
    raw = Raw(path)
    _, body, _, _ = raw.row(victim)
    raw.conn.execute("UPDATE audit_events SET prev_hash = ? WHERE seq = ?", [b"\x00" * 32, victim])
    raw.close()
    _assert_bad(path, victim, "prev_hash")


def test_every_flipped_byte_of_an_export_archive_gives_a_verdict_or_a_typed_error(tmp_path: Path) -> None:
    """Damage anywhere in the gzip stream ends as a refusal or a SealinferError, never a zlib crash.

    The only copies that may still verify are those whose files read back byte-identical to the
    originals: flips in gzip metadata (file name, time, flags) or past the last file change nothing
    that was signed (nor does whitespace around the base64 signature).
    """
    import io
    import tarfile
    import zlib

    from sealinfer.runtime.audit.export import export_log, verify_archive
    from sealinfer.runtime.errors import SealinferError

    signer = make_signer()
    db = build_log(tmp_path / "a.db", 30, signer=signer)
    archive = tmp_path / "a.tar.gz"
    export_log(db, archive, signer)
    assert verify_archive(archive, trust_for(signer)).ok
    original = archive.read_bytes()

    def files(data: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            out = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        out["manifest.sig"] = out["manifest.sig"].strip()  # surrounding whitespace is not signature bytes
        return out

    signed = files(original)
    # every third byte, and every byte of the gzip trailer (CRC and length of the whole stream)
    for offset in sorted({*range(0, len(original), 3), *range(len(original) - 8, len(original))}):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        archive.write_bytes(bytes(damaged))
        try:
            result = verify_archive(archive, trust_for(signer))
        except SealinferError:
            continue
        if result.ok:
            try:
                same = files(bytes(damaged)) == signed
            except (OSError, EOFError, zlib.error, tarfile.TarError):
                same = False
            assert same, f"a flipped bit at byte {offset} changed the content and went unnoticed"
