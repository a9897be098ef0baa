"""Bad input of every kind: typed errors with a hint, or a clean 'not detected'."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sealinfer import watermark as wm
from sealinfer.runtime.errors import ConfigurationError, FidelityError, SealinferError, WatermarkCapacityError
from sealinfer.tests.watermark import attacks
from sealinfer.tests.watermark.conftest import KEY
from sealinfer.watermark.errors import NoFloatWeightsError, PayloadError, QuantizedModelError, WatermarkKeyError


def _gemm_model(n_in: int, n_out: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n_out, n_in)).astype(np.float32), "w")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n_out])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _hinted(err: SealinferError) -> None:
    assert err.hint, "every user-facing error says what to do"


def test_watermark_too_few_weights():
    with pytest.raises(WatermarkCapacityError) as e:
        wm.embed(_gemm_model(30, 8), KEY, b"payload")
    _hinted(e.value)
    assert "weight values" in str(e.value)


def test_watermark_no_float_initializers():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(NoFloatWeightsError) as e:
        wm.embed(model, KEY, b"payload")
    _hinted(e.value)
    with pytest.raises(NoFloatWeightsError):
        wm.detect(model, KEY)


def test_watermark_quantized_only_model_refused(built, tmp_path):
    q = attacks.to_int8_dynamic(built["mlp"].model, tmp_path)
    with pytest.raises(QuantizedModelError) as e:
        wm.embed(q, KEY, b"payload")
    _hinted(e.value)
    det = wm.detect(q, KEY)  # detection on an unmarked quantized model: a clean "no"
    assert not det.detected and det.p_value > 1e-9


def test_watermark_fp16_model_refused(built):
    with pytest.raises(QuantizedModelError):
        wm.embed(attacks.to_fp16(built["mlp"].model), KEY, b"payload")


def test_watermark_unreachable_fidelity_bound(built):
    b = built["mlp"]
    with pytest.raises(FidelityError) as e:
        wm.embed(b.model, KEY, b"payload", max_relative_change=1e-9)
    _hinted(e.value)


@pytest.mark.parametrize(
    ("probes", "match"),
    [
        ("nan", "NaN or infinite"),  # every comparison would be NaN, and no bound rejects NaN
        ("empty", "at least one row"),
        ("ragged", "disagree on the number of rows"),
        ({}, "non-empty dict"),
    ],
)
def test_watermark_probes_that_cannot_measure_fidelity_are_refused(built, probes, match):
    b = built["mlp"]
    good = b.calibration
    named = {"nan": {"x": np.where(np.arange(good.size).reshape(good.shape) == 3, np.nan, good).astype(good.dtype)},
             "empty": {"x": good[:0]}, "ragged": {"x": good, "y": good[:1]}}
    bad = named[probes] if isinstance(probes, str) else probes
    with pytest.raises(FidelityError, match=match) as e:
        wm.embed(b.model, KEY, b"payload", probe_inputs=bad)
    _hinted(e.value)
    with pytest.raises(FidelityError, match=match):
        wm.fidelity(b.model, b.model, bad)


@pytest.mark.parametrize("bound", [0, -1.0, float("nan"), True])
def test_watermark_bound_must_be_a_positive_number(built, bound):
    with pytest.raises(FidelityError, match="max_relative_change must be a positive number"):
        wm.embed(built["mlp"].model, KEY, b"payload", max_relative_change=bound)


@pytest.mark.parametrize("key", [b"short", "a string key", None])
def test_watermark_bad_key(built, key):
    with pytest.raises(WatermarkKeyError) as e:
        wm.embed(built["mlp"].model, key, b"payload")
    assert isinstance(e.value, ConfigurationError)
    with pytest.raises(WatermarkKeyError):
        wm.detect(built["mlp"].model, key)


@pytest.mark.parametrize("payload", [b"", b"x" * 33, "text"])
def test_watermark_bad_payload(built, payload):
    with pytest.raises(PayloadError) as e:
        wm.embed(built["mlp"].model, KEY, payload)
    _hinted(e.value)


def test_watermark_not_a_model():
    with pytest.raises(NoFloatWeightsError):
        wm.detect(b"not a model", KEY)  # type: ignore[arg-type]
