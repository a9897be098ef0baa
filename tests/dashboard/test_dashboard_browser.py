"""End to end: ``sealinfer dashboard`` on a loopback port, driven by headless Debian Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# (url path, page title, plotly charts expected)
PAGES = [
    ("", "Overview", 3),
    ("overhead", "Security overhead vs latency", 4),
    ("scheduler", "Scheduler and devices", 3),
    ("privacy", "Privacy", 1),
    ("audit", "Audit and models", 1),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("dashboard did not become healthy")


@pytest.fixture
def server(telemetry_db: Path, audit_db: Path, tmp_path: Path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash scripts/setup.sh` (installs Debian chromium)"
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealinfer.runtime",
            "dashboard",
            "--telemetry-db",
            str(telemetry_db),
            "--audit-db",
            str(audit_db),
            "--port",
            str(port),
            "--refresh",
            "0",
            "--profile",
            "",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)},  # no user-level Streamlit config or credentials
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)  # the CLI forwards it to Streamlit
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_every_page_renders_its_charts_in_chromium(server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base, proc = server
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            for url, title, n_charts in PAGES:
                page.goto(f"{base}/{url}", wait_until="domcontentloaded")
                page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
                # Every chart drawn (traces in its SVG, a real size), polled rather than checked once after
                # a fixed pause: on a loaded machine Plotly can take longer than any pause to draw them.
                page.wait_for_function(
                    """n => {
                        const drawn = [...document.querySelectorAll('.js-plotly-plot')].filter(p => {
                            const box = p.getBoundingClientRect();
                            return p.querySelector('.main-svg .trace') && box.width > 100 && box.height > 100;
                        });
                        return drawn.length >= n;
                    }""",
                    arg=n_charts,
                    timeout=60_000,
                )
                page.wait_for_timeout(500)  # let the last chart finish drawing before the screenshot
                plots = page.locator(".js-plotly-plot")
                assert plots.count() == n_charts, (title, plots.count())
                for i in range(n_charts):
                    box = plots.nth(i).bounding_box()
                    assert box and box["width"] > 100 and box["height"] > 100
                    # A drawn chart has traces in its SVG, not only axes.
                    assert plots.nth(i).locator(".main-svg .trace").count() > 0
                assert page.locator('[data-testid="stException"]').count() == 0
                shot = tmp_path / f"{url or 'overview'}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                shots.append(shot)
        finally:
            browser.close()
    assert proc.poll() is None  # still serving after every page
    out_dir = os.environ.get("SEALINFER_SCREENSHOT_DIR")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(out_dir) / f"dashboard-{shot.name}")
