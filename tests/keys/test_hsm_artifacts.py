"""Sealed artifacts with SoftHSM2 recipients: wrap inside the token, rotate to and from it, revoke it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.errors import HsmError, KeyNotFoundError, KeyRevokedError
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.rotation import rewrap_artifact
from sealinfer.tests import models
from sealinfer.tests.softhsm import SoftHsmToken

X = np.ones((3, 30), np.float32)


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "kr", "pw", scrypt_n=2**10)


def test_seal_for_an_hsm_kek_and_open_with_the_token_only(tmp_path: Path, ring: Keyring, hsm_token: SoftHsmToken):
    model = models.save(models.mlp(), tmp_path / "m.onnx")
    with hsm_token.provider() as hsm:
        kek = hsm.generate_kek("site-a")
        art = seal_model(
            model, tmp_path / "m.sealed", keyring=ring, providers=[hsm], options=SealOptions(recipients=[kek])
        )
        assert [(r.provider, r.kek_id) for r in art.recipients] == [("pkcs11", kek)]
        assert len(art.recipients[0].wrapped) == 40  # RFC 5649 output for a 32-byte data key
        out = Runtime(ring, providers=[hsm]).load(tmp_path / "m.sealed").run({"input": X})
    plain = Runtime(ring).load  # without the token, the keyring alone cannot open it
    with pytest.raises(KeyNotFoundError, match="None of this artifact's recipients"):
        plain(tmp_path / "m.sealed")
    assert out["probabilities"].shape == (3, 2)


def test_rotation_from_keyring_kek_to_hsm_kek_and_revocation(tmp_path: Path, ring: Keyring, hsm_token: SoftHsmToken):
    model = models.save(models.mlp(), tmp_path / "m.onnx")
    seal_model(model, tmp_path / "m.sealed", keyring=ring)
    old = ring.default_kek_id()
    with hsm_token.provider() as hsm:
        kek = hsm.generate_kek()
        rewrap_artifact(tmp_path / "m.sealed", ring, new_kek_id=kek, old_kek_id=old, providers=[hsm])
        runtime = Runtime(ring, providers=[hsm])
        before = runtime.load(tmp_path / "m.sealed").run({"input": X})["probabilities"]
        ring.revoke(old, "moved to the HSM")  # the artifact no longer depends on it
        assert np.array_equal(before, runtime.load(tmp_path / "m.sealed").run({"input": X})["probabilities"])
        ring.revoke(kek, "token decommissioned")  # HSM KEKs are revoked in the keyring
        with pytest.raises(KeyRevokedError, match="revoked"):
            runtime.load(tmp_path / "m.sealed")


def test_wrong_pin_and_missing_token_are_typed_errors(tmp_path: Path, ring: Keyring, hsm_token: SoftHsmToken):
    model = models.save(models.mlp(), tmp_path / "m.onnx")
    with hsm_token.provider() as hsm:
        kek = hsm.generate_kek()
        seal_model(model, tmp_path / "m.sealed", keyring=ring, providers=[hsm], options=SealOptions(recipients=[kek]))
    with pytest.raises(HsmError), hsm_token.provider(pin="000000") as bad:
        Runtime(ring, providers=[bad]).load(tmp_path / "m.sealed")
    from sealinfer.runtime.keys.pkcs11 import Pkcs11Provider

    with pytest.raises(HsmError, match="no-such-token"):
        missing = Pkcs11Provider(hsm_token.module_path, token_label="no-such-token", pin="1234")
        Runtime(ring, providers=[missing]).load(tmp_path / "m.sealed")
