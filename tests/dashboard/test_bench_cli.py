"""`sealinfer bench` runs every rung on a real model and writes telemetry the dashboard can chart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from sealinfer.runtime.bench import RUNGS
from sealinfer.runtime.cli.main import cli
from sealinfer.tests import models


def test_bench_writes_one_row_per_request_and_rung(tmp_path: Path):
    model = models.save(models.mlp(30, 64, 2), tmp_path / "tiny.onnx")
    db = tmp_path / "telemetry.db"
    result = CliRunner().invoke(cli, ["bench", str(model), "--requests", "60", "--telemetry-db", str(db)])
    assert result.exit_code == 0, result.output
    for rung in RUNGS:
        assert rung in result.stdout
    assert "watermark rung skipped" in result.stdout  # 2,000 weights cannot carry a 256-bit mark
    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT config, count(*) FROM requests GROUP BY config").fetchall())
        audited = conn.execute(
            "SELECT min(record_us) FROM requests WHERE config = 'sealed+authz+audit(power)'"
        ).fetchone()[0]
    assert counts == {rung: 60 for rung in RUNGS}
    assert audited > 0  # the audit rungs really commit


def test_bench_rejects_bad_arguments(tmp_path: Path):
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "missing.onnx")])
    assert result.exit_code != 0 and "does not exist" in result.stderr
