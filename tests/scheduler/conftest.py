"""Models built here with onnx.helper, a policy profile dict and a descriptor file with hardware
that is not on this machine (CUDA GPU, NPU, cloud GPU) beside two real CPU partitions."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

HIPAA = {
    "id": "hipaa",
    "version": "test",
    "placement": {
        "objective": "latency",
        "allowed_devices": [],
        "phi": {"require_attested": True, "require_on_prem": True, "allowed_precisions": ["fp32", "fp16"],
                "allowed_kinds": ["cpu", "gpu", "npu"]},
    },
    "priority_classes": {"stat": {"deadline_ms": 200}, "routine": {"deadline_ms": 2000},
                         "batch": {"deadline_ms": 60000}},
    "tenants": {"default": {"rate_per_s": 200, "burst": 400}},
}

DEVICES_YAML = """\
devices:
  - id: gpu0
    kind: gpu
    provider: CUDAExecutionProvider
    provider_options: {device_id: 0}
    peak_flops: {fp32: 19.5 TFLOPS, fp16: 312 TFLOPS}
    memory_bandwidth: 1.5 TB/s
    memory_bytes: 40 GiB
    precisions: [fp32, fp16]
    location: on_prem
    attested: true
    confidential: true
    power_w: 400
    overhead_s: 0.00005
  - id: npu0
    kind: npu
    provider: QNNExecutionProvider
    peak_flops: {int8: 45 TFLOPS, fp16: 10 TFLOPS}
    memory_bandwidth: 100 GB/s
    memory_bytes: 8 GiB
    precisions: [fp16, int8]
    location: on_prem
    attested: true
    power_w: 10
  - id: cloud-gpu
    kind: gpu
    provider: CUDAExecutionProvider
    peak_flops: {fp32: 60 TFLOPS, fp16: 990 TFLOPS}
    memory_bandwidth: 3.3 TB/s
    memory_bytes: 80 GiB
    precisions: [fp32, fp16]
    location: cloud
    attested: false
    power_w: 700
  - id: cpu-1t
    kind: cpu
    provider: CPUExecutionProvider
    peak_flops: {fp32: 80 GFLOPS}
    memory_bandwidth: 20 GB/s
    memory_bytes: 4 GiB
    precisions: [fp32]
    location: on_prem
    attested: true
    power_w: 15
    intra_op_threads: 1
    overhead_s: 0.00002
  - id: cpu-2t
    kind: cpu
    provider: CPUExecutionProvider
    peak_flops: {fp32: 160 GFLOPS}
    memory_bandwidth: 20 GB/s
    memory_bytes: 4 GiB
    precisions: [fp32]
    location: on_prem
    attested: true
    power_w: 30
    intra_op_threads: 2
    overhead_s: 0.00002
"""


def build_mlp(in_dim: int = 64, hidden: int = 128, out_dim: int = 8, *, seed: int = 0,
              dtype: int = TensorProto.FLOAT, batch: int | str = "N") -> onnx.ModelProto:
    """X[N, in] -> MatMul -> Add -> Relu -> MatMul -> Y[N, out], weights seeded."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w1 = numpy_helper.from_array((rng.standard_normal((in_dim, hidden)) * 0.1).astype(np_dtype), "W1")
    b1 = numpy_helper.from_array(np.zeros(hidden, np_dtype), "B1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, out_dim)) * 0.1).astype(np_dtype), "W2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("Add", ["h", "B1"], ["h2"]),
         helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "W2"], ["Y"])],
        "mlp", [helper.make_tensor_value_info("X", dtype, [batch, in_dim])],
        [helper.make_tensor_value_info("Y", dtype, [batch, out_dim])], [w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_conv(*, seed: int = 0) -> onnx.ModelProto:
    """X[N, 3, 16, 16] -> Conv(8, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Y[N, 8, 1, 1]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["Y"])],
        "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 8, 1, 1])], [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def hipaa_raw() -> dict:
    return copy.deepcopy(HIPAA)


@pytest.fixture
def devices_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES_YAML)
    return path


@pytest.fixture
def models():
    return {"mlp": build_mlp, "conv": build_conv}
