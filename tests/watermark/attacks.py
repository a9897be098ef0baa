"""Attacks on ONNX models, written independently of sealinfer.watermark (no shared code paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _weight_names(model: onnx.ModelProto) -> list[str]:
    """Initializers used as the weight operand of MatMul/Gemm/Conv (resolving Identity)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm", "Conv"):
            src = n.input[1]
            while src in prod and prod[src].op_type == "Identity":
                src = prod[src].input[0]
            names.append(src)
    inits = {t.name for t in model.graph.initializer}
    return [n for n in dict.fromkeys(names) if n in inits]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every float initializer as FP16 and Cast it back to float32 where it is used."""
    out = _copy(model)
    casts = []
    for t in out.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(t).astype(np.float16)
        name = t.name
        t.CopyFrom(numpy_helper.from_array(arr, name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(casts + nodes)
    return out


def to_int8_dynamic(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic

    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    src.write_bytes(model.SerializeToString())  # test-built model, not patient data
    quantize_dynamic(str(src), str(dst))
    return onnx.load(str(dst))


def prune_global(model: onnx.ModelProto, fraction: float = 0.5) -> onnx.ModelProto:
    """Zero the ``fraction`` smallest-magnitude weights across all weight tensors together."""
    out = _copy(model)
    names = set(_weight_names(out))
    tensors = [t for t in out.graph.initializer if t.name in names]
    allw = np.concatenate([np.abs(numpy_helper.to_array(t)).ravel() for t in tensors])
    thr = np.quantile(allw, fraction)
    for t in tensors:
        a = numpy_helper.to_array(t).copy()
        a[np.abs(a) <= thr] = 0.0
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def add_noise(model: onnx.ModelProto, rel: float = 0.1, seed: int = 0) -> onnx.ModelProto:
    """Gaussian noise with std ``rel`` x (each tensor's std) on every float initializer."""
    out = _copy(model)
    g = np.random.default_rng(seed)
    for t in out.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        if a.size < 2:
            continue
        a = a + g.standard_normal(a.shape).astype(np.float32) * np.float32(rel * a.std())
        t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))
    return out


def permute_and_rescale(model: onnx.ModelProto, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """Randomly permute and positively rescale the units of every ReLU hidden layer (function-preserving).

    Handles Gemm(transB=1)/MatMul(+Add bias)/Conv producers and Gemm/MatMul/Conv consumers, with an
    optional MaxPool+Flatten in between. Returns the attacked model and the number of layers attacked.
    """
    out = _copy(model)
    g = np.random.default_rng(seed)
    inits = {t.name: t for t in out.graph.initializer}
    prod = {o: n for n in out.graph.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in out.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def init_of(name: str) -> str | None:
        while name in prod and prod[name].op_type == "Identity":
            name = prod[name].input[0]
        return name if name in inits else None

    def get(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).copy()

    def put(name: str, arr: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))

    layers = 0
    for relu in [n for n in out.graph.node if n.op_type == "Relu"]:
        p = prod.get(relu.input[0])
        bias = None
        if p is not None and p.op_type == "Add":
            consts = [i for i in p.input if init_of(i)]
            dyn = [i for i in p.input if not init_of(i)]
            if len(consts) != 1 or len(dyn) != 1 or prod.get(dyn[0]) is None:
                continue
            bias, p = init_of(consts[0]), prod[dyn[0]]
        if p is None or p.op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        wa = init_of(p.input[1])
        if wa is None:
            continue
        if p.op_type in ("Gemm", "Conv") and len(p.input) > 2:
            bias = init_of(p.input[2])
        # follow to the consumer
        nxt, block = cons.get(relu.output[0], []), 1
        if len(nxt) == 1 and nxt[0].op_type == "MaxPool":
            nxt = cons.get(nxt[0].output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Flatten":
                nxt = cons.get(nxt[0].output[0], [])
                block = -1
        if len(nxt) != 1 or nxt[0].op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        c = nxt[0]
        wb = init_of(c.input[1])
        if wb is None:
            continue
        A, B = get(wa), get(wb)
        a_rows = A if p.op_type != "MatMul" else A.T  # [units, ...]
        h = a_rows.shape[0]
        perm = g.permutation(h)
        scale = np.exp(g.uniform(-1.0, 1.0, size=h)).astype(np.float32)
        shape_tail = (1,) * (a_rows.ndim - 1)
        a_new = (a_rows * scale.reshape(h, *shape_tail))[perm]
        put(wa, a_new if p.op_type != "MatMul" else a_new.T)
        if bias is not None:
            put(bias, (get(bias) * scale)[perm])
        b_cols = B.T if c.op_type == "MatMul" else B  # [out, in, ...]
        if block == -1:
            blk = b_cols.shape[1] // h
            v = b_cols.reshape(b_cols.shape[0], h, blk)
            v = (v / scale.reshape(1, h, 1))[:, perm, :]
            b_new = v.reshape(b_cols.shape)
        else:
            v = b_cols / scale.reshape(1, h, *((1,) * (b_cols.ndim - 2)))
            b_new = v[:, perm]
        put(wb, b_new.T if c.op_type == "MatMul" else b_new)
        layers += 1
    return out, layers


def to_int8_qdq(model: onnx.ModelProto, per_channel: bool = False) -> onnx.ModelProto:
    """QDQ layout: int8 weight initializers (symmetric) feeding DequantizeLinear nodes."""
    out = _copy(model)
    names = set(_weight_names(out))
    nodes = []
    for t in out.graph.initializer:
        if t.name not in names:
            continue
        w = numpy_helper.to_array(t)
        if per_channel:
            scale = (np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0).astype(np.float32)
            q = np.rint(w / scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.int8)
            zp = np.zeros(w.shape[0], np.int8)
        else:
            scale = np.float32(np.abs(w).max() / 127.0)
            q, zp = np.rint(w / scale).astype(np.int8), np.int8(0)
        name = t.name
        t.CopyFrom(numpy_helper.from_array(q, name + "_q"))
        out.graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), name + "_s"),
                                      numpy_helper.from_array(np.asarray(zp), name + "_zp")])
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_zp"], [name], axis=0))
    rest = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes + rest)
    return out
