"""Models the watermark tests build and train: a breast-cancer MLP, a digits CNN, a tiny transformer.

All are trained briefly with fixed seeds on scikit-learn datasets and exported with
``torch.onnx.export`` into memory (``io.BytesIO``); nothing is downloaded or written to disk.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


@dataclass
class Built:
    model: onnx.ModelProto
    calibration: np.ndarray  # training inputs (probes for embedding)
    x_test: np.ndarray  # held-out inputs (fidelity acceptance)
    y_test: np.ndarray


def export(m: torch.nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    m.eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def train(m: torch.nn.Module, X: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3,
          bs: int | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for _ in range(epochs):
        if bs:
            perm = torch.randperm(len(Xt))
            batches = [perm[i:i + bs] for i in range(0, len(Xt), bs)]
        else:
            batches = [torch.arange(len(Xt))]
        for b in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(Xt[b]), yt[b]).backward()
            opt.step()
    return m


def breast_cancer_mlp(seed: int = 0, hidden: int = 256):
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    sc = StandardScaler().fit(Xtr)
    Xtr, Xte = sc.transform(Xtr).astype(np.float32), sc.transform(Xte).astype(np.float32)
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(30, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                            torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    train(m, Xtr, ytr, 150, seed=seed)
    return Built(export(m, torch.tensor(Xte[:4])), Xtr[:256], Xte, yte)


def _digits(shape: tuple[int, ...]):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, *shape)
    return train_test_split(X, y, test_size=0.3, random_state=0)


def digits_cnn(seed: int = 0):
    Xtr, Xte, ytr, yte = _digits((1, 8, 8))
    torch.manual_seed(seed)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64 * 16, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10))
    train(m, Xtr, ytr, 15, bs=128, seed=seed)
    return Built(export(m, torch.tensor(Xte[:4])), Xtr[:256], Xte, yte)


class TinyEncoder(torch.nn.Module):
    """Rows of an 8x8 digit as 8 tokens of 8 features; 2 encoder layers, mean-pooled."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(8, d)
        layer = torch.nn.TransformerEncoderLayer(d, 4, 256, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = torch.nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(self.inp(x)).mean(1))


def digits_transformer(seed: int = 0):
    Xtr, Xte, ytr, yte = _digits((8, 8))
    torch.manual_seed(seed)
    m = TinyEncoder()
    train(m, Xtr, ytr, 15, bs=64, seed=seed)
    return Built(export(m, torch.tensor(Xte[:4])), Xtr[:256], Xte, yte)


BUILDERS = {"mlp": breast_cancer_mlp, "cnn": digits_cnn, "transformer": digits_transformer}
