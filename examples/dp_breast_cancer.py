"""Train the breast-cancer classifier with DP-SGD at epsilon=1 and epsilon=8, beside a non-private baseline.

    python examples/dp_breast_cancer.py [--out DIR] [--accountant rdp|prv]

Writes each model as ONNX with its DP certificate into DIR (default: a new temporary folder), checks
every certificate the way ``sealinfer seal --dp-cert`` will, and prints accuracy beside epsilon. Then:

    sealinfer dp check DIR/dp_eps1.cert.json --max-epsilon 1 --model DIR/dp_eps1.onnx

Note: the feature standardisation below uses the training split's mean and deviation, which DP-SGD
does not cover; a deployment should scale with public or clinical reference ranges instead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 0
DELTA = 1e-5
EPSILONS = (1.0, 8.0)
# Small batches and few epochs suit DP-SGD on 455 rows: each step's noise is what limits accuracy.
DP_SETTINGS = {"epochs": 20, "batch_size": 32, "lr": 0.02, "max_grad_norm": 1.0}


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=SEED, stratify=y)
    mu, sd = X_tr.mean(axis=0), X_tr.std(axis=0)
    return (((X_tr - mu) / sd).astype(np.float32), y_tr.astype(np.int64),
            ((X_te - mu) / sd).astype(np.float32), y_te.astype(np.int64))


def make_model(n_features: int):
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(n_features, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def accuracy(onnx_bytes: bytes, X: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: X})[0]
    return float(np.mean(logits.argmax(axis=1) == y))


def run(out: Path, accountant: str = "rdp") -> list[dict]:
    """Train all models, write them to ``out``, and return one row per model."""
    from sealinfer.privacy import check_certificate, train_baseline, train_dp

    X_tr, y_tr, X_te, y_te = load_data()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for eps in EPSILONS:
        start = time.perf_counter()
        result = train_dp(make_model(X_tr.shape[1]), X_tr, y_tr, target_epsilon=eps, delta=DELTA, seed=SEED,
                          accountant=accountant, torch_threads=1, **DP_SETTINGS)
        seconds = time.perf_counter() - start
        verdict = check_certificate(result.certificate, eps, model_bytes=result.onnx_bytes)
        name = f"dp_eps{eps:g}"
        (out / f"{name}.onnx").write_bytes(result.onnx_bytes)
        (out / f"{name}.cert.json").write_text(result.certificate.to_json(indent=2))
        rows.append({"model": name, "epsilon": result.epsilon, "delta": DELTA, "accuracy": accuracy(
            result.onnx_bytes, X_te, y_te), "noise_multiplier": result.noise_multiplier,
            "certificate": "pass" if verdict.passed else "FAIL", "train_s": seconds})
    start = time.perf_counter()
    base = train_baseline(make_model(X_tr.shape[1]), X_tr, y_tr, epochs=DP_SETTINGS["epochs"], batch_size=32,
                          lr=1e-2, seed=SEED, torch_threads=1)
    seconds = time.perf_counter() - start
    (out / "baseline.onnx").write_bytes(base.onnx_bytes)
    rows.append({"model": "baseline (no DP)", "epsilon": float("inf"), "delta": 0.0,
                 "accuracy": accuracy(base.onnx_bytes, X_te, y_te), "noise_multiplier": 0.0,
                 "certificate": "-", "train_s": seconds})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<18} {'epsilon':>8} {'delta':>7} {'sigma':>6} {'test acc':>9} {'cert':>5} {'train s':>8}")
    for r in rows:
        print(f"{r['model']:<18} {r['epsilon']:>8.3f} {r['delta']:>7.0e} {r['noise_multiplier']:>6.2f} "
              f"{r['accuracy']:>9.3f} {r['certificate']:>5} {r['train_s']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    parser.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sealinfer-dp-"))
    rows = run(out, args.accountant)
    print_table(rows)
    print(f"\nmodels and certificates written to {out}")
    print(f"check one: sealinfer dp check {out / 'dp_eps1.cert.json'} --max-epsilon 1 --model {out / 'dp_eps1.onnx'}")


if __name__ == "__main__":
    main()
