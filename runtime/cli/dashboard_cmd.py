"""``sealinfer dashboard``: serve the Streamlit operations dashboard over the runtime's stores.

Everything that can be wrong is checked before Streamlit starts (databases, host, auth, port), so the
user gets one clear line instead of a server that starts and then shows errors. The dashboard binds
loopback by default; any other address is refused unless Streamlit OIDC login (``st.login``) is
configured through ``--auth-config``, because telemetry names models, devices and tenants.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import sys
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

import click

from sealinfer.runtime.errors import ConfigurationError, StoreError

_AUTH_KEYS = ("client_id", "client_secret", "server_metadata_url")


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ConfigurationError(f"Cannot resolve host {host!r}: {exc}.", hint="Use an IP address.") from exc
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_auth_config(path: Path) -> None:
    """Require a Streamlit secrets file with a usable ``[auth]`` section (OIDC for ``st.login``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigurationError(f"Auth config {path} does not exist.",
                                 hint="Pass a secrets.toml with an [auth] section.") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Auth config {path} is not valid TOML: {exc}.",
                                 hint="Fix the file; see Streamlit's st.login documentation.") from exc
    auth = data.get("auth")
    if not isinstance(auth, dict):
        raise ConfigurationError(f"Auth config {path} has no [auth] section.",
                                 hint="Add [auth] with redirect_uri, cookie_secret and your OIDC provider.")
    missing = [k for k in ("redirect_uri", "cookie_secret") if not auth.get(k)]
    providers = [auth] + [v for v in auth.values() if isinstance(v, dict)]
    if not any(all(p.get(k) for k in _AUTH_KEYS) for p in providers):
        missing.append("an OIDC provider (" + ", ".join(_AUTH_KEYS) + ")")
    if missing:
        raise ConfigurationError(f"Auth config {path} [auth] is missing: {', '.join(missing)}.",
                                 hint="Complete the [auth] section as st.login requires.")


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as the server will use, so a socket in TIME_WAIT does not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(
                f"Port {port} on {host} is already in use ({exc.strerror or exc}).",
                hint="Pick another port with --port, or stop the program listening on it.",
            ) from exc


def check_stores(telemetry: Path, audit: Path | None, privacy: Path | None) -> None:
    from sealinfer.dashboard.sources import audit_overview
    from sealinfer.runtime.telemetry.schema import open_readonly

    open_readonly(telemetry).close()
    if audit is not None:
        audit_overview(audit)
    if privacy is not None and not privacy.is_file():
        raise StoreError(f"DP ledger {privacy} does not exist.", hint="Check the path given as --privacy-db.")


def streamlit_command(host: str, port: int, auth_config: Path | None) -> list[str]:
    app = Path(str(files("sealinfer.dashboard").joinpath("app.py")))
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--server.runOnSave", "false", "--client.toolbarMode", "minimal",
    ]
    if auth_config is not None:
        cmd += ["--secrets.files", str(auth_config.resolve())]
    return cmd


_db = click.Path(dir_okay=False, path_type=Path)


@click.command("dashboard")
@click.option("--telemetry-db", type=_db, default="telemetry.db", show_default=True,
              envvar="SEALINFER_TELEMETRY_DB", show_envvar=True, help="Telemetry database the runtime writes.")
@click.option("--audit-db", type=_db, default=None, envvar="SEALINFER_AUDIT_DB", show_envvar=True,
              help="Audit log (chain status, denials, break-glass).")
@click.option("--privacy-db", type=_db, default=None, help="DP-statistics budget ledger.")
@click.option("--profile", default="hipaa", show_default=True,
              help="Policy profile whose priority-class deadlines define the SLOs.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Non-loopback addresses need --auth-config.")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--auth-config", type=_db, default=None,
              help="Streamlit secrets.toml with an [auth] section (OIDC login via st.login).")
@click.option("--refresh", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds between live-page refreshes (0 = off).")
def dashboard(telemetry_db: Path, audit_db: Path | None, privacy_db: Path | None, profile: str, host: str,
              port: int, auth_config: Path | None, refresh: float) -> None:
    """Serve the operations dashboard (Streamlit) over telemetry, audit and DP-ledger databases.

    Shows request rates, latency and SLO attainment, what each security layer costs, device placement,
    privacy budgets and audit-chain status — counts, timings and digests only, never patient data.
    """
    from sealinfer.dashboard.config import DashboardConfig

    if auth_config is not None:
        check_auth_config(auth_config)
    if not is_loopback(host) and auth_config is None:
        raise ConfigurationError(
            f"Refusing to serve the dashboard on non-loopback address {host} without authentication.",
            hint="Bind 127.0.0.1 (the default) and use an SSH tunnel, or pass --auth-config secrets.toml "
                 "with an [auth] section for Streamlit OIDC login.",
        )
    check_stores(telemetry_db, audit_db, privacy_db)
    check_port_free(host, port)

    cfg = DashboardConfig(telemetry_db.resolve(), audit_db.resolve() if audit_db else None,
                          privacy_db.resolve() if privacy_db else None, profile, refresh, auth_config is not None)
    env = {**_base_env(), **cfg.to_env()}
    click.echo(f"sealinfer dashboard on http://{host}:{port}  (Ctrl+C to stop)", err=True)
    proc = subprocess.Popen(streamlit_command(host, port, auth_config), env=env)
    rc = _wait_forwarding_signals(proc)
    if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise ConfigurationError(f"Streamlit exited with status {rc}.", hint="See its output above.")


def _base_env() -> dict[str, str]:
    import os

    return {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}


def _wait_forwarding_signals(proc: subprocess.Popen[Any]) -> int:
    """Wait for Streamlit; a SIGTERM/SIGINT to this process is passed on so the server stops with it."""
    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: nothing to forward from
            pass
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
