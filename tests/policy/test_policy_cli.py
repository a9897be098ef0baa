"""``sealinfer policy``: check exit codes and located errors, show, authorize."""

from __future__ import annotations

import json
from importlib import resources

from click.testing import CliRunner

from sealinfer.runtime.cli.policy_cmd import policy


def shipped(name: str) -> str:
    return resources.files("sealinfer.policies").joinpath(name).read_text("utf-8")


def run(*args: str):
    return CliRunner().invoke(policy, list(args))


def test_check_valid_profile_prints_ok_with_id_and_version(tmp_path):
    path = tmp_path / "hipaa.yaml"
    path.write_text(shipped("hipaa.yaml"), encoding="utf-8")
    result = run("check", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK {path}: hipaa 2026.11.1")


def test_check_invalid_profile_lists_file_line_field_and_exits_2(tmp_path):
    text = shipped("hipaa.yaml").replace("durability: process", "durabilty: process")
    path = tmp_path / "typo.yaml"
    path.write_text(text, encoding="utf-8")
    line = next(n for n, s in enumerate(text.splitlines(), 1) if "durabilty" in s)
    result = run("check", str(path))
    assert result.exit_code == 2
    assert f"{path}:{line}: audit.durabilty: unknown key" in result.output
    assert "did you mean 'durability'" in result.output


def test_check_json_output(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(shipped("dev.yaml").replace("max_batch: 65536", "max_batch: 0"), encoding="utf-8")
    result = run("check", "--json", str(path))
    assert result.exit_code == 2
    report = json.loads(result.output)
    assert report["ok"] is False
    assert [i["field"] for i in report["issues"]] == ["inputs.max_batch"]
    good = tmp_path / "good.yaml"
    good.write_text(shipped("dev.yaml"), encoding="utf-8")
    ok = json.loads(run("check", "--json", str(good)).output)
    assert ok["ok"] and ok["id"] == "dev" and ok["policy_version"].startswith("dev@2026.11.1+")


def test_check_cedar_file(tmp_path):
    good = tmp_path / "authz.cedar"
    good.write_text(shipped("authz.cedar"), encoding="utf-8")
    assert run("check", str(good)).exit_code == 0
    bad = tmp_path / "bad.cedar"
    bad.write_text('permit (principal, action, resource) when { principal.rolee == "x" };', encoding="utf-8")
    result = run("check", str(bad))
    assert result.exit_code != 0


def test_check_missing_file_fails(tmp_path):
    assert run("check", str(tmp_path / "nope.yaml")).exit_code != 0


def test_show_prints_the_validated_profile():
    result = run("show", "hipaa", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["id"] == "hipaa" and data["profile"]["audit"]["retention_days"] == 2190
    text = run("show", "research")
    assert text.exit_code == 0 and "max_epsilon: 3.0" in text.output
    assert run("show", "hipa").exit_code != 0


def test_authorize_shows_the_denied_researcher_call():
    denied = run("authorize", "--user", "rob", "--role", "researcher", "--purpose", "research", "--phi")
    assert denied.exit_code == 3
    assert "DENY" in denied.output and "forbid-researcher-phi" in denied.output
    allowed = run("authorize", "--user", "ann", "--role", "clinician", "--purpose", "treatment", "--json")
    assert allowed.exit_code == 0 and json.loads(allowed.output)["allowed"] is True


def test_policy_group_is_registered_in_the_main_cli():
    from sealinfer.runtime.cli.main import cli

    result = CliRunner().invoke(cli, ["policy", "show", "dev", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["id"] == "dev"
