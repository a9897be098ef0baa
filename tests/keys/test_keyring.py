"""The keyring folder: passphrase protection, permissions, tamper detection, rotation and revocation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from sealinfer.runtime import Runtime, SealOptions, seal_model
from sealinfer.runtime.artifact import SealedArtifact
from sealinfer.runtime.errors import (
    KeyNotFoundError,
    KeyRevokedError,
    KeyringError,
    UntrustedSignerError,
    WrongPassphraseError,
)
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.rotation import rewrap_artifact
from sealinfer.tests import models

PASS = "s3cret passphrase"
FAST = 2**10


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "kr", PASS, scrypt_n=FAST)


@pytest.fixture
def sealed(tmp_path: Path, ring: Keyring) -> Path:
    path = models.save(models.mlp(), tmp_path / "m.onnx")
    seal_model(path, tmp_path / "m.sealed", keyring=ring)
    return tmp_path / "m.sealed"


X = np.ones((2, 30), np.float32)


def test_files_are_private_and_hold_no_plaintext_keys(tmp_path: Path, ring: Keyring):
    assert stat.S_IMODE((tmp_path / "kr").stat().st_mode) == 0o700
    files = [tmp_path / "kr" / "keyring.json", *(tmp_path / "kr" / "keys").iterdir()]
    assert len(files) == 3  # metadata + one KEK + one signing key
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    signer = ring.signer()
    secret = ring._secret(ring.default_kek_id())
    blob = b"".join(f.read_bytes() for f in files)
    assert secret not in blob
    assert signer._private_key.private_bytes_raw() not in blob


def test_wrong_or_missing_passphrase(tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(WrongPassphraseError, match="Wrong passphrase"):
        Keyring.open(tmp_path / "kr", "not it")
    monkeypatch.delenv("SEALINFER_PASSPHRASE", raising=False)
    with pytest.raises(WrongPassphraseError, match="SEALINFER_PASSPHRASE"):
        Keyring.open(tmp_path / "kr")
    monkeypatch.setenv("SEALINFER_PASSPHRASE", PASS)
    assert Keyring.open(tmp_path / "kr").default_kek_id() == ring.default_kek_id()
    with pytest.raises(KeyringError, match="No keyring found"):
        Keyring.open(tmp_path / "nowhere", PASS)


def test_loose_permissions_are_refused(tmp_path: Path, ring: Keyring):
    os.chmod(tmp_path / "kr" / "keyring.json", 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.open(tmp_path / "kr", PASS)


def test_editing_the_metadata_to_unrevoke_a_key_is_detected(tmp_path: Path, ring: Keyring):
    kek = ring.default_kek_id()
    ring.revoke(kek, "compromised")
    meta_path = tmp_path / "kr" / "keyring.json"
    meta = json.loads(meta_path.read_text())
    for rec in meta["keys"]:
        if rec["id"] == kek:
            rec["status"] = "active"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(KeyringError, match="modified outside sealinfer"):
        Keyring.open(tmp_path / "kr", PASS)


def test_swapped_key_files_are_detected(tmp_path: Path, ring: Keyring):
    kek = ring.default_kek_id()
    other = ring.generate("kek").id
    keys = tmp_path / "kr" / "keys"
    (keys / f"{kek}.key").write_bytes((keys / f"{other}.key").read_bytes())
    fresh = Keyring.open(tmp_path / "kr", PASS)
    with pytest.raises(KeyringError, match="corrupt or belongs to another key"):
        fresh.wrap_data_key(kek, os.urandom(32))


def test_rotation_rewraps_without_reencrypting_the_payload(tmp_path: Path, ring: Keyring, sealed: Path):
    before = SealedArtifact.open(sealed)
    payload_before = sealed.read_bytes()[before.payload_offset :]
    old = ring.default_kek_id()
    new = ring.rotate(old)
    assert new.rotated_from == old and ring.key_info(old).status == "retired"
    assert ring.default_kek_id() == new.id
    rewrap_artifact(sealed, ring, new_kek_id=new.id, old_kek_id=old)
    after = SealedArtifact.open(sealed)
    assert [r.kek_id for r in after.recipients] == [new.id]
    assert sealed.read_bytes()[after.payload_offset :] == payload_before  # ciphertext untouched
    assert after.signature == before.signature  # same signed manifest
    # Retiring is not revoking: the old key still exists, but the artifact now needs only the new one.
    ring.revoke(old, "rotated out")
    assert Runtime(ring).load(sealed).run({"input": X})["probabilities"].shape == (2, 2)


def test_revoked_kek_refuses_to_open(ring: Keyring, sealed: Path):
    ring.revoke(ring.default_kek_id(), "laptop stolen")
    with pytest.raises(KeyRevokedError, match="revoked"):
        Runtime(ring).load(sealed)


def test_revoked_signer_refuses_to_open(ring: Keyring, sealed: Path):
    ring.revoke(ring.active_key_id("signing"), "key leaked")
    with pytest.raises(KeyRevokedError, match="Signer key .* has been revoked"):
        Runtime(ring).load(sealed)


def test_other_sites_signers_must_be_trusted(tmp_path: Path, ring: Keyring, sealed: Path):
    site_b = Keyring.create(tmp_path / "site-b", PASS, scrypt_n=FAST)
    path = models.save(models.mlp(seed=3), tmp_path / "b.onnx")
    seal_model(path, tmp_path / "b.sealed", keyring=site_b, options=SealOptions())
    with pytest.raises(UntrustedSignerError, match="not in the trusted-signers list"):
        Runtime(ring).load(tmp_path / "b.sealed")
    signer_b = site_b.active_key_id("signing")
    ring.trust(signer_b, site_b.public_key(signer_b))
    # Signature now verifies, but site A holds none of the artifact's KEKs.
    with pytest.raises(KeyNotFoundError, match="None of this artifact's recipients"):
        Runtime(ring).load(tmp_path / "b.sealed")
    ring.revoke(signer_b, "site B decommissioned")
    with pytest.raises(KeyRevokedError):
        Runtime(ring).load(tmp_path / "b.sealed")


def test_secrets_and_key_kinds(ring: Keyring):
    wid, wkey = ring.secret("watermark")
    assert ring.secret("watermark") == (wid, wkey) and len(wkey) == 32
    aid, akey = ring.secret("audit-hmac")
    assert aid != wid and akey != wkey
    with pytest.raises(KeyringError):
        ring.secret("kek")
    with pytest.raises(KeyNotFoundError):
        ring.wrap_data_key(ring.active_key_id("signing"), os.urandom(32))
    retired = ring.default_kek_id()
    ring.rotate(retired)
    with pytest.raises(KeyRevokedError, match="retired"):
        ring.wrap_data_key(retired, os.urandom(32))


def test_a_keyring_is_not_created_in_a_folder_that_holds_other_files(tmp_path: Path):
    from sealinfer.runtime.errors import KeyringError

    project = tmp_path / "project"
    project.mkdir(mode=0o755)
    (project / "notes.txt").write_text("not a key")
    with pytest.raises(KeyringError, match="already holds other files") as info:
        Keyring.create(project, "pw", scrypt_n=2**10)
    assert info.value.hint and stat.S_IMODE(project.stat().st_mode) == 0o755  # left as it was
    assert Keyring.create(tmp_path / "empty", "pw", scrypt_n=2**10).path == tmp_path / "empty"
