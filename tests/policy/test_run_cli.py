"""``sealinfer run``: one inference through the real CLI, plain or under a policy, and its bad inputs."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli
from sealinfer.runtime.loader import open_model_proto
from sealinfer.tests.policy.secure_fixtures import Sealed

X = np.random.default_rng(3).standard_normal((4, 30)).astype(np.float32)
CLINICIAN = ("--user", "dr.grey", "--role", "clinician", "--purpose", "treatment", "--tenant", "ward7")


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, sealed: Sealed):
    monkeypatch.setenv("SEALINFER_PASSPHRASE", "pw")
    monkeypatch.setenv("SEALINFER_KEYRING", str(sealed.keyring._path))
    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(cli, ["run", *(str(a) for a in args)], catch_exceptions=False)

    return invoke


@pytest.fixture
def x_npy(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", X)
    return tmp_path / "x.npy"


def _audit(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, action, actor, outcome, error_code FROM audit_events ORDER BY seq").fetchall()


def test_plain_run_writes_outputs_identical_to_onnxruntime(run, sealed: Sealed, x_npy: Path, tmp_path: Path):
    out = tmp_path / "out.npz"
    result = run(sealed.dev, "--input", f"input={x_npy}", "-o", out)
    assert result.exit_code == 0, result.output
    plain = ort.InferenceSession(open_model_proto(sealed.dev, sealed.keyring).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    with np.load(out) as saved:
        for meta, ref in zip(plain.get_outputs(), plain.run(None, {"input": X}), strict=True):
            assert np.array_equal(saved[meta.name], ref)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # predictions about patients: owner only
    summary = run(sealed.dev, "--input", f"input={x_npy}")
    assert "probabilities: float32 [4, 64]" in summary.output and "0." not in summary.output  # no values


def test_policy_run_is_authorized_guarded_and_audited(run, sealed: Sealed, x_npy: Path, tmp_path: Path):
    db = tmp_path / "audit.db"
    result = run(sealed.hipaa, "--input", f"input={x_npy}", "--policy", "hipaa", "--audit-db", db,
                 "--devices", sealed.devices, *CLINICIAN, "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.output.splitlines()[0])
    probs = np.array(values["probabilities"], dtype=np.float32)
    assert probs.shape == (4, 64) and np.array_equal(probs, probs.round(4))  # the profile's rounding
    assert "audit record: seq 2" in result.output
    assert [(a, who, o) for _, a, who, o, _ in _audit(db)] == [("load", "dr.grey", "ok"), ("infer", "dr.grey", "ok")]


def test_a_denied_run_exits_3_and_says_where_its_audit_record_is(run, sealed: Sealed, x_npy: Path, tmp_path: Path):
    db = tmp_path / "audit.db"
    result = run(sealed.hipaa, "--input", f"input={x_npy}", "--policy", "hipaa", "--audit-db", db,
                 "--devices", sealed.devices, "--user", "r.yang", "--role", "researcher", "--purpose", "research")
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert "audit record: seq 1" in result.output and "may not load" in result.output
    assert _audit(db)[0][1:] == ("load", "r.yang", "denied", "denied")


@pytest.mark.parametrize(
    ("make", "code", "match"),
    [
        (lambda d: ("--input", "x"), 2, "not NAME=FILE.npy"),
        (lambda d: (), 2, "--input NAME=FILE.npy"),
        (lambda d: ("--input", f"input={d / 'missing.npy'}"), 1, "Cannot read input"),
        (lambda d: ("--input", f"input={d / 'junk.npy'}"), 1, "Cannot read input"),
        (lambda d: ("--input", f"input={d / 'obj.npy'}"), 1, "Cannot read input"),  # pickled: refused
        (lambda d: ("--inputs", d / "junk.npy"), 1, "Cannot read inputs"),
        (lambda d: ("--inputs", d / "obj.npy"), 1, "never does"),
        (lambda d: ("--input", f"wrong={d / 'x.npy'}"), 1, "Invalid input name: wrong"),
        (lambda d: ("--input", f"input={d / 'x.npy'}", "--user", "u"), 2, "need --policy"),
        (lambda d: ("--input", f"input={d / 'x.npy'}", "--policy", "hipaa"), 2, "--audit-db, --user"),
    ],
    ids=["spec", "none", "missing", "junk", "pickle", "npz-junk", "npz-pickle", "name", "caller-no-policy",
         "policy-no-caller"],
)
def test_bad_inputs_are_one_line_errors(run, sealed: Sealed, x_npy: Path, tmp_path: Path, make, code, match):
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = run(sealed.dev, *make(tmp_path))
    assert result.exit_code == code, result.output
    assert match in result.output and "Traceback" not in result.output
    assert "allow_pickle" not in result.output  # numpy's advice to load unsafely is not passed on


def test_a_request_the_policy_refuses_as_invalid_is_audited_too(run, sealed: Sealed, tmp_path: Path):
    np.savez(tmp_path / "in.npz", inptu=X)
    db = tmp_path / "audit.db"
    result = run(sealed.hipaa, "--inputs", tmp_path / "in.npz", "--policy", "hipaa", "--audit-db", db,
                 "--devices", sealed.devices, *CLINICIAN)
    assert result.exit_code == 1 and "did you mean 'input'" in result.output and "audit record: seq 2" in result.output
    assert _audit(db)[1][1:] == ("infer", "dr.grey", "error", "input_invalid")
