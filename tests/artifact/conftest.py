"""Fixtures for sealed-artifact tests: a keyring (cheap scrypt for speed) and models on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.tests import models

PASSPHRASE = "correct horse battery staple"
FAST_SCRYPT = 2**10  # tests only; the product default is 2**15


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring", PASSPHRASE, scrypt_n=FAST_SCRYPT)


@pytest.fixture(scope="module")
def module_keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("kr") / "keyring", PASSPHRASE, scrypt_n=FAST_SCRYPT)


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return models.save(models.mlp(), tmp_path / "mlp.onnx")
