"""Sealing and loading give bit-identical outputs, for every way an ONNX model can hold its weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.artifact import SealedArtifact
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.tests import models


def _plain(model_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_identical(sealed: dict[str, np.ndarray], plain: list[np.ndarray], names: list[str]) -> None:
    assert list(sealed) == names
    for name, ref in zip(names, plain, strict=True):
        assert sealed[name].dtype == ref.dtype
        assert np.array_equal(sealed[name], ref), name  # bit-identical, not allclose


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external-data"])
def test_sealed_outputs_are_bit_identical_to_plain_onnxruntime(tmp_path: Path, keyring: Keyring, external: bool):
    model_path = models.save(models.mlp(30, 256, 2), tmp_path / "mlp.onnx", external=external)
    seal_model(model_path, tmp_path / "mlp.sealed", keyring=keyring, options=SealOptions(name="sepsis"))
    session = Runtime(keyring).load(tmp_path / "mlp.sealed")
    x = np.random.default_rng(1).standard_normal((16, 30)).astype(np.float32)
    _assert_identical(session.run({"input": x}), _plain(model_path, {"input": x}), ["logits", "probabilities"])
    assert session.name == "sepsis"


def test_breast_cancer_classifier_round_trip(tmp_path: Path, keyring: Keyring):
    model, x_test, y_test = models.breast_cancer_mlp()
    path = models.save(model, tmp_path / "bc.onnx")
    seal_model(path, tmp_path / "bc.sealed", keyring=keyring)
    probs = Runtime(keyring).load(tmp_path / "bc.sealed").run({"input": x_test})["probabilities"]
    assert np.array_equal(probs, _plain(path, {"input": x_test})[1])
    assert (probs.argmax(1) == y_test).mean() > 0.9  # it is a real classifier, not noise


def test_typed_field_initializers_and_weightless_models(tmp_path: Path, keyring: Keyring):
    # float_data (not raw_data) initializers, an int64 shape initializer, and a small one kept inline.
    w = np.arange(600, dtype=np.float32).reshape(20, 30) / 600
    weight = helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten().tolist())
    shape = helper.make_tensor("S", TensorProto.INT64, [2], [-1, 20])
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["W"], ["Wt"]),
            helper.make_node("MatMul", ["input", "Wt"], ["m"]),
            helper.make_node("Reshape", ["m", "S"], ["out"]),
        ],
        "typed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 20])],
        [weight, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = models.save(model, tmp_path / "typed.onnx")
    seal_model(path, tmp_path / "typed.sealed", keyring=keyring)
    x = np.ones((3, 30), np.float32)
    out = Runtime(keyring).load(tmp_path / "typed.sealed").run({"input": x})
    assert np.array_equal(out["out"], _plain(path, {"input": x})[0])

    identity = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["a"], ["b"])],
            "id",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    identity.ir_version = 8
    p2 = models.save(identity, tmp_path / "id.onnx")
    art = seal_model(p2, tmp_path / "id.sealed", keyring=keyring)
    assert art.payload.sections["weights"][1] == 0
    out = Runtime(keyring).load(tmp_path / "id.sealed").run({"a": np.array([1.5, -2], np.float32)})
    assert out["b"].tolist() == [1.5, -2.0]


def test_several_recipients_each_open_the_same_artifact(tmp_path: Path, keyring: Keyring):
    first = keyring.default_kek_id()
    second = keyring.generate("kek").id
    path = models.save(models.mlp(), tmp_path / "m.onnx")
    art = seal_model(path, tmp_path / "m.sealed", keyring=keyring, options=SealOptions(recipients=[first, second]))
    assert [r.kek_id for r in art.recipients] == [first, second]
    x = np.zeros((1, 30), np.float32)
    expected = Runtime(keyring).load(tmp_path / "m.sealed").run({"input": x})["probabilities"]
    # Losing either recipient's KEK still leaves the other one able to open the artifact.
    keyring.revoke(first, "test: first recipient gone")
    again = Runtime(keyring).load(tmp_path / "m.sealed").run({"input": x})["probabilities"]
    assert np.array_equal(expected, again)


def test_inspect_shows_manifest_and_never_key_bytes(tmp_path: Path, keyring: Keyring, mlp_path: Path):
    art = seal_model(mlp_path, tmp_path / "m.sealed", keyring=keyring, options=SealOptions(name="n", version="3"))
    shown = json.dumps(SealedArtifact.open(tmp_path / "m.sealed").inspect())
    assert '"name": "n"' in shown and '"version": "3"' in shown
    assert all(r.wrapped.hex() not in shown for r in art.recipients)
    import base64

    assert all(base64.b64encode(r.wrapped).decode() not in shown for r in art.recipients)
    manifest = art.manifest
    assert manifest["signature_io"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["N", 30]}]
    assert manifest["model"]["source_sha256"] != manifest["model"]["sha256"]  # layout differs from the file


def test_seal_is_atomic_and_rejects_bad_models(tmp_path: Path, keyring: Keyring):
    from sealinfer.runtime.errors import NotOnnxError, OnnxCheckError

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(NotOnnxError, match="not an ONNX model"):
        seal_model(junk, tmp_path / "out.sealed", keyring=keyring)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(NotOnnxError, match="empty"):
        seal_model(empty, tmp_path / "out.sealed", keyring=keyring)
    bad = models.mlp()
    bad.graph.node[0].input[1] = "missing_weight"
    onnx.save_model(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(OnnxCheckError, match="fails the ONNX checker"):
        seal_model(tmp_path / "bad.onnx", tmp_path / "out.sealed", keyring=keyring)
    assert not any(p.name.endswith((".sealed", ".partial")) for p in tmp_path.iterdir())


def test_a_model_onnxruntime_cannot_run_is_a_typed_error_at_load(tmp_path: Path, keyring: Keyring):
    """onnxruntime's NotImplemented (no kernel for an op/type) is no RuntimeError: still a ModelError."""
    from sealinfer.runtime.errors import ModelError

    graph = helper.make_graph(
        [helper.make_node("Abs", ["input"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.BFLOAT16, [1, 3])],
        [helper.make_tensor_value_info("output", TensorProto.BFLOAT16, [1, 3])])
    src = models.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    seal_model(src, tmp_path / "m.sealed", keyring=keyring)  # valid ONNX: the checker accepts it
    with pytest.raises(ModelError, match="cannot create a session.*Could not find an implementation") as info:
        Runtime(keyring).load(tmp_path / "m.sealed")
    assert info.value.hint


# Seals under a file-size limit of 64 KiB: the kernel refuses the write (EFBIG), as a full disk would.
SEAL_UNDER_FSIZE_LIMIT = r"""
import resource, signal, sys
from pathlib import Path
from sealinfer.runtime import seal_model
from sealinfer.runtime.atomic import OutputWriteError
from sealinfer.runtime.keys.keyring import Keyring
ring = Keyring.open(sys.argv[2], sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
try:
    seal_model(sys.argv[1], Path(sys.argv[4]), keyring=ring)
except OutputWriteError as exc:
    print("typed:", exc)
"""


def test_an_output_that_cannot_be_written_is_a_typed_error_and_leaves_nothing(tmp_path: Path, keyring: Keyring):
    import subprocess
    import sys

    from sealinfer.runtime.errors import ConfigurationError

    src = models.save(models.mlp(30, 512, 64), tmp_path / "m.onnx")  # ~100 KB of weights
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        seal_model(src, tmp_path / "no-such-folder" / "m.sealed", keyring=keyring)
    assert info.value.hint
    with pytest.raises(ConfigurationError, match="it is a folder"):
        seal_model(src, tmp_path, keyring=keyring)
    out = tmp_path / "out" / "m.sealed"
    out.parent.mkdir()
    run = subprocess.run([sys.executable, "-c", SEAL_UNDER_FSIZE_LIMIT, str(src), str(keyring._path),
                          "correct horse battery staple", str(out)], capture_output=True, text=True, timeout=120)
    assert "typed: Writing" in run.stdout and "File too large" in run.stdout, run.stdout + run.stderr
    assert list(out.parent.iterdir()) == []  # no artifact, no partial file


def test_loaded_session_reads_its_one_plaintext_copy_in_place_and_close_erases_it(tmp_path: Path, keyring: Keyring):
    from sealinfer.runtime.errors import ArtifactError

    path = models.save(models.mlp(30, 256, 2), tmp_path / "m.onnx")
    seal_model(path, tmp_path / "m.sealed", keyring=keyring)
    x = np.ones((2, 30), np.float32)
    session = Runtime(keyring).load(tmp_path / "m.sealed", prepack=False)
    lean = ort.SessionOptions()
    lean.add_session_config_entry("session.disable_prepacking", "1")
    plain = ort.InferenceSession(str(path), lean, providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run({"input": x})["logits"], plain.run(None, {"input": x})[0])
    decrypted = session._decrypted
    assert not decrypted.released
    # onnxruntime holds no copy of its own: what it computes with is the decrypted buffer itself.
    weights = decrypted.buffer[decrypted.weights_offset : decrypted.weights_offset + decrypted.weights_length]
    weights[:] = 0
    assert not np.array_equal(session.run({"input": x})["logits"], plain.run(None, {"input": x})[0])
    session.close()
    assert decrypted.released and decrypted.buffer.size == 0
    with pytest.raises(ArtifactError, match="erased"):
        decrypted.to_model_proto()
    from sealinfer.runtime.errors import SealinferError

    with pytest.raises(SealinferError, match="closed"):
        session.run({"input": x})


def _sealed_folded_model(tmp_path: Path, keyring: Keyring) -> Path:
    """x @ Transpose(W): onnxruntime constant-folds the Transpose, so it must read W itself."""
    w = np.arange(600, dtype=np.float32).reshape(20, 30) / 600
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("MatMul", ["input", "Wt"], ["out"])],
        "folded",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 20])],
        [onnx.numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = models.save(model, tmp_path / "folded.onnx")
    seal_model(path, tmp_path / "folded.sealed", keyring=keyring)
    return path


def test_a_session_dropped_without_close_still_erases_its_weights(tmp_path: Path, keyring: Keyring):
    import gc

    path = models.save(models.mlp(30, 256, 2), tmp_path / "m.onnx")
    seal_model(path, tmp_path / "m.sealed", keyring=keyring)
    session = Runtime(keyring).load(tmp_path / "m.sealed")
    decrypted = session._decrypted
    assert not decrypted.released
    del session
    gc.collect()
    assert decrypted.released and decrypted.buffer.size == 0


def test_a_forked_child_can_use_a_session_and_leaves_erasing_to_the_loader(tmp_path: Path, keyring: Keyring):
    # Pre-fork loading (gunicorn --preload style) shares the weights copy-on-write with workers. The
    # implicit erase at exit belongs to the loading process: in a child it would only copy the pages.
    import os

    path = models.save(models.mlp(30, 256, 2), tmp_path / "m.onnx")
    seal_model(path, tmp_path / "m.sealed", keyring=keyring)
    session = Runtime(keyring).load(tmp_path / "m.sealed")
    x = np.ones((2, 30), np.float32)
    expected = session.run({"input": x})["logits"]
    pid = os.fork()
    if pid == 0:  # the child
        code = 0 if np.array_equal(session.run({"input": x})["logits"], expected) else 3
        session._erase()  # what its exit would run
        code = code or (4 if session._decrypted.released else 0)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    session.close()
    assert session._decrypted.released


def test_weights_an_optimizer_must_read_are_copied_and_erased_at_once(tmp_path: Path, keyring: Keyring):
    path = _sealed_folded_model(tmp_path, keyring)
    x = np.ones((3, 30), np.float32)
    session = Runtime(keyring).load(tmp_path / "folded.sealed")
    assert session._decrypted.released and session._decrypted.buffer.size == 0
    assert np.array_equal(session.run({"input": x})["out"], _plain(path, {"input": x})[0])


def test_a_failed_in_place_attempt_falls_back_to_a_copy(tmp_path: Path, keyring: Keyring, monkeypatch):
    # When the guess of which weights optimizers read misses, onnxruntime fails reading the placeholder
    # and the loader retries with fresh options and a copy: the caller sees a working session.
    import sealinfer.runtime.loader as loader

    path = _sealed_folded_model(tmp_path, keyring)
    monkeypatch.setattr(loader, "_optimizers_read", lambda graph, sealed: False)
    attempts: list[bool] = []
    real = loader.DecryptedModel.in_place_inputs

    def attempt(self: loader.DecryptedModel, so: ort.SessionOptions) -> tuple[bytes, list[ort.OrtValue]]:
        attempts.append(True)
        return real(self, so)

    monkeypatch.setattr(loader.DecryptedModel, "in_place_inputs", attempt)
    session = Runtime(keyring).load(tmp_path / "folded.sealed")
    assert attempts == [True] and session._decrypted.released
    x = np.ones((3, 30), np.float32)
    assert np.array_equal(session.run({"input": x})["out"], _plain(path, {"input": x})[0])


def test_close_waits_for_runs_in_flight_and_no_run_sees_erased_weights(tmp_path: Path, keyring: Keyring):
    import threading
    import time

    from sealinfer.runtime.errors import SealinferError

    path = models.save(models.deep_mlp(64, 512, 3, 10), tmp_path / "d.onnx")
    seal_model(path, tmp_path / "d.sealed", keyring=keyring)
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    lean = ort.SessionOptions()
    lean.add_session_config_entry("session.disable_prepacking", "1")
    expected = ort.InferenceSession(str(path), lean, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    # Without prepacking every weight is read in place, so erasing them under a run would show.
    session = Runtime(keyring).load(tmp_path / "d.sealed", prepack=False)
    assert not session._decrypted.released
    outcomes: list[str] = []
    started = threading.Barrier(5)

    def worker() -> None:
        started.wait()
        while True:  # until close() turns this worker away
            try:
                out = session.run({"input": x})["logits"]
            except SealinferError:
                outcomes.append("closed")
                return
            outcomes.append("ok" if np.array_equal(out, expected) else "WRONG")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    deadline = time.monotonic() + 30
    while len(outcomes) < 40 and time.monotonic() < deadline:  # close while runs are under way
        time.sleep(0.001)
    session.close()
    for t in threads:
        t.join()
    assert outcomes.count("ok") >= 40 and "WRONG" not in outcomes and outcomes.count("closed") == 4
    assert session._decrypted.released
