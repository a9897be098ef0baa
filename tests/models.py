"""ONNX models built by the tests (nothing downloaded): onnx.helper graphs and scikit-learn data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def mlp(
    in_dim: int = 30, hidden: int = 64, out_dim: int = 2, *, seed: int = 0, softmax: bool = True
) -> onnx.ModelProto:
    """x[N, in] -> Gemm -> Relu -> Gemm (-> Softmax): a dense classifier with random weights."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((in_dim, hidden)) / np.sqrt(in_dim)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, out_dim)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(out_dim, np.float32)
    return mlp_from_weights(w1, b1, w2, b2, softmax=softmax)


def mlp_from_weights(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, *, softmax: bool = True
) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["input", "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "W2", "B2"], ["logits"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", w2.shape[1]])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        outputs.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", w2.shape[1]]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", w1.shape[0]])],
        outputs,
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sealinfer-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def wide_model(n_bytes: int, *, seed: int = 0) -> onnx.ModelProto:
    """A MatMul chain whose weights total about ``n_bytes`` (for size and streaming tests)."""
    rng = np.random.default_rng(seed)
    width = 1024
    layers = max(1, n_bytes // (width * width * 4))
    inits, nodes, prev = [], [], "input"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["output"]))
    return _model(nodes, inits, "wide", ("input", width), ("output", width))


def deep_mlp(in_dim: int, width: int, depth: int, out_dim: int, *, seed: int = 0) -> onnx.ModelProto:
    """x[N, in] -> (Gemm -> Relu) x depth -> Gemm: compute-heavy with small inputs and outputs."""
    rng = np.random.default_rng(seed)
    dims = [in_dim, *([width] * depth), out_dim]
    nodes, inits, prev = [], [], "input"
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"W{i}"),
            numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"B{i}"),
        ]
        out = "logits" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out if out == "logits" else f"g{i}"]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    return _model(nodes, inits, "deep_mlp", ("input", in_dim), ("logits", out_dim))


def loose_matmul() -> onnx.ModelProto:
    """x[N, M] @ ones[3, 2]: the signature leaves M symbolic, but any M other than 3 breaks the MatMul."""
    weight = numpy_helper.from_array(np.ones((3, 2), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["output"])], "loose_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _model(nodes: list, inits: list, name: str, inp: tuple[str, int], out: tuple[str, int]) -> onnx.ModelProto:
    """A float32 graph with one [N, d] input and one [N, d] output, at the tests' opset and IR version."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, ["N", inp[1]])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, ["N", out[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def breast_cancer_mlp(*, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """An MLP trained with scikit-learn on its bundled breast-cancer data; returns (model, X_test, y_test)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=seed).fit(scaler.transform(x_tr), y_tr)
    # Fold the scaler into the first layer so the model takes raw features.
    w1 = clf.coefs_[0] / scaler.scale_[:, None]
    b1 = clf.intercepts_[0] - (scaler.mean_ / scaler.scale_) @ clf.coefs_[0]
    w2 = np.concatenate([-clf.coefs_[1], clf.coefs_[1]], axis=1) / 2  # logistic -> 2-class softmax
    b2 = np.concatenate([-clf.intercepts_[1], clf.intercepts_[1]]) / 2
    model = mlp_from_weights(w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32), b2.astype(np.float32))
    return model, x_te.astype(np.float32), y_te


def conv_net(channels: int, size: int, depth: int, classes: int, *, seed: int = 0) -> onnx.ModelProto:
    """x[N, 3, size, size] -> (Conv 3x3 -> Relu) x depth -> global average pool -> Gemm.

    Compute-heavy with few weights, an imaging model's shape (``deep_mlp`` instead streams tens of MB
    of weights on every call).
    """
    rng = np.random.default_rng(seed)
    nodes, inits, prev, c_in = [], [], "input", 3
    for i in range(depth):
        w = (rng.standard_normal((channels, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"K{i}"), numpy_helper.from_array(np.zeros(channels, np.float32), f"C{i}")]
        nodes += [
            helper.make_node("Conv", [prev, f"K{i}", f"C{i}"], [f"v{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"v{i}"], [f"r{i}"]),
        ]
        prev, c_in = f"r{i}", channels
    w = (rng.standard_normal((channels, classes)) / np.sqrt(channels)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "Wout"), numpy_helper.from_array(np.zeros(classes, np.float32), "Bout")]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "Wout", "Bout"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
