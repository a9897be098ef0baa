"""``sealinfer devices`` and ``sealinfer schedule`` through the real CLI group."""

from __future__ import annotations

import json

import onnx
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli

OPERATOR = """\
devices:
  - id: cpu0
    attested: true
  - id: cloud-gpu
    kind: gpu
    provider: CUDAExecutionProvider
    peak_flops: {fp32: 60 TFLOPS}
    memory_bandwidth: 3.3 TB/s
    memory_bytes: 80 GiB
    location: cloud
"""


def _files(tmp_path, models):
    model = tmp_path / "mlp.onnx"
    onnx.save(models["mlp"](), model)
    devices = tmp_path / "devices.yaml"
    devices.write_text(OPERATOR)
    return model, devices


def test_devices_lists_discovered_and_operator_devices(tmp_path, models):
    _, devices = _files(tmp_path, models)
    result = CliRunner().invoke(cli, ["devices", "--devices", str(devices), "--json"])
    assert result.exit_code == 0, result.output
    by_id = {d["id"]: d for d in json.loads(result.output)}
    assert by_id["cpu0"]["attested"] is True and by_id["cpu0"]["provider"] == "CPUExecutionProvider"
    assert by_id["cloud-gpu"]["location"] == "cloud"
    plain = CliRunner().invoke(cli, ["devices"])
    assert plain.exit_code == 0 and "cpu0" in plain.output and "cloud-gpu" not in plain.output


def test_schedule_explains_the_decision(tmp_path, models):
    model, devices = _files(tmp_path, models)
    result = CliRunner().invoke(cli, ["schedule", str(model), "--policy", "hipaa", "--devices", str(devices), "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["chosen"]["device"] == "cpu0" and decision["phi"] is True
    (rejected,) = decision["rejected"]
    assert rejected["device"] == "cloud-gpu" and "on-prem" in rejected["reason"]
    human = CliRunner().invoke(cli, ["schedule", str(model), "--policy", "hipaa", "--devices", str(devices)])
    assert "rejected  cloud-gpu" in human.output


def test_schedule_without_a_compliant_device_fails_with_reasons(tmp_path, models):
    model, _ = _files(tmp_path, models)
    # Discovered devices are never attested, so PHI under hipaa has nowhere to go ...
    result = CliRunner().invoke(cli, ["schedule", str(model), "--policy", "hipaa", "--json"])
    assert result.exit_code == 1
    assert "no device satisfies policy hipaa" in result.output and "not attested" in result.output
    # ... while a non-PHI request may run on the discovered CPU.
    ok = CliRunner().invoke(cli, ["schedule", str(model), "--policy", "hipaa", "--no-phi", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["phi"] is False


def test_schedule_reads_a_policy_file_and_refuses_bad_inputs(tmp_path, models):
    import importlib.resources

    import yaml

    model, devices = _files(tmp_path, models)
    profile = yaml.safe_load((importlib.resources.files("sealinfer.policies") / "hipaa.yaml").read_text())
    profile["id"] = "onlycloud"
    profile["placement"]["allowed_devices"] = ["cloud-gpu"]
    policy_file = tmp_path / "onlycloud.yaml"
    policy_file.write_text(yaml.safe_dump(profile))
    result = CliRunner().invoke(cli, ["schedule", str(model), "--policy", str(policy_file), "--no-phi",
                                      "--devices", str(devices)])
    assert result.exit_code == 1
    assert "onlycloud" in result.output and "cpu0: not in the policy's allowed_devices" in result.output
    bad_devices = tmp_path / "bad.yaml"
    bad_devices.write_text(OPERATOR + "    colour: blue\n")
    result = CliRunner().invoke(cli, ["devices", "--devices", str(bad_devices)])
    assert result.exit_code == 2 and "bad.yaml:11 (colour): unknown key(s) colour" in result.output
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"\x00junk")
    result = CliRunner().invoke(cli, ["schedule", str(not_onnx), "--policy", "hipaa", "--devices", str(devices)])
    assert result.exit_code != 0 and "not a readable ONNX model" in result.output
    result = CliRunner().invoke(cli, ["schedule", str(model), "--policy", str(tmp_path / "missing.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_schedule_reads_cost_features_from_a_sealed_artifact(tmp_path, models):
    from sealinfer.runtime.compiler import SealOptions, seal_model
    from sealinfer.runtime.keys.keyring import Keyring

    model, devices = _files(tmp_path, models)
    keyring = Keyring.create(tmp_path / "keys", "pass phrase for tests", scrypt_n=2**14)
    sealed = tmp_path / "mlp.sealed"
    seal_model(model, sealed, keyring=keyring, options=SealOptions(phi=False))
    result = CliRunner().invoke(cli, ["schedule", str(sealed), "--policy", "hipaa", "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output)
    assert decision["phi"] is False  # taken from the manifest
    onnx_decision = json.loads(CliRunner().invoke(
        cli, ["schedule", str(model), "--policy", "hipaa", "--no-phi", "--json"]).output)
    assert decision["model"] == onnx_decision["model"]  # same cost features, same key
