"""Where a weight change costs least: a per-weight output-sensitivity estimate from probe activations.

For a weight op ``y = W x`` the first-order output change from ``dW[i, j]`` is carried by ``x_j`` into
unit ``i``; when a ReLU-type activation follows, a unit that is never active on the probes passes none of
it on. So the cost of changing ``W[i, j]`` is modelled as ``active_i * E[x_j^2]`` (both normalized to mean
1): separable, measured in one onnxruntime run with the op inputs and the activation inputs exposed as
extra outputs. It is a *proxy* (downstream gains are ignored) used only to shape where a mark goes;
fidelity is always measured on the real outputs afterwards.
"""

from __future__ import annotations

import numpy as np
import onnx

from sealinfer.watermark.canonicalize import ACTIVATIONS, CHANNELWISE
from sealinfer.watermark.graph import WeightRef, pairing_graph

FLOOR = 1e-3  # relative cost floor: an inactive unit is cheap, never free (held-out data may wake it)


def _activation_input(model: onnx.ModelProto, ref: WeightRef) -> str | None:
    """Name of the tensor entering the ReLU-type activation that follows ``ref``'s op, if one does."""
    gr = pairing_graph(model)
    name = model.graph.node[ref.node].output[0]
    for _ in range(8):
        cons = gr.consumers.get(name, [])
        if len(cons) != 1:
            return None
        _, nxt = cons[0]
        if nxt.op_type in ACTIVATIONS:
            return name
        if nxt.op_type not in CHANNELWISE:
            return None
        name = nxt.output[0]
    return None


def weight_costs(model: onnx.ModelProto, refs: list[WeightRef], probes: dict[str, np.ndarray],
                 wanted: list[int]) -> dict[int, np.ndarray]:
    """Relative cost per weight (``[rows, cols]``, mean about 1) of the tensors in ``wanted``."""
    import onnxruntime as ort

    variant = onnx.ModelProto()
    variant.CopyFrom(model)
    have = {o.name for o in variant.graph.output}
    names: dict[int, tuple[str, str | None]] = {}
    for t in wanted:
        ref = refs[t]
        data = model.graph.node[ref.node].input[0]
        act = _activation_input(model, ref)
        names[t] = (data, act)
        for n in (data, act):
            if n and n not in have:
                variant.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
                have.add(n)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(variant.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    values = dict(zip(outs, sess.run(None, probes), strict=True))
    costs: dict[int, np.ndarray] = {}
    for t in wanted:
        ref = refs[t]
        rows = ref.shape[0]
        cols = int(np.prod(ref.shape[1:]))
        data, act = names[t]
        x = np.asarray(values.get(data, np.ones(1)), dtype=np.float64)
        conv = len(ref.shape) > 2
        if conv and x.ndim >= 2 and x.shape[1] == ref.shape[1]:
            q = np.repeat(np.mean(np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]) ** 2, axis=0),
                          int(np.prod(ref.shape[2:])))
        elif not conv and x.shape[-1] == cols:
            q = np.mean(x.reshape(-1, cols) ** 2, axis=0)
        else:
            q = np.ones(cols)
        active = np.ones(rows)
        if act is not None:
            h = np.asarray(values[act])
            axis = 1 if conv else h.ndim - 1
            if h.shape[axis] == rows:
                active = np.mean(np.moveaxis(h, axis, -1).reshape(-1, rows) > 0, axis=0)
        q = q / max(float(q.mean()), 1e-30) + FLOOR
        a = active / max(float(active.mean()), 1e-30) + FLOOR
        costs[t] = np.outer(a, q)
    return costs
