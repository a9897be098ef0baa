"""Watermark benchmark: embed/detect time on a ~100M-parameter model, and robustness per test model.

Run: python benchmarks/watermark.py [--params 100e6] [--skip-table]
Figures are wall-clock on whatever machine runs this (the CI box has 2 shared cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sealinfer import watermark as wm

KEY = bytes(range(32))
PAYLOAD = b"owner:st-mary-hospital|site:07"


def big_mlp(n_params: float, width: int = 4096, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Gemm+Relu stack of width x width layers (He init) and a ``classes``-logit head, ~n_params weights."""
    g = np.random.default_rng(seed)
    layers = max(2, round(n_params / (width * width))) + 1
    nodes, inits, cur = [], [], "x"
    for i in range(layers):
        rows = classes if i == layers - 1 else width
        w = (g.standard_normal((rows, width), dtype=np.float32) * np.float32(np.sqrt(2.0 / width)))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(rows, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        cur = f"h{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["b", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def naive_projection_rate(model: onnx.ModelProto, n: int = 200_000) -> float:
    """Baseline: the spread-channel projection as a per-weight Python loop (seconds per weight)."""
    w = numpy_helper.to_array(model.graph.initializer[0]).ravel()[:n].tolist()
    g = np.random.default_rng(0)
    chips = g.integers(0, 328, n).tolist()
    signs = (g.integers(0, 2, n) * 2 - 1).tolist()
    acc = [0.0] * 328
    t = time.perf_counter()
    for i in range(n):
        acc[chips[i]] += signs[i] * w[i]
    return (time.perf_counter() - t) / n


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def big_model_section(n_params: float) -> None:
    model, t_build = timed(big_mlp, n_params)
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) == 2)
    layers = len(model.graph.initializer) // 2
    print(f"\n== {n / 1e6:.1f}M-parameter model ({layers} Gemm layers; built in {t_build:.1f}s)")
    from sealinfer.runtime.errors import FidelityError

    try:
        (marked, receipt), t_embed = timed(wm.embed, model, KEY, PAYLOAD)
    except FidelityError as exc:  # an untrained random net is far more sensitive than a trained one
        print(f"default bound 1e-3 not met on this random-init net ({exc.message}); retrying with 2e-3")
        (marked, receipt), t_embed = timed(wm.embed, model, KEY, PAYLOAD, max_relative_change=2e-3)
    det, t_detect = timed(wm.detect, marked, KEY)
    per_w = naive_projection_rate(model)
    print(f"embed   {t_embed:6.2f} s   (target <= 5 s; includes fidelity check on {receipt.fidelity.n_probes} "
          f"generated probes, strength {receipt.strength['spread_rms']:.1e}, "
          f"fidelity {receipt.fidelity.max_relative_change:.1e}, bit-exact after {receipt.survives_simulated})")
    print(f"detect  {t_detect:6.2f} s   (target <= 5 s; detected={det.detected}, payload ok={det.payload == PAYLOAD}, "
          f"p={det.p_value:.2g})")
    print(f"baseline: per-weight Python loop for ONE spread projection pass: {per_w * 1e9:.0f} ns/weight "
          f"-> {per_w * n:.0f} s extrapolated for {n / 1e6:.0f}M weights (measured on 200k, not run in full)")
    noisy = onnx.ModelProto()
    noisy.CopyFrom(marked)
    g = np.random.default_rng(5)
    for t in noisy.graph.initializer:
        if len(t.dims) == 2:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(a + g.standard_normal(a.shape, dtype=np.float32)
                                               * np.float32(0.1 * a.std()), t.name))
    d2, t2 = timed(wm.detect, noisy, KEY)
    energy = n * receipt.strength["spread_rms"] ** 2 / 0.01
    print(f"noise 0.1*std on the {n / 1e6:.0f}M model: detected={d2.detected} p={d2.p_value:.2g} "
          f"(log10 {d2.log10_p:.1f}) payload ok={d2.payload == PAYLOAD} [{t2:.1f}s]; mark energy A = N s^2/0.01 = "
          f"{energy:.0f} (p <= 1e-9 under this noise needs ~210: this random-init net allows only s = "
          f"{receipt.strength['spread_rms']:.0e} within the bound)")


def table_section() -> None:
    import torch

    from sealinfer.tests.watermark import attacks, builders

    torch.set_num_threads(1)
    print("\n== fidelity / robustness per test model (probes: 256 training inputs; fidelity on held-out data)")
    head = f"{'model':12} {'weights':>8} {'max rel':>8} {'top-1':>6} {'robust A/cap':>11} | " + " | ".join(
        f"{a:>16}" for a in ("fp16", "int8", "prune 50%", "noise 0.1", "perm+rescale"))
    print(head + "\n" + "-" * len(head))
    tmp = Path(tempfile.mkdtemp())
    for name, fn in builders.BUILDERS.items():
        b = fn(seed=0)
        marked, rc = wm.embed(b.model, KEY, PAYLOAD, probe_inputs={"x": b.calibration})
        fid = wm.fidelity(b.model, marked, probe_inputs={"x": b.x_test})
        cells = []
        for attacked in (attacks.to_fp16(marked), attacks.to_int8_dynamic(marked, tmp),
                         attacks.prune_global(marked, 0.5), attacks.add_noise(marked, 0.1, seed=3),
                         attacks.permute_and_rescale(marked, seed=7)[0]):
            d = wm.detect(attacked, KEY)
            ok = "ok" if d.payload == PAYLOAD else "--"
            cells.append(f"{'Y' if d.detected else 'n'} p=1e{max(d.log10_p, -999):.0f} {ok}".rjust(16))
        print(f"{name:12} {rc.n_weights:>8} {fid.max_relative_change:8.1e} {fid.top1_agreement:6.3f} "
              f"{rc.strength['robust_energy']:5.0f}/{min(rc.strength['robust_capacity'], 99999):<5.0f} | "
              + " | ".join(cells))
    print("cells: detected (Y/n), p-value exponent (capped at 1e-999), payload decoded exactly (ok); targets: "
          "max rel <= 1e-3, top-1 >= 0.999 on held-out data; BER 0 (payload ok) after fp16/int8; p <= 1e-9 "
          "after pruning, noise, permutation")
    print("robust A/cap: energy placed in the noise-proof channel, sum((change/std)^2)/0.01, and the most one "
          "tensor could take within the whole bound (estimate); p <= 1e-9 under 0.1*std noise needs A ~210 "
          "(blind), ~36 even with the original model")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--skip-table", action="store_true")
    args = ap.parse_args()
    big_model_section(args.params)
    if not args.skip_table:
        table_section()


if __name__ == "__main__":
    main()
