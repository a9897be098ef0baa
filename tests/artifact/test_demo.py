"""The README's first command: the end-to-end hospital demo runs and leaves the evidence it promises."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from sealinfer.runtime.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path):
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", echo=lines.append)
    assert result.accuracy > 0.85 and result.epsilon <= 8.0
    assert result.artifact.exists() and result.report_html.exists() and result.report_pdf.exists()
    with sqlite3.connect(result.audit_db) as conn:
        denied = conn.execute("SELECT actor, decision FROM audit_events WHERE seq = ?", [result.denied_audit_seq])
        assert denied.fetchall() == [("r.yang", "deny")]
        actions = {a for (a,) in conn.execute("SELECT DISTINCT action FROM audit_events")}
    assert actions == {"load", "infer"}
    with sqlite3.connect(result.telemetry_db) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] >= 20
    text = "\n".join(lines)
    assert "OK:" in text and "sealinfer dashboard --telemetry-db" in text
    pdf = subprocess.run(["pdftotext", str(result.report_pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "164.312" in pdf
    # no plaintext weights anywhere but the hospital's own unsealed export
    onnx_bytes = (tmp_path / "demo" / "breast-cancer.onnx").read_bytes()
    window = onnx_bytes[-4096:-4064]
    for f in (tmp_path / "demo").rglob("*"):
        if f.is_file() and f.name != "breast-cancer.onnx":
            assert window not in f.read_bytes(), f
