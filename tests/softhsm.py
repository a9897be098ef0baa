"""Real SoftHSM2 tokens for tests, created in a temporary folder.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the PKCS#11 library is initialised, and python-pkcs11 loads
a library once per process, so every test in one pytest process shares ONE token folder: the
process-wide ``shared_softhsm()``. Tokens are added to it on demand (``.token(label)``); a token
added after the library was loaded is made visible with ``refresh_tokens()`` (which makes every
open provider reconnect on its next call).

Use from any test area::

    from sealinfer.tests.softhsm import softhsm, hsm_token  # noqa: F401  (pytest fixtures)

    def test_x(hsm_token):                       # a fresh, empty token for this test
        with hsm_token.provider() as hsm:        # -> Pkcs11Provider logged in to it
            kek_id = hsm.generate_kek()

or, outside fixtures, ``shared_softhsm().token("my-label")``. For a subprocess, pass
``env={**os.environ, **softhsm.env}`` (or ``softhsm_env(dir)`` for an independent folder).
If SoftHSM2 is not installed, the fixtures FAIL with instructions (they never skip).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sealinfer.runtime.keys.pkcs11 import SOFTHSM2_PATHS, Pkcs11Provider, loaded_library, refresh_tokens

SO_PIN = "so-pin-0000"
USER_PIN = "user-pin-1234"


class SoftHsmUnavailable(RuntimeError):
    """SoftHSM2 (library or softhsm2-util) is missing on this machine."""


def find_softhsm_module() -> str:
    """Path of libsofthsm2.so; raises ``SoftHsmUnavailable`` if it is absent.

    Deliberately ignores ``SEALINFER_PKCS11_MODULE`` (which may name a real HSM on a developer's
    machine): the tokens made here are SoftHSM2's. ``SEALINFER_TEST_SOFTHSM2`` overrides the path.
    """
    override = os.environ.get("SEALINFER_TEST_SOFTHSM2")
    candidates = (override,) if override else SOFTHSM2_PATHS
    path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    if not os.path.isfile(path):
        raise SoftHsmUnavailable(
            f"SoftHSM2 PKCS#11 module not found at {path} — the HSM tests need it. Install it "
            "(apt-get install softhsm2, as scripts/setup.sh does) or point SEALINFER_TEST_SOFTHSM2 at it."
        )
    if shutil.which("softhsm2-util") is None:
        raise SoftHsmUnavailable("softhsm2-util is not on PATH. Install softhsm2 (apt-get install softhsm2).")
    return path


def softhsm_env(tmp_dir: Path | str) -> dict[str, str]:
    """Write a SoftHSM2 config with its own token folder under ``tmp_dir``; return the env to use."""
    base = Path(tmp_dir)
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return {"SOFTHSM2_CONF": str(conf)}


def init_token(label: str, pin: str = USER_PIN, so_pin: str = SO_PIN, *, env: dict[str, str]) -> None:
    """Initialise a new token in the folder ``env`` (from ``softhsm_env``) points at."""
    result = subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util --init-token {label!r} failed: {result.stderr.strip()}")


@dataclass(frozen=True)
class SoftHsmToken:
    """One initialised token in the shared SoftHSM2 folder."""

    label: str
    pin: str
    so_pin: str
    module_path: str

    def provider(self, pin: str | None = None) -> Pkcs11Provider:
        """A provider for this token (with its PIN unless ``pin`` is given)."""
        return Pkcs11Provider(self.module_path, token_label=self.label, pin=self.pin if pin is None else pin)

    @contextmanager
    def raw_session(self) -> Iterator[Any]:
        """A python-pkcs11 session on the token that bypasses the provider (for attack-style tests).

        It does not log in: PKCS#11 login state is per process, so while a provider is logged in
        this session sees the token's private objects too, as any code in the process would.
        """
        session = loaded_library(self.module_path).get_token(token_label=self.label).open(rw=True)
        try:
            yield session
        finally:
            session.close()


class SoftHsm:
    """A SoftHSM2 token folder that this process's PKCS#11 library uses."""

    def __init__(self, base_dir: Path) -> None:
        self.module_path = find_softhsm_module()
        self.base_dir = base_dir
        self.env = softhsm_env(base_dir)
        self._tokens: dict[str, SoftHsmToken] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        previous = os.environ.get("SOFTHSM2_CONF")
        os.environ["SOFTHSM2_CONF"] = self.env["SOFTHSM2_CONF"]
        if previous != self.env["SOFTHSM2_CONF"]:
            refresh_tokens(self.module_path)  # in case the library was loaded with another config

    def token(self, label: str, pin: str = USER_PIN, so_pin: str = SO_PIN) -> SoftHsmToken:
        """The token labelled ``label``, initialised (and made visible) on first request."""
        with self._lock:
            existing = self._tokens.get(label)
            if existing is not None:
                if (existing.pin, existing.so_pin) != (pin, so_pin):
                    raise ValueError(f"token {label!r} already exists with other PINs")
                return existing
            init_token(label, pin, so_pin, env=self.env)
            refresh_tokens(self.module_path)
            made = self._tokens[label] = SoftHsmToken(label, pin, so_pin, self.module_path)
            return made

    def fresh_token(self, prefix: str = "t", pin: str = USER_PIN) -> SoftHsmToken:
        """A new, empty token with a unique label."""
        return self.token(f"{prefix}-{next(self._counter)}", pin=pin)

    @property
    def labels(self) -> list[str]:
        return sorted(self._tokens)


_SHARED: SoftHsm | None = None
_SHARED_LOCK = threading.Lock()


def shared_softhsm(base_dir: Path | None = None) -> SoftHsm:
    """The process-wide SoftHSM2 folder (created on first call; ``base_dir`` only matters then)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            if base_dir is None:
                base_dir = Path(tempfile.mkdtemp(prefix="sealinfer-softhsm-"))
                atexit.register(shutil.rmtree, base_dir, True)
            _SHARED = SoftHsm(base_dir)
        return _SHARED


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """The shared SoftHSM2 folder; FAILS (never skips) when SoftHSM2 is not installed."""
    try:
        return shared_softhsm(tmp_path_factory.mktemp("softhsm"))
    except SoftHsmUnavailable as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def hsm_token(softhsm: SoftHsm) -> Iterator[SoftHsmToken]:
    """A fresh, empty token (label ``t-N``, PIN ``USER_PIN``) for one test."""
    yield softhsm.fresh_token()
