"""Shared, session-scoped data and models for the privacy tests (each model is trained once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

SEED = 0


@dataclass
class Cancer:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def cancer() -> Cancer:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=SEED, stratify=y)
    mu, sd = X_tr.mean(axis=0), X_tr.std(axis=0)
    return Cancer(((X_tr - mu) / sd).astype(np.float32), y_tr.astype(np.int64),
                  ((X_te - mu) / sd).astype(np.float32), y_te.astype(np.int64))


def small_mlp(n_in: int = 30, seed: int = SEED):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def big_mlp(n_in: int = 30, seed: int = SEED):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2)
    )


DP_TARGET_EPSILON = 1.0
DP_DELTA = 1e-5


@pytest.fixture(scope="session")
def dp_model(cancer: Cancer):
    """The breast-cancer classifier trained with DP-SGD to epsilon=1 (RDP)."""
    from sealinfer.privacy import train_dp

    return train_dp(small_mlp(), cancer.X_train, cancer.y_train, target_epsilon=DP_TARGET_EPSILON, delta=DP_DELTA,
                    epochs=15, batch_size=64, lr=0.05, seed=SEED, torch_threads=1)


@dataclass
class Canaries:
    """Training set = 200 clean rows + 100 mislabeled canaries; 100 other mislabeled rows never trained on.

    Mislabeled canaries are the records a model can only fit by memorising them, so a membership
    attack on them measures memorisation (Jagielski et al., 2020).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    members: tuple[np.ndarray, np.ndarray]
    non_members: tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="session")
def canaries(cancer: Cancer) -> Canaries:
    X = np.concatenate([cancer.X_train, cancer.X_test])
    y = np.concatenate([cancer.y_train, cancer.y_test])
    idx = np.random.default_rng(SEED).permutation(len(X))
    clean, c_in, c_out = idx[:200], idx[200:300], idx[300:400]
    flipped = y.copy()
    flipped[c_in] = 1 - flipped[c_in]
    flipped[c_out] = 1 - flipped[c_out]
    train = np.concatenate([clean, c_in])
    return Canaries(X[train], flipped[train], (X[c_in], flipped[c_in]), (X[c_out], flipped[c_out]))


@pytest.fixture(scope="session")
def overfit_model(canaries: Canaries):
    """A deliberately overfit, non-private model: large MLP, full-batch Adam, trained to ~zero loss."""
    from sealinfer.privacy import train_baseline

    return train_baseline(big_mlp(), canaries.X_train, canaries.y_train, epochs=200, batch_size=len(canaries.X_train),
                          lr=3e-3, seed=SEED, torch_threads=1)


CANARY_DELTA = 1e-4


@pytest.fixture(scope="session")
def dp_canary_model(canaries: Canaries):
    """The same training set, trained with DP-SGD to epsilon=1."""
    from sealinfer.privacy import train_dp

    return train_dp(small_mlp(), canaries.X_train, canaries.y_train, target_epsilon=1.0, delta=CANARY_DELTA,
                    epochs=20, batch_size=50, lr=0.05, seed=SEED, torch_threads=1)
