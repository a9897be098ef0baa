"""PKCS#11 provider failures: each is a typed SealinferError that says what to do, and fails closed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from sealinfer.runtime.errors import (
    ConfigurationError,
    HsmError,
    KeyNotFoundError,
    SealinferError,
    UnwrapError,
)
from sealinfer.runtime.keys.base import WrappedKey
from sealinfer.runtime.keys.pkcs11 import HsmPinError, Pkcs11Provider
from sealinfer.tests.softhsm import SoftHsm, SoftHsmToken

pytestmark = pytest.mark.hsm


def _dek(seed: int) -> bytes:
    return random.Random(seed).randbytes(32)


# --- PIN ------------------------------------------------------------------------------------------


def test_wrong_pin_is_refused_by_the_token(hsm_token: SoftHsmToken) -> None:
    wrong = "not-the-pin-9876"
    provider = hsm_token.provider(pin=wrong)
    with pytest.raises(HsmPinError) as caught:
        provider.list_keks()
    assert isinstance(caught.value, HsmError)
    assert hsm_token.label in str(caught.value)
    assert "SEALINFER_HSM_PIN" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(provider)
    with hsm_token.provider() as right:  # the failed attempt left nothing behind
        assert right.list_keks() == []


def test_wrong_pin_is_refused_while_the_token_is_logged_in(hsm_token: SoftHsmToken) -> None:
    # The process is already logged in (PKCS#11 login is per process): the PIN must still match.
    with hsm_token.provider() as right:
        kek_id = right.generate_kek()
        wrapped = right.wrap_data_key(kek_id, _dek(1))
        with pytest.raises(HsmPinError):
            hsm_token.provider(pin="wrong-pin").unwrap_data_key(wrapped)
        assert right.unwrap_data_key(wrapped) == _dek(1)


def test_missing_pin_is_a_typed_error(hsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALINFER_HSM_PIN", raising=False)
    provider = Pkcs11Provider(hsm_token.module_path, token_label=hsm_token.label)
    with pytest.raises(HsmPinError, match="SEALINFER_HSM_PIN"):
        provider.list_keks()


def test_pin_and_module_from_the_environment(hsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALINFER_HSM_PIN", hsm_token.pin)
    monkeypatch.setenv("SEALINFER_PKCS11_MODULE", hsm_token.module_path)
    with Pkcs11Provider(token_label=hsm_token.label) as provider:
        assert provider.module_path == hsm_token.module_path
        kek_id = provider.generate_kek()
        assert provider.unwrap_data_key(provider.wrap_data_key(kek_id, _dek(2))) == _dek(2)


# --- token and module -----------------------------------------------------------------------------


def test_unknown_token_label_lists_the_available_tokens(softhsm: SoftHsm) -> None:
    present = softhsm.token("listed-token")
    provider = Pkcs11Provider(present.module_path, token_label="no-such-token", pin=present.pin)
    with pytest.raises(HsmError) as caught:
        provider.list_keks()
    assert not isinstance(caught.value, HsmPinError)
    message = str(caught.value)
    assert "'no-such-token'" in message
    assert "listed-token" in message  # names what does exist
    assert "softhsm2-util --init-token" in message


def test_missing_module_is_a_typed_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "libpkcs11.so")
    provider = Pkcs11Provider(missing, token_label="x", pin="1234")
    with pytest.raises(HsmError) as caught:
        provider.generate_kek()
    message = str(caught.value)
    assert f"PKCS#11 module not found at {missing}" in message
    assert "softhsm2" in message and "SEALINFER_PKCS11_MODULE" in message


def test_unloadable_module_is_a_typed_error(tmp_path: Path) -> None:
    not_a_library = tmp_path / "libfake.so"
    not_a_library.write_bytes(b"this is not an ELF shared object")
    with pytest.raises(HsmError, match="could not be loaded"):
        Pkcs11Provider(str(not_a_library), token_label="x", pin="1234").list_keks()


def test_missing_module_from_the_environment_in_a_fresh_process(tmp_path: Path) -> None:
    # A fresh interpreter: nothing loaded, the module path comes from SEALINFER_PKCS11_MODULE alone.
    script = textwrap.dedent(
        """
        import json
        from sealinfer.runtime.errors import SealinferError
        from sealinfer.runtime.keys.pkcs11 import Pkcs11Provider
        try:
            Pkcs11Provider(token_label="t").default_kek_id()
        except SealinferError as exc:
            print(json.dumps({"type": type(exc).__name__, "code": exc.code, "message": str(exc)}))
        """
    )
    missing = str(tmp_path / "libmissing.so")
    env = {**os.environ, "SEALINFER_PKCS11_MODULE": missing, "SEALINFER_HSM_PIN": "1234"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result["type"] == "HsmError" and result["code"] == "hsm_error"
    assert missing in result["message"] and "SEALINFER_PKCS11_MODULE" in result["message"]


# --- keys and wrapped bytes -----------------------------------------------------------------------


def test_unknown_kek_is_key_not_found(hsm_token: SoftHsmToken) -> None:
    with hsm_token.provider() as hsm:
        real = hsm.generate_kek("real")
        wrapped = hsm.wrap_data_key(real, _dek(3))
        for absent in ("pkcs11:absent", "keyring:kek-1", "pkcs11:", "pkcs11:bad label"):
            with pytest.raises(KeyNotFoundError) as caught:
                hsm.wrap_data_key(absent, _dek(3))
            assert "pkcs11:real" in str(caught.value)  # says which KEKs the token does hold
            with pytest.raises(KeyNotFoundError):
                hsm.unwrap_data_key(WrappedKey("pkcs11", absent, wrapped.wrapped))
        with pytest.raises(KeyNotFoundError, match="keyring"):
            hsm.unwrap_data_key(WrappedKey("keyring", real, wrapped.wrapped))


def test_tampered_wrapped_bytes_fail_closed(hsm_token: SoftHsmToken) -> None:
    rng = random.Random(4)
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek()
        good = hsm.wrap_data_key(kek_id, _dek(4)).wrapped
        variants = [good[:i] + bytes([good[i] ^ (1 << rng.randrange(8))]) + good[i + 1:] for i in range(len(good))]
        variants += [good[:n] for n in (0, 1, 8, 16, 32, 39)]
        variants += [good + b"\x00" * 8, good + good, rng.randbytes(40), rng.randbytes(48)]
        for bad in variants:
            with pytest.raises(UnwrapError):
                hsm.unwrap_data_key(WrappedKey("pkcs11", kek_id, bad))
        with pytest.raises(UnwrapError, match="algorithm"):
            hsm.unwrap_data_key(WrappedKey("pkcs11", kek_id, good, algorithm="AES-KW"))
        # The failures left the provider usable and the token unchanged.
        assert hsm.unwrap_data_key(WrappedKey("pkcs11", kek_id, good)) == _dek(4)


def test_a_wrapped_key_of_the_wrong_size_is_rejected(hsm_token: SoftHsmToken) -> None:
    # A valid RFC 5649 blob holding 16 bytes (made with a test-only session key in the token) is
    # authentic but not a data key: refused rather than handed out.
    with hsm_token.provider() as hsm:
        kek_id = hsm.generate_kek()
        with pytest.raises(ConfigurationError, match="32 bytes"):
            hsm.wrap_data_key(kek_id, _dek(5)[:16])
        with pytest.raises(ConfigurationError):
            hsm.wrap_data_key(kek_id, "not bytes")  # type: ignore[arg-type]
        with hsm_token.raw_session() as session:
            (kek,) = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: kek_id[7:]})
            short = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: _dek(6)[:16], Attribute.TOKEN: False, Attribute.EXTRACTABLE: True,
            })
            blob = kek.wrap_key(short, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            short.destroy()
        with pytest.raises(UnwrapError, match="16 bytes, not 32"):
            hsm.unwrap_data_key(WrappedKey("pkcs11", kek_id, blob))


def test_every_failure_is_a_sealinfer_error_with_a_hint(hsm_token: SoftHsmToken, tmp_path: Path) -> None:
    cases = [
        lambda: hsm_token.provider(pin="bad").list_keks(),
        lambda: Pkcs11Provider(hsm_token.module_path, token_label="absent-token", pin="x").list_keks(),
        lambda: Pkcs11Provider(str(tmp_path / "none.so"), pin="x").list_keks(),
        lambda: hsm_token.provider().default_kek_id(),
    ]
    for case in cases:
        with pytest.raises(SealinferError) as caught:
            case()
        assert caught.value.hint, f"{type(caught.value).__name__} has no hint"
