"""The shipped example runs as its docstring says, and what it writes passes ``sealinfer dp check``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _examples() -> Path:
    # The examples folder sits beside the package folders in the repository (it is not installed).
    here = Path(__file__).resolve().parents[2]
    return here / "examples"


def test_dp_breast_cancer_example_trains_certifies_and_passes_dp_check(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(_examples() / "dp_breast_cancer.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith("dp_eps")}
    assert float(rows["dp_eps1"][1]) <= 1.0 and rows["dp_eps1"][5] == "pass"
    assert float(rows["dp_eps8"][1]) <= 8.0 and rows["dp_eps8"][5] == "pass"
    check = subprocess.run(
        [sys.executable, "-m", "sealinfer.runtime.cli.main", "dp", "check", str(tmp_path / "dp_eps1.cert.json"),
         "--max-epsilon", "1", "--model", str(tmp_path / "dp_eps1.onnx")],
        capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    too_strict = subprocess.run(
        [sys.executable, "-m", "sealinfer.runtime.cli.main", "dp", "check", str(tmp_path / "dp_eps8.cert.json"),
         "--max-epsilon", "1", "--model", str(tmp_path / "dp_eps8.onnx")],
        capture_output=True, text=True, timeout=300)
    assert too_strict.returncode != 0 and "Traceback" not in too_strict.stderr
