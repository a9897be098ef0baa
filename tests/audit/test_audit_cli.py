"""`sealinfer audit ...` and `sealinfer report` through the real CLI: messages and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from sealinfer.runtime.audit.log import AuditLog
from sealinfer.runtime.cli.main import cli
from sealinfer.runtime.keys.keyring import Keyring

from .conftest import Raw, make_event

PASS = "correct horse battery staple"
TODAY = datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ring = Keyring.create(root / "keyring", PASS, scrypt_n=2**14)
    db = root / "audit.db"
    with AuditLog(db, signer=ring.signer(), checkpoint_every=16) as log:
        for i in range(50):
            log.append(make_event(i))
    return {"root": root, "keyring": root / "keyring", "db": db}


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEALINFER_PASSPHRASE", PASS)
    monkeypatch.delenv("SEALINFER_KEYRING", raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_verify_exit_codes(env, run, tmp_path: Path) -> None:
    ok = run("audit", "verify", "--db", env["db"], "--keyring", env["keyring"])
    assert ok.exit_code == 0 and ok.output.startswith("OK: 50 records")
    untrusted = run("audit", "verify", "--db", env["db"])
    assert untrusted.exit_code == 4 and "not independently trusted" in untrusted.output
    assert run("audit", "verify", "--db", env["db"], "--allow-untrusted").exit_code == 0
    key = tmp_path / "audit-key.json"
    assert run("audit", "checkpoint-key", "export", "--keyring", env["keyring"], "-o", key).exit_code == 0
    as_json = run("audit", "verify", "--db", env["db"], "--trusted-key", key, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.output)["keys_trusted"] is True

    bad = tmp_path / "bad.db"
    shutil.copy(env["db"], bad)
    raw = Raw(bad)
    raw.conn.execute("DELETE FROM audit_events WHERE seq = 33")
    raw.close()
    failed = run("audit", "verify", "--db", bad, "--keyring", env["keyring"])
    assert failed.exit_code == 1 and "FAILED verification at seq 33" in failed.output

    other = tmp_path / "other.db"
    other.write_text("hello")
    wrong = run("audit", "verify", "--db", other)
    assert wrong.exit_code == 2 and "not a sealinfer audit log" in wrong.output
    missing = run("audit", "verify", "--db", tmp_path / "nope.db")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_prove_consistency_checkpoint_export(env, run, tmp_path: Path) -> None:
    proof = run("audit", "prove", "7", "--db", env["db"])
    assert proof.exit_code == 0 and json.loads(proof.output)["seq"] == 7
    cons = run("audit", "consistency", "16", "48", "--db", env["db"])
    assert cons.exit_code == 0 and json.loads(cons.output)["old_size"] == 16
    assert run("audit", "prove", "500", "--db", env["db"]).exit_code != 0
    cp = tmp_path / "cp.json"
    assert run("audit", "checkpoint", "--db", env["db"], "-o", cp).exit_code == 0
    assert json.loads(cp.read_text())["tree_size"] == 50
    witnessed = run("audit", "verify", "--db", env["db"], "--keyring", env["keyring"], "--checkpoint", cp)
    assert witnessed.exit_code == 0

    archive = tmp_path / "audit.tar.gz"
    out = run("audit", "export", "--db", env["db"], "-o", archive, "--keyring", env["keyring"])
    assert out.exit_code == 0 and "archived 50 records" in out.output
    checked = run("audit", "verify-archive", archive, "--keyring", env["keyring"])
    assert checked.exit_code == 0 and checked.output.startswith("OK: 50 records")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    assert run("audit", "verify-archive", archive, "--keyring", env["keyring"]).exit_code != 0


def test_report_formats_and_exit_codes(env, run, tmp_path: Path) -> None:
    for fmt in ("json", "html", "pdf"):
        out = tmp_path / f"report.{fmt}"
        res = run("report", "--db", env["db"], "--from", TODAY, "--to", TODAY, "--format", fmt, "-o", out,
                  "--keyring", env["keyring"])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["integrity"] == "VERIFIED" and data["events"] == 50
    assert any(k["kind"] == "signing" for k in data["keys"])
    empty = run("report", "--db", env["db"], "--from", "2020-01-01", "--to", "2020-01-31", "--format", "json",
                "-o", tmp_path / "e.json", "--keyring", env["keyring"])
    assert empty.exit_code == 5 and "No audit records" in empty.output
    untrusted = run("report", "--db", env["db"], "--from", TODAY, "--to", TODAY, "--format", "json",
                    "-o", tmp_path / "u.json")
    assert untrusted.exit_code == 4
    bad = tmp_path / "bad.db"
    shutil.copy(env["db"], bad)
    raw = Raw(bad)
    raw.conn.execute("DELETE FROM audit_events WHERE seq >= 40")
    raw.close()
    failed = run("report", "--db", bad, "--from", TODAY, "--to", TODAY, "--format", "html", "-o",
                 tmp_path / "f.html", "--keyring", env["keyring"])
    assert failed.exit_code == 1 and "FAILED" in failed.output
    assert "AUDIT LOG INTEGRITY: FAILED" in (tmp_path / "f.html").read_text()


def test_module_entry_point_and_help() -> None:
    res = subprocess.run([sys.executable, "-m", "sealinfer.runtime", "audit", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0
    for sub in ("verify", "prove", "consistency", "export", "checkpoint"):
        assert sub in res.stdout
    res = subprocess.run([sys.executable, "-m", "sealinfer.runtime", "report", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "--format" in res.stdout


# A writer that acknowledges 7 records and dies before its writer thread stores any of them.
CRASHING_WRITER = r"""
import os, sys
from sealinfer.runtime.audit import log as log_module
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.tests.audit.conftest import make_event
log_module._STORE_INTERVAL = 3600.0
log = log_module.AuditLog(sys.argv[1], signer=Keyring.open(sys.argv[2], sys.argv[3]).signer())
for i in range(7):
    log.append(make_event(1000 + i))
os._exit(0)
"""


def test_recover_stores_what_a_crashed_writer_left_in_the_journal(env, run, tmp_path: Path) -> None:
    db = tmp_path / "crashed" / "audit.db"
    db.parent.mkdir()
    shutil.copy(env["db"], db)
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(db), str(env["keyring"]), PASS], check=True)
    before = run("audit", "verify", "--db", db, "--keyring", env["keyring"])
    assert before.exit_code == 0 and before.output.startswith("OK: 50 records")
    assert "7 acknowledged record(s) wait" in before.output and "sealinfer audit recover" in before.output

    with AuditLog(tmp_path / "live.db", signer=None) as live:  # a log whose writer is running is left alone
        busy = run("audit", "recover", "--db", live.path, "--keyring", env["keyring"])
        assert busy.exit_code != 0 and "Another writer" in busy.output and "Traceback" not in busy.output

    out = run("audit", "recover", "--db", db, "--keyring", env["keyring"])
    assert out.exit_code == 0 and "stored 7 record(s)" in out.output and "57 records" in out.output
    after = run("audit", "verify", "--db", db, "--keyring", env["keyring"])
    assert after.exit_code == 0 and after.output.startswith("OK: 57 records") and "wait" not in after.output
    again = run("audit", "recover", "--db", db, "--keyring", env["keyring"])
    assert again.exit_code == 0 and "nothing waited" in again.output
    missing = run("audit", "recover", "--db", tmp_path / "nope.db", "--keyring", env["keyring"])
    assert missing.exit_code == 2 and not (tmp_path / "nope.db").exists()  # never creates a log
