"""``sealinfer watermark embed/detect`` through the real CLI entry point."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from sealinfer.runtime.cli.main import cli
from sealinfer.tests.watermark.conftest import KEY


@pytest.fixture
def key_file(tmp_path):
    p = tmp_path / "wm.key"
    p.write_text(KEY.hex() + "\n")
    return p


@pytest.fixture
def model_file(built, tmp_path):
    p = tmp_path / "mlp.onnx"
    p.write_bytes(built["mlp"].model.SerializeToString())  # test-built model
    return p


def test_watermark_cli_embed_then_detect(model_file, key_file, tmp_path):
    out = tmp_path / "marked.onnx"
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "watermark",
            "embed",
            str(model_file),
            "-o",
            str(out),
            "--payload",
            "owner|site-9",
            "--key-file",
            str(key_file),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "payload sha256" in r.output
    onnx.checker.check_model(onnx.load(str(out)))
    r = runner.invoke(cli, ["watermark", "detect", str(out), "--key-file", str(key_file)])
    assert r.exit_code == 0, r.output
    assert "DETECTED" in r.output and "owner|site-9" in r.output and "p-value" in r.output
    r = runner.invoke(cli, ["watermark", "detect", str(out), "--key-file", str(key_file), "--json"])
    data = json.loads(r.output)
    assert data["detected"] is True and data["payload"] == "owner|site-9" and data["bit_error_rate"] < 0.05
    assert data["p_value"] <= 1e-9


def test_watermark_cli_detect_unmarked_exits_1(model_file, key_file):
    r = CliRunner().invoke(cli, ["watermark", "detect", str(model_file), "--key-file", str(key_file), "--json"])
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert data["detected"] is False and data["payload"] is None and data["p_value"] > 1e-9


def test_watermark_cli_embed_json_commitment(model_file, key_file, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "watermark",
            "embed",
            str(model_file),
            "-o",
            str(tmp_path / "m.onnx"),
            "--payload",
            "x",
            "--key-file",
            str(key_file),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert set(data["commitment"]) == {"scheme", "payload_sha256", "threshold_p", "n_bits"}
    assert data["key_id"].startswith("file:")


@pytest.mark.parametrize("content,needle", [("zz", "not hex"), ("abcd", "not 32")])
def test_watermark_cli_bad_key_file(model_file, tmp_path, content, needle):
    kf = tmp_path / "bad.key"
    kf.write_text(content)
    r = CliRunner().invoke(cli, ["watermark", "detect", str(model_file), "--key-file", str(kf)])
    assert r.exit_code == 2 and needle in r.output


def test_watermark_cli_not_onnx(tmp_path, key_file):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    r = CliRunner().invoke(cli, ["watermark", "detect", str(bad), "--key-file", str(key_file)])
    assert r.exit_code != 0 and "not an ONNX model" in r.output


def test_watermark_cli_payload_too_long(model_file, key_file, tmp_path):
    r = CliRunner().invoke(
        cli,
        [
            "watermark",
            "embed",
            str(model_file),
            "-o",
            str(tmp_path / "m.onnx"),
            "--payload",
            "x" * 40,
            "--key-file",
            str(key_file),
        ],
    )
    assert r.exit_code == 2 and "32 bytes" in r.output


def test_watermark_cli_keyring_key(model_file, tmp_path, monkeypatch):
    from sealinfer.runtime.keys.keyring import Keyring

    ring_dir = tmp_path / "ring"
    monkeypatch.setenv("SEALINFER_PASSPHRASE", "correct horse battery staple")
    Keyring.create(ring_dir, "correct horse battery staple", scrypt_n=2**10)
    out = tmp_path / "marked.onnx"
    runner = CliRunner()
    r = runner.invoke(
        cli, ["watermark", "embed", str(model_file), "-o", str(out), "--payload", "ring", "--keyring", str(ring_dir)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["watermark", "detect", str(out), "--keyring", str(ring_dir), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["payload"] == "ring" and not data["key_id"].startswith("file:")


def test_watermark_cli_detect_sealed_model(model_file, tmp_path, monkeypatch):
    """`seal --watermark-payload` marks with the keyring's key; `watermark detect` opens the .sealed in memory."""
    from sealinfer.runtime.keys.keyring import Keyring

    ring_dir = tmp_path / "ring"
    monkeypatch.setenv("SEALINFER_PASSPHRASE", "correct horse battery staple")
    Keyring.create(ring_dir, "correct horse battery staple", scrypt_n=2**10)
    sealed = tmp_path / "mlp.sealed"
    runner = CliRunner()
    r = runner.invoke(
        cli,
        [
            "seal",
            str(model_file),
            "-o",
            str(sealed),
            "--keyring",
            str(ring_dir),
            "--watermark-payload",
            "sealed-site",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["watermark", "detect", str(sealed), "--keyring", str(ring_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["payload"] == "sealed-site"


def test_watermark_cli_embed_takes_representative_probes(built, model_file, key_file, tmp_path):
    import numpy as np

    b = built["mlp"]
    probes = tmp_path / "probes.npz"
    np.savez(probes, **{b.model.graph.input[0].name: b.calibration})
    out = tmp_path / "marked.onnx"
    args = ["watermark", "embed", str(model_file), "-o", str(out), "--payload", "owner|site-9",
            "--key-file", str(key_file), "--json"]
    r = CliRunner().invoke(cli, [*args, "--probes", str(probes)])
    assert r.exit_code == 0, r.output
    fidelity = json.loads(r.output)["receipt"]["fidelity"]
    assert fidelity["probes"] == "supplied" and fidelity["n_probes"] == len(b.calibration)

    (tmp_path / "bad.npz").write_text("not an npz")
    r = CliRunner().invoke(cli, [*args, "--probes", str(tmp_path / "bad.npz")])
    assert r.exit_code != 0 and "is not an .npz" in r.output and "Traceback" not in r.output
