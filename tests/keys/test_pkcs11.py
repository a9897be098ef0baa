"""PKCS#11 provider against real SoftHSM2 tokens: KEK properties, wrapping, several KEKs and tokens."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11x

from sealinfer.runtime.errors import ConfigurationError, HsmError, KeyNotFoundError, UnwrapError
from sealinfer.runtime.keys.base import WRAP_ALGORITHM, KeyProvider, WrappedKey
from sealinfer.runtime.keys.pkcs11 import HsmPinError, Pkcs11Provider, loaded_library, refresh_tokens
from sealinfer.tests.softhsm import SoftHsm, SoftHsmToken, find_softhsm_module, init_token, softhsm_env

pytestmark = pytest.mark.hsm


def _dek(seed: int) -> bytes:
    return random.Random(seed).randbytes(32)


def _kek_object(session: Any, kek_id: str) -> Any:
    (key,) = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: kek_id[7:]})
    return key


def test_provider_implements_the_interface(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        assert isinstance(hsm, KeyProvider)
        assert hsm.name == "pkcs11"
        assert hsm_token.pin not in repr(hsm)


def test_kek_is_generated_in_the_token_sensitive_and_non_extractable(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek("kek-a")
        assert kek_id == "pkcs11:kek-a"
        attrs = hsm.kek_attributes(kek_id)
        assert attrs["TOKEN"] is True and attrs["PRIVATE"] is True
        assert attrs["SENSITIVE"] is True and attrs["ALWAYS_SENSITIVE"] is True
        assert attrs["EXTRACTABLE"] is False and attrs["NEVER_EXTRACTABLE"] is True
        assert attrs["LOCAL"] is True  # generated inside the token, not imported
        assert attrs["WRAP"] is True and attrs["UNWRAP"] is True
        assert attrs["ENCRYPT"] is False and attrs["DECRYPT"] is False
        assert attrs["VALUE_LEN"] == 32

        with hsm_token.raw_session() as session:
            kek = _kek_object(session, kek_id)
            with pytest.raises(p11x.AttributeSensitive):
                kek[Attribute.VALUE]
            # Nor can it be smuggled out by wrapping it under a key whose value we know.
            known = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: _dek(1), Attribute.TOKEN: False, Attribute.WRAP: True,
            })
            with pytest.raises(p11x.KeyUnextractable):
                known.wrap_key(kek, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            # And it cannot be made extractable afterwards.
            with pytest.raises(p11x.PKCS11Error):
                kek[Attribute.EXTRACTABLE] = True
            known.destroy()
        assert hsm.kek_attributes(kek_id)["EXTRACTABLE"] is False


def test_wrap_unwrap_round_trip(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek()
        for seed in range(5):
            dek = _dek(seed)
            wrapped = hsm.wrap_data_key(kek_id, dek)
            assert wrapped.provider == "pkcs11"
            assert wrapped.kek_id == kek_id
            assert wrapped.algorithm == WRAP_ALGORITHM
            assert dek not in wrapped.wrapped
            assert hsm.unwrap_data_key(wrapped) == dek
            # Through the header's serialised form too.
            assert hsm.unwrap_data_key(WrappedKey.from_dict(wrapped.to_dict())) == dek


def test_wrap_leaves_no_data_key_object_in_the_token(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek()
        with hsm_token.raw_session() as session:
            before = len(list(session.get_objects()))
            for seed in range(3):
                hsm.unwrap_data_key(hsm.wrap_data_key(kek_id, _dek(seed)))
            assert len(list(session.get_objects())) == before == 1  # just the KEK


def test_wrapped_bytes_are_rfc5649(hsm_token: SoftHsmToken) -> None:
    dek = _dek(7)
    with hsm_token.provider() as hsm:
        kek_a, kek_b = hsm.generate_kek("a"), hsm.generate_kek("b")
        wrapped = hsm.wrap_data_key(kek_a, dek)
        assert len(wrapped.wrapped) == 40  # 32-byte key + 8-byte RFC 5649 integrity block
        assert hsm.wrap_data_key(kek_a, dek).wrapped == wrapped.wrapped  # KWP is deterministic
        assert hsm.wrap_data_key(kek_b, dek).wrapped != wrapped.wrapped

        with hsm_token.raw_session() as session:
            # The provider's bytes unwrap with CKM_AES_KEY_WRAP_PAD and nothing else ...
            plain = _kek_object(session, kek_a).unwrap_key(
                ObjectClass.SECRET_KEY, KeyType.AES, wrapped.wrapped, mechanism=Mechanism.AES_KEY_WRAP_PAD,
                store=False, template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            assert plain[Attribute.VALUE] == dek
            plain.destroy()
            with pytest.raises(p11x.PKCS11Error):
                _kek_object(session, kek_a).unwrap_key(
                    ObjectClass.SECRET_KEY, KeyType.AES, wrapped.wrapped, mechanism=Mechanism.AES_KEY_WRAP,
                    store=False, template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
                )
            # ... and that mechanism in this token is byte-for-byte RFC 5649 as `cryptography` does it,
            # so a keyring-wrapped and an HSM-wrapped data key share one format.
            kek_value = _dek(8)
            known = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: kek_value, Attribute.TOKEN: False, Attribute.WRAP: True,
            })
            target = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: dek, Attribute.TOKEN: False, Attribute.EXTRACTABLE: True,
            })
            token_bytes = known.wrap_key(target, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            assert token_bytes == aes_key_wrap_with_padding(kek_value, dek)
            known.destroy()
            target.destroy()

        # Bytes wrapped under KEK a, presented as if wrapped under KEK b, fail the integrity check.
        with pytest.raises(UnwrapError):
            hsm.unwrap_data_key(WrappedKey("pkcs11", kek_b, wrapped.wrapped))


def test_several_keks_newest_is_default(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        with pytest.raises(KeyNotFoundError, match="generate"):
            hsm.default_kek_id()
        assert hsm.list_keks() == []
        ids = [hsm.generate_kek(label) for label in ("zz-first", "aa-second", "mm-third")]
        auto = hsm.generate_kek()
        assert auto.startswith("pkcs11:kek-") and auto not in ids
        assert hsm.list_keks() == [*ids, auto]  # creation order, not label order
        assert hsm.default_kek_id() == auto
        wraps = {kek: hsm.wrap_data_key(kek, _dek(3)) for kek in hsm.list_keks()}
        assert len({w.wrapped for w in wraps.values()}) == 4
        for kek, wrapped in wraps.items():
            assert hsm.has_kek(kek)
            assert hsm.unwrap_data_key(wrapped) == _dek(3)
        assert not hsm.has_kek("pkcs11:absent")
        assert not hsm.has_kek("keyring:kek-1")


def test_kek_label_rules(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        hsm.generate_kek("dup")
        with pytest.raises(ConfigurationError, match="already exists"):
            hsm.generate_kek("dup")
        for bad in ("", "has space", "-lead", "x" * 65, "semi;colon"):
            with pytest.raises(ConfigurationError, match="Invalid KEK label"):
                hsm.generate_kek(bad)
        assert hsm.list_keks() == ["pkcs11:dup"]


def test_keks_persist_in_the_token(hsm_token: SoftHsmToken) -> None:
    dek = _dek(11)
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek("persist")
        wrapped = hsm.wrap_data_key(kek_id, dek)
    refresh_tokens(hsm_token.module_path)  # finalise + initialise the module: only token objects survive
    with hsm_token.provider() as again:
        assert again.list_keks() == [kek_id]
        assert again.unwrap_data_key(wrapped) == dek


def test_open_provider_survives_module_reinitialisation(hsm_token: SoftHsmToken) -> None:
    hsm = hsm_token.provider()
    kek_id = hsm.generate_kek()
    refresh_tokens(hsm_token.module_path)  # closes every session under the provider's feet
    assert hsm.unwrap_data_key(hsm.wrap_data_key(kek_id, _dek(12))) == _dek(12)
    hsm.close()


def test_several_tokens_are_isolated(softhsm: SoftHsm) -> None:
    one, two = softhsm.fresh_token("iso"), softhsm.fresh_token("iso")
    with one.provider() as a, two.provider() as b:
        kek_a = a.generate_kek("same-label")
        kek_b = b.generate_kek("same-label")
        assert kek_a == kek_b  # same label, two different keys in two tokens
        assert a.list_keks() == [kek_a] and b.list_keks() == [kek_b]
        a.generate_kek("only-in-a")
        assert not b.has_kek("pkcs11:only-in-a")
        wrapped = a.wrap_data_key(kek_a, _dek(13))
        assert a.unwrap_data_key(wrapped) == _dek(13)
        with pytest.raises(UnwrapError):
            b.unwrap_data_key(wrapped)
        with pytest.raises(KeyNotFoundError, match="only-in-a"):
            b.wrap_data_key("pkcs11:only-in-a", _dek(13))


def test_two_providers_share_one_token(hsm_token: SoftHsmToken) -> None:
    first, second = hsm_token.provider(), hsm_token.provider()
    kek_id = first.generate_kek()
    wrapped = first.wrap_data_key(kek_id, _dek(14))
    assert second.unwrap_data_key(wrapped) == _dek(14)
    first.close()  # the other provider keeps its login
    assert second.unwrap_data_key(wrapped) == _dek(14)
    second.close()
    with pytest.raises(HsmError, match="closed"):
        second.list_keks()
    with hsm_token.provider() as third:  # logs in again after the last one closed
        assert third.unwrap_data_key(wrapped) == _dek(14)


def test_kek_made_outside_sealinfer_is_listed_but_not_preferred(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        ours = hsm.generate_kek("ours")
        with hsm_token.raw_session() as session:
            session.generate_key(
                KeyType.AES, 256, label="admin-made", id=b"\x01", store=True,
                template={Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.EXTRACTABLE: False},
            )
        assert hsm.list_keks() == ["pkcs11:admin-made", ours]
        assert hsm.default_kek_id() == ours
        assert hsm.unwrap_data_key(hsm.wrap_data_key("pkcs11:admin-made", _dek(15))) == _dek(15)


_CHILD = """
import base64, json, sys
from sealinfer.runtime.keys.base import WrappedKey
from sealinfer.runtime.keys.pkcs11 import Pkcs11Provider
step, label = sys.argv[1], sys.argv[2]
with Pkcs11Provider(token_label=label, pin="child-pin-1") as hsm:
    if step == "seal":
        kek_id = hsm.generate_kek("site-kek")
        print(json.dumps(hsm.wrap_data_key(kek_id, bytes(range(32))).to_dict()))
    else:
        wrapped = WrappedKey.from_dict(json.loads(sys.stdin.read()))
        print(json.dumps({"ok": hsm.unwrap_data_key(wrapped) == bytes(range(32)), "keks": hsm.list_keks()}))
"""


def test_kek_survives_across_processes_with_their_own_config(tmp_path: Path) -> None:
    # Independent of the shared folder: two fresh interpreters, one private SoftHSM2 folder.
    env = {**os.environ, **softhsm_env(tmp_path), "SEALINFER_PKCS11_MODULE": find_softhsm_module()}
    init_token("site", pin="child-pin-1", so_pin="child-so-1", env=env)

    def child(step: str, stdin: str = "") -> str:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, step, "site"], input=stdin, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    sealed = child("seal")
    assert json.loads(sealed)["kek_id"] == "pkcs11:site-kek"
    assert json.loads(child("open", sealed)) == {"ok": True, "keks": ["pkcs11:site-kek"]}


# python-pkcs11's SearchIter.__del__ re-raises the dead handle's error as "unraisable": harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_provider_recovers_when_its_session_dies_behind_its_back(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm, hsm_token.provider() as other:
        kek_id = hsm.generate_kek()
        wrapped = hsm.wrap_data_key(kek_id, _dek(16))
        assert other.unwrap_data_key(wrapped) == _dek(16)
        loaded_library(hsm_token.module_path).reinitialize()  # not via refresh_tokens: handles die unannounced
        assert hsm.unwrap_data_key(wrapped) == _dek(16)  # reconnects and logs in again
        assert other.unwrap_data_key(wrapped) == _dek(16)  # re-checks its PIN against the new login
    with pytest.raises(HsmPinError):
        hsm_token.provider(pin="wrong").list_keks()


def test_one_library_through_two_paths(hsm_token: SoftHsmToken, tmp_path: Path) -> None:
    alias = tmp_path / "alias-libsofthsm2.so"
    alias.symlink_to(hsm_token.module_path)
    with hsm_token.provider() as direct:
        kek_id = direct.generate_kek()
        wrapped = direct.wrap_data_key(kek_id, _dek(17))
        with Pkcs11Provider(str(alias), token_label=hsm_token.label, pin=hsm_token.pin) as via_alias:
            assert via_alias.unwrap_data_key(wrapped) == _dek(17)
