"""Cost features from real ONNX graphs: exact FLOP counts, batch linearity, precision, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from sealinfer.runtime.errors import ModelError
from sealinfer.runtime.scheduler.features import MissingFeaturesError, ModelFeatures, extract_features


def test_mlp_flops_and_bytes_match_hand_count(models):
    model = models["mlp"](64, 128, 8)
    f = extract_features(model)
    # per sample: 2*64*128 (MatMul) + 128 (Add) + 128 (Relu) + 2*128*8 (MatMul)
    assert f.flops_per_sample == 2 * 64 * 128 + 128 + 128 + 2 * 128 * 8
    assert f.flops_fixed == 0
    assert f.op_classes["gemm"]["per_sample"] == 2 * 64 * 128 + 2 * 128 * 8
    assert f.op_classes["elementwise"]["per_sample"] == 256
    assert f.param_bytes == 4 * (64 * 128 + 128 + 128 * 8)
    # weights are read once per run whatever the batch; activations scale with it
    assert f.bytes_read_fixed == f.param_bytes
    assert f.bytes_written_per_sample == 4 * (128 * 3 + 8)
    assert f.precision == "fp32" and f.batch_symbolic
    assert f.flops(32) == 32 * f.flops_per_sample


def test_symbolic_batch_coefficients_equal_a_fixed_batch_graph(models):
    symbolic = extract_features(models["conv"]())
    fixed_model = models["conv"]()
    for value in (*fixed_model.graph.input, *fixed_model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 5
    fixed = extract_features(fixed_model)
    assert not fixed.batch_symbolic
    assert fixed.flops(1) == pytest.approx(symbolic.flops(5))
    assert fixed.bytes_moved(1) == pytest.approx(symbolic.bytes_moved(5))
    # Conv: 2 * out elements * (Cin * kH * kW) + bias; 8 x 16 x 16 outputs per sample
    assert symbolic.op_classes["conv"]["per_sample"] == 2 * 8 * 16 * 16 * 27
    assert symbolic.op_classes["other"]["per_sample"] == 8 * 16 * 16  # global average pool reads each value


def test_attention_is_its_own_class():
    q = helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["N", 4, 32, 16])
    k = helper.make_tensor_value_info("K", TensorProto.FLOAT, ["N", 4, 32, 16])
    v = helper.make_tensor_value_info("V", TensorProto.FLOAT, ["N", 4, 32, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Attention", ["Q", "K", "V"], ["Y"])], "attn", [q, k, v], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    f = extract_features(model)
    # QK^T and AV: 2 * 2 * heads * seq * seq * head_dim per sample
    assert f.op_classes["attention"]["per_sample"] == 4 * 4 * 32 * 32 * 16
    assert f.unknown_nodes == 0


def test_precision_follows_the_weights(models):
    assert extract_features(models["mlp"](dtype=TensorProto.FLOAT16)).precision == "fp16"


def test_non_batch_symbolic_dims_are_pinned_and_recorded(models):
    model = models["mlp"](16, 16, 4)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    f1 = extract_features(model)
    f2 = extract_features(model, dims={"seq": 7})
    assert f2.assumed_dims == {"seq": 7} and f1.assumed_dims == {}


def test_round_trip_is_json_safe_and_keyed_by_content(models):
    f = extract_features(models["mlp"]())
    data = json.loads(json.dumps(f.to_dict()))
    again = ModelFeatures.from_dict(data)
    assert again == f and again.key == f.key
    assert extract_features(models["mlp"](seed=1)).key == f.key  # same shapes, same cost
    assert extract_features(models["mlp"](64, 64, 8)).key != f.key


def _drop_flops(d):
    d.pop("flops_per_sample")


@pytest.mark.parametrize(
    "mutate",
    [_drop_flops, lambda d: d.update(param_bytes=-1), lambda d: d.update(flops_fixed=float("nan")),
     lambda d: d.update(precision=3), lambda d: d.update(schema=99), lambda d: d.update(batch_symbolic="yes"),
     lambda d: d.update(op_classes=[1])],
)
def test_malformed_features_are_refused(models, mutate):
    data = extract_features(models["mlp"]()).to_dict()
    mutate(data)
    with pytest.raises(MissingFeaturesError) as info:
        ModelFeatures.from_dict(data)
    assert info.value.hint


def test_absent_features_are_refused():
    with pytest.raises(MissingFeaturesError, match="no cost features"):
        ModelFeatures.from_dict(None)


def test_bad_models_are_typed_errors():
    with pytest.raises(ModelError):
        extract_features(b"not a model")  # type: ignore[arg-type]
    empty = helper.make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(MissingFeaturesError):
        extract_features(empty)


def test_large_weights_are_counted_from_their_shapes(models):
    model = models["mlp"](1024, 1024, 8)
    f = extract_features(model)
    assert f.param_bytes == 4 * (1024 * 1024 + 1024 + 1024 * 8)
    assert np.isclose(f.flops_per_sample, 2 * 1024 * 1024 + 2048 + 2 * 1024 * 8)
