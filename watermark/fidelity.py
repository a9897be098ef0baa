"""Compare an original and a marked model on probe inputs with real onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import onnx

from sealinfer.watermark.errors import FidelityError
from sealinfer.watermark.graph import WeightRef, copy_fields
from sealinfer.watermark.report import FidelityReport

_NP = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def generate_probes(model: onnx.ModelProto, n_probes: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (small non-negative ints for integer inputs) from the input signature.

    The first dynamic dimension is the batch (``n_probes``); other dynamic dimensions get 8.
    """
    g = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    probes: dict[str, np.ndarray] = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dtype = _NP.get(tt.elem_type)
        if dtype is None:
            raise FidelityError(
                f"Cannot generate probes for input {inp.name!r} (element type {tt.elem_type}).",
                hint="Pass probe_inputs={name: array} with representative inputs.",
            )
        shape, batch_done = [], False
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif not batch_done:
                shape.append(n_probes)
                batch_done = True
            else:
                shape.append(8)
        if np.issubdtype(dtype, np.floating):
            probes[inp.name] = g.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            probes[inp.name] = g.integers(0, 2, size=shape).astype(bool)
        else:
            probes[inp.name] = g.integers(0, 2, size=shape).astype(dtype)
    return probes


def _session(model: onnx.ModelProto) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = _session(model)
    return sess.run(None, inputs)  # type: ignore[attr-defined]


def compare(before: list[np.ndarray], after: list[np.ndarray], n: int, probes: str) -> FidelityReport:
    worst, agree, total = 0.0, 0, 0
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        a = np.asarray(a)
        b = np.asarray(b)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        scale = float(np.mean(np.abs(a64)))
        diff = float(np.max(np.abs(b64 - a64))) if a.size else 0.0
        if scale > 0:
            worst = max(worst, diff / scale)
        elif diff > 0:
            worst = float("inf")
        if i == 0 and a.ndim >= 2 and a.shape[-1] >= 2:
            agree += int(np.count_nonzero(a.argmax(-1) == b.argmax(-1)))
            total += int(np.prod(a.shape[:-1]))
        elif i == 0:
            agree += int(np.count_nonzero((a > 0) == (b > 0)))
            total += a.size
    return FidelityReport(worst, agree / total if total else 1.0, n, probes)


def check_probes(probes: object) -> dict[str, np.ndarray]:
    """Supplied probe inputs, refused unless they can measure fidelity: named arrays, rows, finite values.

    A NaN in a probe makes every output comparison NaN, which no bound rejects: fidelity would pass
    without having been measured.
    """
    if not isinstance(probes, dict) or not probes:
        raise FidelityError("probe_inputs must be a non-empty dict of input name -> numpy array.",
                            hint="Pass probe_inputs={name: array} with representative inputs.")
    rows = set()
    for name, value in probes.items():
        if not isinstance(value, np.ndarray) or value.ndim < 1 or len(value) == 0:
            raise FidelityError(f"Probe input {name!r} must be a numpy array with at least one row.",
                                hint="Pass probe_inputs={name: array} with representative inputs.")
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise FidelityError(f"Probe input {name!r} holds NaN or infinite values, so output changes "
                                "cannot be measured on it.", hint="Impute or drop those rows first.")
        rows.add(len(value))
    if len(rows) > 1:
        raise FidelityError(f"Probe inputs disagree on the number of rows ({sorted(rows)}).",
                            hint="Give every input the same number of rows.")
    return probes


def fidelity(original: onnx.ModelProto, marked: onnx.ModelProto, probe_inputs: dict[str, np.ndarray] | None = None,
             n_probes: int = 256, seed: int = 0) -> FidelityReport:
    """Max relative output change and top-1 agreement of ``marked`` against ``original``."""
    kind = "supplied" if probe_inputs is not None else "generated"
    probes = check_probes(probe_inputs) if probe_inputs is not None else generate_probes(original, n_probes, seed)
    n = int(next(iter(probes.values())).shape[0]) if probes else 0
    try:
        before = run(original, probes)
        after = run(marked, probes)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FidelityError(
            f"Could not run the model on probe inputs: {str(exc).splitlines()[0][:200]}",
            hint="Pass probe_inputs={name: array} matching the model's input signature.",
        ) from None
    return compare(before, after, n, kind)


class ProbeRunner:
    """One onnxruntime session in which the carrier weights are inputs, so many weight variants run
    on the same probes without rebuilding a session (or ever serializing a variant) for each."""

    def __init__(self, model: onnx.ModelProto, refs: list[WeightRef], probes: dict[str, np.ndarray]) -> None:
        # Built field by field so the carrier initializers (most of a large model's bytes) are never copied.
        variant = onnx.ModelProto()
        copy_fields(model, variant, {"graph"})
        copy_fields(model.graph, variant.graph, {"initializer"})
        names = {r.init_name for r in refs}
        declared = {i.name for i in variant.graph.input}
        for t in model.graph.initializer:
            if t.name not in names:
                variant.graph.initializer.add().CopyFrom(t)
            elif t.name not in declared:
                variant.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        self.refs = refs
        self.probes = probes
        try:
            self.session = _session(variant)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FidelityError(
                f"onnxruntime cannot load the model: {str(exc).splitlines()[0][:200]}",
                hint="Check the model with onnx.checker and onnxruntime before watermarking it.",
            ) from None

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(self.probes)
        for ref, arr in zip(self.refs, arrays, strict=True):
            feeds[ref.init_name] = np.ascontiguousarray(arr.T if ref.transposed else arr, dtype=np.float32)
        try:
            return self.session.run(None, feeds)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FidelityError(
                f"Could not run the model on probe inputs: {str(exc).splitlines()[0][:200]}",
                hint="Pass probe_inputs={name: array} matching the model's input signature.",
            ) from None
