"""The CLI mirrors the API: keys init/list/rotate/revoke/trust, seal, inspect, verify; errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli
from sealinfer.tests import models


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SEALINFER_KEYRING", str(tmp_path / "kr"))
    monkeypatch.setenv("SEALINFER_PASSPHRASE", "cli passphrase")
    return {"SEALINFER_KEYRING": str(tmp_path / "kr"), "SEALINFER_PASSPHRASE": "cli passphrase"}


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_full_key_and_artifact_workflow(tmp_path: Path, env: dict[str, str]):
    code, out, _ = run("keys", "init", "--scrypt-n", "1024")
    assert code == 0 and "created keyring" in out
    code, out, _ = run("keys", "list", "--json")
    listing = json.loads(out)
    kek = next(k["id"] for k in listing["keys"] if k["kind"] == "kek")
    model = models.save(models.mlp(), tmp_path / "m.onnx")
    sealed = tmp_path / "m.sealed"
    code, out, err = run("seal", str(model), "-o", str(sealed), "--name", "sepsis", "--version", "2", "--no-progress")
    assert code == 0, err
    assert "sealed sepsis v2" in out
    code, out, _ = run("inspect", str(sealed))
    shown = json.loads(out)
    assert shown["manifest"]["model"]["name"] == "sepsis" and shown["recipients"][0]["kek_id"] == kek
    assert "wrapped" not in json.dumps(shown["recipients"])
    code, out, _ = run("verify", str(sealed), "--json", "--no-progress")
    assert code == 0 and json.loads(out)["ok"] is True
    # rotate with re-wrap, then revoke the old KEK: the artifact still verifies
    code, out, _ = run("keys", "rotate", kek, "--rewrap", str(sealed))
    assert code == 0 and "re-wrapped" in out
    code, out, _ = run("keys", "revoke", kek, "--reason", "rotated")
    assert code == 0
    code, out, _ = run("verify", str(sealed), "--no-progress")
    assert code == 0 and out.startswith("OK")
    # revoke the signer: verification fails with a clear message and a non-zero exit
    signer = shown["signature"]["key_id"]
    run("keys", "revoke", signer, "--reason", "leaked")
    code, _, err = run("verify", str(sealed), "--no-progress")
    assert code != 0 and "revoked" in err and "Traceback" not in err


def test_trust_another_sites_signer(tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    run("keys", "init", "--scrypt-n", "1024")
    monkeypatch.setenv("SEALINFER_KEYRING", str(tmp_path / "site-b"))
    run("keys", "init", "--scrypt-n", "1024")
    code, pub, _ = run("keys", "export")
    (tmp_path / "b.pub").write_text(pub)
    monkeypatch.setenv("SEALINFER_KEYRING", str(tmp_path / "kr"))
    code, out, _ = run("keys", "trust", "site-b-signer", str(tmp_path / "b.pub"))
    assert code == 0 and "now trusting site-b-signer" in out
    code, out, _ = run("keys", "list")
    assert "site-b-signer" in out and "trusted" in out


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["inspect", "{tmp}/missing.sealed"], "Cannot read"),
        ("junk", ["inspect", "{tmp}/junk.sealed"], "not a sealed artifact"),
        ("junk+keyring", ["seal", "{tmp}/junk.sealed", "-o", "{tmp}/x.sealed"], "not an ONNX model"),
        ("none", ["verify", "{tmp}/missing.sealed"], "No keyring found"),
        ("none", ["policy", "show", "hipa"], "Did you mean 'hipaa'"),
    ],
)
def test_errors_exit_nonzero_without_traceback(tmp_path: Path, setup: str, args: list[str], message: str):
    if setup.startswith("junk"):
        (tmp_path / "junk.sealed").write_bytes(b"\x00garbage" * 64)
    if setup.endswith("keyring"):
        from sealinfer.runtime.keys.keyring import Keyring

        Keyring.create(tmp_path / "no-keyring", "x", scrypt_n=1024)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {"SEALINFER_KEYRING": str(tmp_path / "no-keyring"), "SEALINFER_PASSPHRASE": "x", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "sealinfer.runtime", *argv], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_everywhere():
    for argv in (
        ["--help"],
        ["keys", "--help"],
        ["keys", "rotate", "--help"],
        ["seal", "--help"],
        ["verify", "--help"],
    ):
        code, out, _ = run(*argv)
        assert code == 0 and "Usage:" in out
