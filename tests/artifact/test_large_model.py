"""A model whose external data passes 2 GiB seals and loads with bounded extra memory.

Each phase runs in a fresh process so its peak RSS (VmHWM) is its own: sealing streams the weights
(peak far below the model's size); ``prepack=False`` loading holds the weights once (peak about the
model's size) and answers exactly as plain onnxruntime with the same settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sealinfer.runtime.keys.keyring import Keyring

WIDTH = 4096
LAYERS = 33  # 33 x 64 MiB = 2.06 GiB: past protobuf's 2 GiB limit, so it must live in external data
WEIGHT_BYTES = LAYERS * WIDTH * WIDTH * 4

_CHILD = r"""
import json, sys, numpy as np, onnxruntime as ort
from pathlib import Path
from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.keys.keyring import Keyring

mode, work = sys.argv[1], Path(sys.argv[2])
x = np.ones((1, int(sys.argv[3])), np.float32)
Path("/proc/self/clear_refs").write_text("5")
out = {}
if mode == "seal":
    seal_model(work / "big.onnx", work / "big.sealed", keyring=Keyring.open(work / "kr", "pw"),
               options=SealOptions(name="big"))
elif mode == "plain":
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_prepacking", "1")
    s = ort.InferenceSession(str(work / "big.onnx"), so, providers=["CPUExecutionProvider"])
    np.save(work / "plain.npy", s.run(None, {"input": x})[0])
else:
    with Runtime(Keyring.open(work / "kr", "pw")).load(work / "big.sealed", prepack=False) as s:
        np.save(work / "sealed.npy", s.run({"input": x})["output"])
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        out["peak_bytes"] = int(line.split()[1]) * 1024
print(json.dumps(out))
"""


def _write_model(folder: Path) -> None:
    rng = np.random.default_rng(0)
    inits, nodes, prev, offset = [], [], "input", 0
    with (folder / "big.weights").open("wb") as fh:
        for i in range(LAYERS):
            w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / 64
            fh.write(w.tobytes())
            t = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH])
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "big.weights"), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += w.nbytes
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
            prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["output"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(folder / "big.onnx"))


def _phase(mode: str, work: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(work), str(WIDTH)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for name in ("big.weights", "big.weights.kept", "big.sealed"):  # 4 GiB: do not leave it to pytest's retention
        (tmp_path / name).unlink(missing_ok=True)


@pytest.mark.slow
def test_a_model_past_2_gib_seals_streaming_and_loads_holding_its_weights_once(work: Path) -> None:
    _write_model(work)
    Keyring.create(work / "kr", "pw", scrypt_n=2**14)
    seal_peak = _phase("seal", work)
    assert (work / "big.sealed").stat().st_size > WEIGHT_BYTES > 2**31
    assert seal_peak < WEIGHT_BYTES / 4, f"sealing peaked at {seal_peak / 2**20:.0f} MiB: it did not stream"
    (work / "big.weights").rename(work / "big.weights.kept")  # the sealed file must stand alone
    load_peak = _phase("sealed", work)
    (work / "big.weights.kept").rename(work / "big.weights")
    plain_peak = _phase("plain", work)
    assert load_peak < 1.25 * plain_peak, (load_peak, plain_peak)
    assert load_peak < 1.25 * WEIGHT_BYTES
    assert np.array_equal(np.load(work / "sealed.npy"), np.load(work / "plain.npy"))
