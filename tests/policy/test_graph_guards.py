"""Guards compiled into the graph: bit-identical to the numpy guard; the screen refuses as the validator does."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from sealinfer.runtime import Caller, Runtime
from sealinfer.runtime.errors import InputValidationError
from sealinfer.runtime.policy.graphguards import PREFIX, compile_guards
from sealinfer.runtime.policy.guards import OutputGuard
from sealinfer.runtime.policy.profile import InputLimits, OutputGuards, parse_profile, shipped_resource_text
from sealinfer.tests import models
from sealinfer.tests.policy.secure_fixtures import Sealed, seal_for

SERVICE = Caller("svc-ward7", "service", "treatment", tenant="ward7")
CLINICIAN = Caller("dr.grey", "clinician", "treatment", tenant="ward7")
SCREEN = InputLimits(allow_nonfinite=False)
NO_SCREEN = InputLimits(allow_nonfinite=True)


def identity_model(elem: int, *, opset: int = 17, op: str = "Identity") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, ["N"])], [helper.make_tensor_value_info("y", elem, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def hard_values(dtype: type) -> np.ndarray:
    """Ties at every scale, signed zeros, subnormals, huge values whose scaling overflows, NaN and infinities."""
    rng = np.random.default_rng(7)
    ties = np.array([k + 0.5 for k in range(-4, 4)]) * 10.0 ** -np.arange(0, 9)[:, None]
    info = np.finfo(dtype)
    special = [0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, info.tiny, info.max, -info.max,
               info.max / 1e4, 1e30, np.nan, np.inf, -np.inf, 0.1, 0.7, 123.456789, -2.675]
    random = rng.standard_normal(4000) * 10.0 ** rng.integers(-8, 8, 4000)
    return np.concatenate([ties.ravel(), special, random]).astype(dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit, except that any NaN equals any NaN (payloads are no part of the contract)."""
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and a[~nan].tobytes() == b[~nan].tobytes())


@pytest.mark.parametrize("dtype, elem", [(np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE)])
@pytest.mark.parametrize("decimals", [0, 1, 4, 8])
def test_rounding_in_the_graph_is_bit_identical_to_the_numpy_guard(dtype, elem, decimals):
    compiled = compile_guards(identity_model(elem), ["y"], {"x": np.dtype(dtype).name},
                              OutputGuards(round_decimals=decimals), NO_SCREEN)
    assert compiled is not None
    model, guards = compiled
    assert guards.rounded and guards.fetches == (f"{PREFIX}rounded/y",) and not guards.screened
    x = hard_values(dtype)
    raw, in_graph = session(model).run(["y", guards.fetches[0]], {"x": x})
    with np.errstate(over="ignore"):  # huge values overflow when scaled, in numpy as in the graph
        expected = OutputGuard(OutputGuards(round_decimals=decimals)).transform({"y": raw})["y"]
    assert same_bits(raw, x)  # the model's own output stays unrounded for runs outside the pipeline
    assert in_graph.dtype == dtype and same_bits(in_graph, expected)
    assert not same_bits(in_graph, raw)  # the test would notice a guard that did nothing


def test_rounding_after_a_matmul_is_not_fused_into_it():
    """onnxruntime folds a scalar Mul after a MatMul into the MatMul when it can; a guard must not be."""
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((30, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["scores"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = compile_guards(model, ["scores"], {"input": "float32"}, OutputGuards(round_decimals=4), NO_SCREEN)
    assert compiled is not None
    compiled_model, guards = compiled
    x = np.random.default_rng(0).standard_normal((256, 30)).astype(np.float32) * 50
    plain = session(model).run(["scores"], {"input": x})[0]
    raw, rounded = session(compiled_model).run(["scores", guards.fetches[0]], {"input": x})
    assert raw.tobytes() == plain.tobytes()
    assert same_bits(rounded, plain.round(4)) and not same_bits(rounded, plain)


def test_the_screen_is_a_sum_of_squares_of_each_float_input():
    model = models.mlp(30, 16, 2)
    compiled = compile_guards(model, [o.name for o in model.graph.output], {"input": "float32"}, OutputGuards(),
                              SCREEN)
    assert compiled is not None
    compiled_model, guards = compiled
    assert not guards.rounded and guards.screened == ("input",) and guards.fetches[-1] == f"{PREFIX}screen/input"
    s = session(compiled_model)
    x = np.random.default_rng(1).standard_normal((3, 30)).astype(np.float32)
    assert np.isclose(s.run([guards.fetches[-1]], {"input": x})[0], float((x.astype(np.float64) ** 2).sum()),
                      rtol=1e-5)
    for bad in (np.nan, np.inf, -np.inf):
        x[1, 7] = bad
        assert not np.isfinite(s.run([guards.fetches[-1]], {"input": x})[0])


@pytest.mark.parametrize(
    "model, outputs_cfg, why",
    [
        (identity_model(TensorProto.FLOAT), OutputGuards(round_decimals=3, top_k=2), "top-k ties: numpy decides"),
        (identity_model(TensorProto.FLOAT16), OutputGuards(round_decimals=3), "float16 arithmetic: numpy decides"),
        (identity_model(TensorProto.FLOAT, opset=10), OutputGuards(round_decimals=3), "no Round before opset 11"),
        (identity_model(TensorProto.FLOAT), OutputGuards(), "no rounding asked"),
    ],
)
def test_rounding_is_left_to_numpy_where_the_graph_cannot_match_it(model, outputs_cfg, why):
    compiled = compile_guards(model, ["y"], {"x": "float16"}, outputs_cfg, NO_SCREEN)
    assert compiled is None, why


def test_a_sequence_output_is_left_to_the_numpy_guard_which_refuses_it():
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = compile_guards(model, ["y"], {"x": "float32"}, OutputGuards(round_decimals=2), SCREEN)
    assert compiled is not None
    assert not compiled[1].rounded and compiled[1].fetches[0] == "y" and compiled[1].screened == ("x",)


def test_a_graph_that_already_uses_the_reserved_names_is_left_alone():
    model = identity_model(TensorProto.FLOAT)
    model.graph.node[0].output[0] = model.graph.output[0].name = f"{PREFIX}rounded/y"
    assert compile_guards(model, [f"{PREFIX}rounded/y"], {"x": "float32"}, OutputGuards(round_decimals=2),
                          SCREEN) is None


def test_integer_outputs_pass_through_while_float_outputs_are_rounded():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["scores"]), helper.make_node("ArgMax", ["x"], ["label"], axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = compile_guards(model, ["scores", "label"], {"x": "float32"}, OutputGuards(round_decimals=1),
                              NO_SCREEN)
    assert compiled is not None and compiled[1].fetches == (f"{PREFIX}rounded/scores", "label")
    x = np.array([[0.14, 0.26, 0.55, 0.05]], np.float32)
    scores, label = session(compiled[0]).run(list(compiled[1].fetches), {"x": x})
    assert same_bits(scores, x.round(1)) and label.tolist() == [[2]]


# --- through the runtime -------------------------------------------------------------------------------------


def dev_variant(**overrides: dict):
    raw = yaml.safe_load(shipped_resource_text("dev.yaml"))
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return parse_profile(yaml.safe_dump(raw), source="dev-variant.yaml")


GUARDED_DEV = {"outputs": {"round_decimals": 4}, "inputs": {"allow_nonfinite": False}}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, sealed: Sealed) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("graphguards")
    src = models.save(models.mlp(30, 64, 3, seed=11), tmp / "m.onnx")
    return src, seal_for(sealed.keyring, src, tmp / "m.sealed", "dev", mark=False)


def test_the_runtime_serves_rounded_outputs_and_keeps_the_raw_graph_outputs(tmp_path, sealed, artifact):
    src, sealed_path = artifact
    x = np.random.default_rng(2).standard_normal((5, 30)).astype(np.float32)
    plain = session(onnx.load(src))
    names = [o.name for o in plain.get_outputs()]
    expected = dict(zip(names, plain.run(names, {"input": x}), strict=True))
    with Runtime(sealed.keyring, dev_variant(**GUARDED_DEV), audit_db=tmp_path / "a.db",
                 devices=sealed.devices) as rt:
        s = rt.load(sealed_path, caller=SERVICE)
        out = s.run({"input": x}, caller=CLINICIAN)
        assert list(out) == names == ["logits", "probabilities"]
        assert all(same_bits(out[n], expected[n].round(4)) for n in names)
        raw = s._infer({"input": x})  # the bare session is unguarded
        assert all(raw[n].tobytes() == expected[n].tobytes() for n in names) and s._output_names == names
        rt.audit_log.flush()
        with sqlite3.connect(tmp_path / "a.db") as conn:
            body = json.loads(conn.execute("SELECT body FROM audit_events WHERE seq = 1").fetchone()[0])
        assert body["details"]["guards"] == "in-graph rounding and NaN/Inf screen of 1 input(s)"


def test_the_in_graph_screen_refuses_as_the_validator_does_and_audits(tmp_path, sealed, artifact):
    _, sealed_path = artifact
    x = np.random.default_rng(3).standard_normal((4, 30)).astype(np.float32)
    x[2, 3], x[0, 0] = np.nan, -np.inf
    with Runtime(sealed.keyring, dev_variant(**GUARDED_DEV), audit_db=tmp_path / "a.db",
                 telemetry_db=tmp_path / "t.db", devices=sealed.devices) as rt:
        s = rt.load(sealed_path, caller=SERVICE)
        with pytest.raises(InputValidationError, match=r"'input' contains 2 NaN or infinite value\(s\) out of 120") \
                as info:
            s.run({"input": x}, caller=CLINICIAN)
        rt.audit_log.flush()
        with sqlite3.connect(tmp_path / "a.db") as conn:
            row = conn.execute("SELECT outcome, error_code, json_extract(body, '$.output_digest') FROM audit_events "
                               f"WHERE seq = {info.value.audit_seq}").fetchone()
        assert row == ("error", "input_invalid", None)  # refused before any output was released
        # finite values whose squares overflow float32 only raise the screen's alarm: the exact test clears them
        big = np.full((2, 30), 1e20, np.float32)
        assert np.isfinite(s.run({"input": big}, caller=CLINICIAN)[s._output_names[0]]).all()


def test_a_nan_the_model_fails_on_is_still_reported_as_the_callers_nan(tmp_path, sealed):
    src = models.save(models.loose_matmul(), tmp_path / "m.onnx")
    artifact = seal_for(sealed.keyring, src, tmp_path / "m.sealed", "dev", mark=False)
    with Runtime(sealed.keyring, dev_variant(**GUARDED_DEV), audit_db=tmp_path / "a.db",
                 devices=sealed.devices) as rt:
        s = rt.load(artifact, caller=SERVICE)
        with pytest.raises(InputValidationError, match="NaN or infinite"):
            s.run({"input": np.full((1, 5), np.nan, np.float32)}, caller=CLINICIAN)  # M=5 also breaks the MatMul
