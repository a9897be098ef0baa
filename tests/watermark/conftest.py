"""Session-scoped models so each is trained (and marked) once for the whole watermark suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sealinfer import watermark as wm
from sealinfer.tests.watermark import builders

KEY = bytes.fromhex("5e" * 16 + "a1" * 16)
PAYLOAD = b"owner:st-mary-hospital|site:07"  # 30 bytes: owner id + site fingerprint


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)  # the CI machine has 2 shared cores


@pytest.fixture(scope="session")
def built() -> dict[str, builders.Built]:
    return {name: fn(seed=0) for name, fn in builders.BUILDERS.items()}


@pytest.fixture(scope="session")
def marked(built) -> dict[str, tuple]:
    out = {}
    for name, b in built.items():
        out[name] = wm.embed(b.model, KEY, PAYLOAD, probe_inputs={"x": b.calibration})
    return out


@pytest.fixture(scope="session")
def unmarked_others() -> list:
    """Independently trained (different seeds) unmarked models of all three kinds."""
    return [builders.breast_cancer_mlp(seed=s).model for s in (1, 2, 3)] + [
        builders.digits_cnn(seed=1).model, builders.digits_transformer(seed=1).model]


def rand_keys(n: int, seed: int) -> list[bytes]:
    g = np.random.default_rng(seed)
    return [g.bytes(32) for _ in range(n)]
