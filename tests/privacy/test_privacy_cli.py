"""``sealinfer dp``: check, audit and stats through the real CLI group."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli
from sealinfer.tests.privacy.conftest import CANARY_DELTA
from sealinfer.tests.privacy.test_privacy_accounting import make_cert


@pytest.fixture
def runner():
    return CliRunner()


def write_cert(tmp_path, cert, name="cert.json"):
    path = tmp_path / name
    path.write_text(cert.to_json(indent=2))
    return path


def test_check_passes_with_exit_zero(runner, tmp_path):
    path = write_cert(tmp_path, make_cert())
    result = runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "1.0"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "0.922" in result.output


def test_check_json_prints_the_verdict(runner, tmp_path):
    path = write_cert(tmp_path, make_cert("prv"))
    result = runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "1.0", "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["passed"] is True and verdict["epsilon"] == pytest.approx(0.844, rel=0.01)
    assert verdict["accountant"] == "prv" and verdict["reasons"] == []


def test_check_fails_above_the_limit(runner, tmp_path):
    path = write_cert(tmp_path, make_cert())
    result = runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "0.5", "--json"])
    assert result.exit_code != 0
    verdict = json.loads(result.output)
    assert verdict["passed"] is False and "above the limit" in verdict["reasons"][0]
    plain = runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "0.5"])
    assert plain.exit_code != 0 and "above the limit" in plain.output and "Traceback" not in plain.output


def test_check_binds_to_the_model_file(runner, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model")  # make_cert binds to sha256(b"model")
    other = tmp_path / "other.onnx"
    other.write_bytes(b"tampered")
    path = write_cert(tmp_path, make_cert())
    assert runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "1", "--model", str(model)]).exit_code == 0
    bad = runner.invoke(cli, ["dp", "check", str(path), "--max-epsilon", "1", "--model", str(other)])
    assert bad.exit_code != 0 and "digest mismatch" in bad.output


def test_check_reports_malformed_and_missing_files(runner, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = runner.invoke(cli, ["dp", "check", str(broken), "--max-epsilon", "1"])
    assert result.exit_code != 0 and "not valid JSON" in result.output and "Traceback" not in result.output
    missing = runner.invoke(cli, ["dp", "check", str(tmp_path / "nope.json"), "--max-epsilon", "1"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def _save_npz(path, split):
    np.savez(path, X=split[0], y=split[1])
    return path


def test_audit_prints_metrics_and_flags_an_overstated_certificate(runner, tmp_path, overfit_model, canaries):
    model = tmp_path / "overfit.onnx"
    model.write_bytes(overfit_model.onnx_bytes)
    members = _save_npz(tmp_path / "members.npz", canaries.members)
    non_members = _save_npz(tmp_path / "non_members.npz", canaries.non_members)
    args = ["dp", "audit", str(model), "--members", str(members), "--non-members", str(non_members)]
    result = runner.invoke(cli, [*args, "--delta", str(CANARY_DELTA), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["epsilon_lower_bound"] > 1.0 and {"auc", "tpr_at_fpr_1e3"} <= set(report)
    text = runner.invoke(cli, args)
    assert "AUC" in text.output and "TPR@FPR=1e-3" in text.output and "epsilon >=" in text.output
    # A certificate claiming epsilon ~0.92 for this model is contradicted by the audit.
    cert = write_cert(tmp_path, make_cert(dataset_size=len(canaries.X_train), delta=CANARY_DELTA).bound_to(
        overfit_model.onnx_bytes))
    flagged = runner.invoke(cli, [*args, "--cert", str(cert)])
    assert flagged.exit_code != 0 and "FLAGGED" in flagged.output and "Do not deploy" in flagged.output


def test_audit_of_the_dp_model_is_consistent(runner, tmp_path, dp_canary_model, canaries):
    model = tmp_path / "dp.onnx"
    model.write_bytes(dp_canary_model.onnx_bytes)
    cert = write_cert(tmp_path, dp_canary_model.certificate)
    members = _save_npz(tmp_path / "m.npz", canaries.members)
    non_members = _save_npz(tmp_path / "n.npz", canaries.non_members)
    result = runner.invoke(cli, ["dp", "audit", str(model), "--members", str(members),
                                 "--non-members", str(non_members), "--cert", str(cert)])
    assert result.exit_code == 0, result.output
    assert "consistent" in result.output


def test_audit_rejects_a_bad_npz(runner, tmp_path, dp_canary_model):
    model = tmp_path / "dp.onnx"
    model.write_bytes(dp_canary_model.onnx_bytes)
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 30)))
    result = runner.invoke(cli, ["dp", "audit", str(model), "--members", str(tmp_path / "bad.npz"),
                                 "--non-members", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and "arrays X and y" in result.output


@pytest.fixture
def prediction_log(tmp_path):
    path = tmp_path / "predictions.csv"
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["request_id", "risk", "label"])
        for i in range(400):
            risk = float(rng.uniform())
            writer.writerow([i, f"{risk:.4f}", "high" if risk > 0.7 else "low"])
    return path


def test_stats_budget_query_and_refusal(runner, tmp_path, prediction_log):
    ledger = str(tmp_path / "ledger.db")
    assert runner.invoke(cli, ["dp", "stats", "budget", "preds", "--set", "1.0", "--ledger", ledger]).exit_code == 0
    query = ["dp", "stats", "query", "--ledger", ledger, "--dataset", "preds", "--data", str(prediction_log)]
    mean = runner.invoke(cli, [*query, "--kind", "mean", "--column", "risk", "--bounds", "0", "1",
                               "--epsilon", "0.5", "--json"])
    assert mean.exit_code == 0, mean.output
    release = json.loads(mean.output)
    assert 0 <= release["value"] <= 1 and release["epsilon"] <= 0.5
    hist = runner.invoke(cli, [*query, "--kind", "histogram", "--column", "label", "--categories", "low,high",
                               "--epsilon", "0.4"])
    assert hist.exit_code == 0, hist.output
    assert "'low'" in hist.output and "'high'" in hist.output
    refused = runner.invoke(cli, [*query, "--kind", "count", "--epsilon", "0.5"])
    assert refused.exit_code != 0 and "nothing was released or spent" in refused.output
    summary = runner.invoke(cli, ["dp", "stats", "budget", "--ledger", ledger, "--json"])
    rows = json.loads(summary.output)
    assert rows == [{"dataset": "preds", "budget_epsilon": 1.0, "spent_epsilon": pytest.approx(0.9), "queries": 2}]
    table = runner.invoke(cli, ["dp", "stats", "budget", "--ledger", ledger])
    assert "preds" in table.output
    history = runner.invoke(cli, ["dp", "stats", "history", "--ledger", ledger, "--json"])
    assert [h["query"] for h in json.loads(history.output)] == ["mean[0,1]", "histogram"]


def test_stats_query_needs_its_options(runner, tmp_path, prediction_log):
    ledger = str(tmp_path / "ledger.db")
    runner.invoke(cli, ["dp", "stats", "budget", "preds", "--set", "1.0", "--ledger", ledger])
    query = ["dp", "stats", "query", "--ledger", ledger, "--dataset", "preds", "--data", str(prediction_log)]
    no_bounds = runner.invoke(cli, [*query, "--kind", "sum", "--column", "risk", "--epsilon", "0.1"])
    assert no_bounds.exit_code == 2 and "--bounds" in no_bounds.output
    bad_col = runner.invoke(cli, [*query, "--kind", "sum", "--column", "nope", "--bounds", "0", "1",
                                  "--epsilon", "0.1"])
    assert bad_col.exit_code == 2 and "no column" in bad_col.output
    text_col = runner.invoke(cli, [*query, "--kind", "mean", "--column", "label", "--bounds", "0", "1",
                                   "--epsilon", "0.1"])
    assert text_col.exit_code == 2 and "non-numeric" in text_col.output


def test_cli_entry_point_exit_codes(tmp_path):
    path = write_cert(tmp_path, make_cert())
    bad = subprocess.run([sys.executable, "-m", "sealinfer.runtime", "dp", "check", str(path), "--max-epsilon",
                          "0.1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "above the limit" in bad.stderr and "Traceback" not in bad.stderr
