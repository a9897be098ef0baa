"""``sealinfer dashboard`` refuses unsafe or broken setups with one clear line, before Streamlit starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli

AUTH_OK = """
[auth]
redirect_uri = "https://dash.hospital.example/oauth2callback"
cookie_secret = "a-long-random-cookie-secret"
client_id = "sealinfer-dashboard"
client_secret = "not-a-real-secret"
server_metadata_url = "https://idp.hospital.example/.well-known/openid-configuration"
"""


def _run(*args: str):
    return CliRunner().invoke(cli, ["dashboard", *args])


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def test_non_loopback_without_auth_is_refused(telemetry_db: Path) -> None:
    res = _run("--telemetry-db", str(telemetry_db), "--host", "0.0.0.0")
    assert res.exit_code == 2
    assert "Refusing to serve the dashboard on non-loopback address 0.0.0.0" in res.output
    assert "--auth-config" in res.output
    assert "Traceback" not in res.output


def test_auth_config_without_auth_section_is_refused(telemetry_db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "secrets.toml"
    bad.write_text('[other]\nkey = "x"\n')
    res = _run("--telemetry-db", str(telemetry_db), "--host", "0.0.0.0", "--auth-config", str(bad))
    assert res.exit_code == 2 and "has no [auth] section" in res.output
    bad.write_text('[auth]\nredirect_uri = "https://x/oauth2callback"\n')
    res = _run("--telemetry-db", str(telemetry_db), "--host", "0.0.0.0", "--auth-config", str(bad))
    assert res.exit_code == 2 and "cookie_secret" in res.output and "OIDC provider" in res.output


def test_valid_auth_config_passes_the_host_check(telemetry_db: Path, tmp_path: Path, busy_port: int) -> None:
    # With auth the non-loopback bind is allowed; the busy port then stops it before any server starts.
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(AUTH_OK)
    res = _run("--telemetry-db", str(telemetry_db), "--host", "0.0.0.0", "--port", str(busy_port),
               "--auth-config", str(secrets))
    assert res.exit_code == 2
    assert "Refusing" not in res.output
    assert f"Port {busy_port} on 0.0.0.0 is already in use" in res.output


def test_port_in_use_is_a_clear_error(telemetry_db: Path, busy_port: int) -> None:
    res = _run("--telemetry-db", str(telemetry_db), "--port", str(busy_port))
    assert res.exit_code == 2
    assert f"Port {busy_port} on 127.0.0.1 is already in use" in res.output
    assert "--port" in res.output


def test_missing_empty_and_wrong_kind_databases(tmp_path: Path, audit_db: Path, telemetry_db: Path) -> None:
    res = _run("--telemetry-db", str(tmp_path / "nope.db"))
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    (tmp_path / "empty.db").write_bytes(b"")
    res = _run("--telemetry-db", str(tmp_path / "empty.db"))
    assert res.exit_code == 1 and "empty file" in res.output
    res = _run("--telemetry-db", str(audit_db))
    assert res.exit_code == 1 and "not a sealinfer telemetry database" in res.output
    assert "--audit-db" in res.output
    res = _run("--telemetry-db", str(telemetry_db), "--audit-db", str(telemetry_db))
    assert res.exit_code == 1 and "not a sealinfer audit database" in res.output
