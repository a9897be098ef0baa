"""PKCS#11 key provider: KEKs live in an HSM token and never leave it.

The KEK is an AES-256 token object generated inside the token (SENSITIVE, non-EXTRACTABLE, usable
only to WRAP/UNWRAP). A data key is imported as a short-lived session object, wrapped inside the
token with CKM_AES_KEY_WRAP_PAD (RFC 5649, the same bytes the local keyring produces with
``cryptography``), and the session object is destroyed at once. Unwrapping goes the other way.

Why one lock per *module* rather than per provider: python-pkcs11 calls ``C_Initialize(NULL)``,
which tells the module that the application will not call it from several threads at once
(SoftHSM2 then does no locking of its own: without this lock, concurrent wraps crash it). So every
call into a loaded module is serialised here.

Why providers share one logged-in session per token: PKCS#11 login state belongs to the whole
process, so a second ``C_Login`` on a token fails with CKR_USER_ALREADY_LOGGED_IN. A provider that
arrives later must still prove it knows the PIN: it is compared (constant time, via a per-process
HMAC key) with the PIN the token accepted.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11x

from sealinfer.runtime.errors import ConfigurationError, HsmError, KeyNotFoundError, UnwrapError
from sealinfer.runtime.keys.base import DATA_KEY_BYTES, WRAP_ALGORITHM, KeyProvider, WrappedKey
from sealinfer.runtime.keys.mac import hmac_sha256

__all__ = [
    "DEFAULT_TOKEN_LABEL",
    "HsmPinError",
    "KEK_ID_PREFIX",
    "MODULE_ENV",
    "PIN_ENV",
    "Pkcs11Provider",
    "SOFTHSM2_PATHS",
    "default_module_path",
    "loaded_library",
    "refresh_tokens",
]

T = TypeVar("T")

MODULE_ENV = "SEALINFER_PKCS11_MODULE"
PIN_ENV = "SEALINFER_HSM_PIN"
DEFAULT_TOKEN_LABEL = "sealinfer"
KEK_ID_PREFIX = "pkcs11:"
_KEK_BITS = 256
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# CKA_ID of KEKs made here: 8-byte big-endian creation time (ns) + 8 random bytes, so that the
# newest KEK is simply the largest id (PKCS#11 keeps no creation time of its own).
_ID_BYTES = 16

# Where distributions put SoftHSM2 (the default module when SEALINFER_PKCS11_MODULE is unset).
SOFTHSM2_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# A KEK can only wrap and unwrap, and its value can never be read or exported.
_KEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: False, Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False, Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.DERIVE: False,
}
# A data key inside the token only ever exists as a session object, usable for nothing, for one call.
# EXTRACTABLE because wrapping it requires that (and reading it back after an unwrap).
_DEK_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.ENCRYPT: False, Attribute.DECRYPT: False,
    Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.VERIFY: False,
    Attribute.DERIVE: False,
}

# Errors that mean "the session we hold is gone" (module re-initialised, token removed): reopen once.
_STALE_SESSION = (
    p11x.SessionHandleInvalid,
    p11x.SessionClosed,
    p11x.DeviceRemoved,
    p11x.TokenNotPresent,
    p11x.UserNotLoggedIn,
)
_BAD_PIN = (p11x.PinIncorrect, p11x.PinInvalid, p11x.PinLenRange, p11x.PinExpired)
# What tokens answer when RFC 5649's integrity check fails (SoftHSM2 says CKR_GENERAL_ERROR).
_UNWRAP_FAILED = (
    p11x.GeneralError,
    p11x.WrappedKeyInvalid,
    p11x.WrappedKeyLenRange,
    p11x.EncryptedDataInvalid,
    p11x.EncryptedDataLenRange,
    p11x.DataInvalid,
    p11x.DataLenRange,
)


class HsmPinError(HsmError):
    """The token refused the user PIN (wrong, missing, expired or locked)."""

    code = "hsm_pin"


def default_module_path() -> str:
    """``$SEALINFER_PKCS11_MODULE``, else the first SoftHSM2 library found on this system."""
    configured = os.environ.get(MODULE_ENV)
    if configured:
        return configured
    for candidate in SOFTHSM2_PATHS:
        if os.path.exists(candidate):
            return candidate
    return SOFTHSM2_PATHS[0]  # named in the "not found" error


# --- loaded modules, shared by every provider in the process -----------------------------------


@dataclass(eq=False)
class _Connection:
    """The one logged-in session this process holds on one token."""

    serial: bytes
    session: Any
    pin_mac: bytes
    users: int = 0


@dataclass(eq=False)
class _Module:
    """A loaded PKCS#11 library and the logged-in sessions this process holds on its tokens.

    Callers hold ``lock`` around every method and every use of a session. A provider keeps a
    reference to its ``_Connection`` and trusts it only while ``connections`` still holds that very
    object: identity, not the token serial, because a dead session's handle number may be reused
    for another token's session.
    """

    path: str
    lib: Any
    lock: threading.RLock = field(default_factory=threading.RLock)
    connections: dict[bytes, _Connection] = field(default_factory=dict)

    def is_live(self, conn: _Connection) -> bool:
        return self.connections.get(conn.serial) is conn

    def acquire(self, token: Any, pin: str) -> _Connection:
        mac = _pin_mac(pin)
        conn = self.connections.get(token.serial)
        if conn is not None:
            if not hmac.compare_digest(conn.pin_mac, mac):
                raise _pin_error(token.label)
        else:
            conn = self.connections[token.serial] = _Connection(token.serial, _login(token, pin), mac)
        conn.users += 1
        return conn

    def release(self, conn: _Connection) -> None:
        if not self.is_live(conn):
            return
        conn.users -= 1
        if conn.users <= 0:
            del self.connections[conn.serial]
            try:
                conn.session.close()  # the last session on a token also ends its login
            except p11x.PKCS11Error:
                pass  # gone either way

    def discard(self, conn: _Connection) -> None:
        """Drop a connection whose session died (its handle must never be used again)."""
        if self.is_live(conn):
            del self.connections[conn.serial]


def _login(token: Any, pin: str) -> Any:
    # python-pkcs11 opens the session before C_Login; on a refused PIN that unauthenticated
    # session stays open (the library offers no handle to close it). It grants nothing.
    label = token.label
    try:
        return token.open(rw=True, user_pin=pin)
    except _BAD_PIN:
        raise _pin_error(label) from None
    except p11x.UserPinNotInitialized:
        raise HsmPinError(
            f"Token {label!r} has no user PIN set.",
            hint="Initialise it (softhsm2-util --init-token ... --pin PIN, or your HSM's tool).",
        ) from None
    except p11x.PinLocked:
        raise HsmPinError(
            f"The user PIN of token {label!r} is locked.", hint="Ask the HSM's security officer to reset it."
        ) from None
    except p11x.UserAlreadyLoggedIn:
        raise HsmError(
            f"Token {label!r} is already logged in by other code in this process.",
            hint="Use sealinfer's Pkcs11Provider for every use of this token in the process.",
        ) from None
    except p11x.PKCS11Error as exc:
        raise HsmError(
            f"Could not open a session on token {label!r} ({type(exc).__name__}).",
            hint="Check that the token is present and initialised.",
        ) from None


# Keyed by real path: one library reached through two names (a symlink) is still one library in
# the process, and initialising it twice fails with CKR_CRYPTOKI_ALREADY_INITIALIZED.
_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()
_PIN_MAC_KEY = secrets.token_bytes(32)


def _pin_mac(pin: str) -> bytes:
    return hmac_sha256(_PIN_MAC_KEY, pin.encode("utf-8"))


def _module_hint() -> str:
    return f"Install softhsm2 (apt-get install softhsm2) or set {MODULE_ENV} to your HSM's PKCS#11 library."


def _load_module(given: str) -> _Module:
    path = os.path.realpath(given)
    with _MODULES_LOCK:
        loaded = _MODULES.get(path)
        if loaded is not None:
            return loaded
        if not os.path.isfile(path):
            raise HsmError(f"PKCS#11 module not found at {given}.", hint=_module_hint())
        try:
            lib = pkcs11.lib(path)
        except p11x.PKCS11Error as exc:
            raise HsmError(
                f"PKCS#11 module at {given} could not be loaded or initialised ({type(exc).__name__}: {exc}).",
                hint=_module_hint() + " For SoftHSM2, check that SOFTHSM2_CONF names a readable config file.",
            ) from None
        loaded = _MODULES[path] = _Module(path=path, lib=lib)
        return loaded


def loaded_library(module_path: str | None = None) -> Any:
    """The python-pkcs11 ``lib`` object sealinfer uses for a module (loading it if need be).

    For diagnostics and tests that must reach the token directly; go through the same object,
    because a second ``pkcs11.lib`` under another name for the same file cannot initialise.
    """
    return _load_module(module_path or default_module_path()).lib


def refresh_tokens(module_path: str | None = None) -> None:
    """Make a loaded module re-read its token list (and, for SoftHSM2, ``SOFTHSM2_CONF``).

    Modules scan their slots once, at ``C_Initialize``; a token initialised afterwards (for example
    with ``softhsm2-util --init-token``) stays invisible until the module is finalised and
    initialised again. That closes every session, so every provider on this module reconnects
    (and logs in again) on its next call. No-op if the module is not loaded in this process.
    """
    path = module_path or default_module_path()
    with _MODULES_LOCK:
        module = _MODULES.get(os.path.realpath(path))
    if module is None:
        return
    with module.lock:
        module.connections.clear()  # their handles die with C_Finalize; never reuse them
        try:
            module.lib.reinitialize()
        except p11x.PKCS11Error as exc:
            raise HsmError(
                f"Re-initialising the PKCS#11 module at {path} failed ({type(exc).__name__}).",
                hint="Check the module's configuration (SOFTHSM2_CONF for SoftHSM2).",
            ) from None


# --- the provider -------------------------------------------------------------------------------


class Pkcs11Provider(KeyProvider):
    """KEKs in a PKCS#11 token; data keys wrapped and unwrapped inside it (RFC 5649).

    Thread-safe; sessions open lazily on first use. Use as a context manager or call ``close()``.
    KEK ids look like ``pkcs11:<label>``. Revocation is the keyring's business, not this class's.
    """

    name = "pkcs11"

    def __init__(
        self,
        module_path: str | None = None,
        token_label: str = DEFAULT_TOKEN_LABEL,
        pin: str | None = None,
    ) -> None:
        self.module_path = module_path or default_module_path()
        self.token_label = token_label
        self._pin = pin if pin is not None else os.environ.get(PIN_ENV)
        self._conn: _Connection | None = None  # this provider's counted reference, once logged in
        self._closed = False

    def __repr__(self) -> str:  # never the PIN
        return f"Pkcs11Provider(module_path={self.module_path!r}, token_label={self.token_label!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Pkcs11Provider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release this provider's hold on the token session (logs out when the last one goes)."""
        self._closed = True
        conn, self._conn = self._conn, None
        with _MODULES_LOCK:
            module = _MODULES.get(os.path.realpath(self.module_path))
        if module is not None and conn is not None:
            with module.lock:
                module.release(conn)

    # -- KEK management ----------------------------------------------------------------------

    def generate_kek(self, label: str | None = None) -> str:
        """Generate an AES-256 KEK inside the token and return its id (``pkcs11:<label>``)."""
        now = time.time_ns()
        if label is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now / 1e9))
            label = f"kek-{stamp}-{secrets.token_hex(4)}"
        if not _LABEL_RE.fullmatch(label):
            raise ConfigurationError(
                f"Invalid KEK label {label!r}.",
                hint="Use 1-64 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit).",
            )
        kek_id = KEK_ID_PREFIX + label
        key_id = now.to_bytes(8, "big") + secrets.token_bytes(_ID_BYTES - 8)

        def generate(session: Any) -> None:
            if self._wrapping_keys(session, label):
                raise ConfigurationError(
                    f"A KEK labelled {label!r} already exists in token {self.token_label!r}.",
                    hint="Choose another label, or omit it to get a unique one.",
                )
            session.generate_key(
                KeyType.AES,
                _KEK_BITS,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                template=_KEK_TEMPLATE,
            )

        self._run(f"generating KEK {kek_id}", generate)
        return kek_id

    def list_keks(self) -> list[str]:
        """Ids of the token's AES wrapping keys, oldest first (keys made elsewhere come first)."""
        return [kek_id for _, kek_id in self._run("listing KEKs", self._sorted_keks)]

    def default_kek_id(self) -> str:
        keks = self.list_keks()
        if not keks:
            raise KeyNotFoundError(
                f"Token {self.token_label!r} holds no KEK.",
                hint="Generate one first (Pkcs11Provider.generate_kek(), or `sealinfer keys init` with PKCS#11).",
            )
        return keks[-1]

    def has_kek(self, kek_id: str) -> bool:
        label = _label_of(kek_id)
        if label is None:
            return False
        return bool(self._run("looking up a KEK", lambda session: self._wrapping_keys(session, label)))

    def kek_attributes(self, kek_id: str) -> dict[str, Any]:
        """The KEK's security attributes as the token reports them (never its value)."""
        names = (
            "TOKEN", "PRIVATE", "SENSITIVE", "ALWAYS_SENSITIVE", "EXTRACTABLE", "NEVER_EXTRACTABLE",
            "LOCAL", "MODIFIABLE", "WRAP", "UNWRAP", "ENCRYPT", "DECRYPT", "VALUE_LEN",
        )

        def read(session: Any) -> dict[str, Any]:
            kek = self._kek(session, kek_id)
            return {n: kek[getattr(Attribute, n)] for n in names}

        return self._run(f"reading attributes of {kek_id}", read)

    # -- wrapping ----------------------------------------------------------------------------

    def wrap_data_key(self, kek_id: str, data_key: bytes) -> WrappedKey:
        if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_BYTES:
            raise ConfigurationError(
                f"A data key must be {DATA_KEY_BYTES} bytes.",
                hint="Pass the raw 256-bit data key of the artifact.",
            )

        def wrap(session: Any) -> bytes:
            kek = self._kek(session, kek_id)
            dek = session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: bytes(data_key),
                Attribute.SENSITIVE: True,
                **_DEK_TEMPLATE,
            })
            try:
                return bytes(kek.wrap_key(dek, mechanism=Mechanism.AES_KEY_WRAP_PAD))
            finally:
                dek.destroy()

        wrapped = self._run(f"wrapping a data key under {kek_id}", wrap)
        return WrappedKey(provider=self.name, kek_id=kek_id, wrapped=wrapped, algorithm=WRAP_ALGORITHM)

    def unwrap_data_key(self, wrapped: WrappedKey) -> bytes:
        if wrapped.provider != self.name:
            raise KeyNotFoundError(
                f"The wrapped key is for provider {wrapped.provider!r}, not {self.name!r}.",
                hint="Open it with the matching key provider.",
            )
        if wrapped.algorithm != WRAP_ALGORITHM:
            raise UnwrapError(
                f"Unsupported key-wrap algorithm {wrapped.algorithm!r} (expected {WRAP_ALGORITHM}).",
                hint="The artifact was made by an incompatible tool or altered.",
            )

        def unwrap(session: Any) -> bytes:
            kek = self._kek(session, wrapped.kek_id)
            try:
                dek = kek.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    wrapped.wrapped,
                    mechanism=Mechanism.AES_KEY_WRAP_PAD,
                    store=False,
                    template={Attribute.SENSITIVE: False, **_DEK_TEMPLATE},  # so we may read it back
                )
            except _UNWRAP_FAILED:
                raise UnwrapError(
                    f"The data key wrapped under {wrapped.kek_id} failed its integrity check in the token.",
                    hint="The artifact was altered or wrapped under another KEK; restore it from a trusted copy.",
                ) from None
            try:
                value = bytes(dek[Attribute.VALUE])
            finally:
                dek.destroy()
            if len(value) != DATA_KEY_BYTES:
                raise UnwrapError(
                    f"The key wrapped under {wrapped.kek_id} is {len(value)} bytes, not {DATA_KEY_BYTES}.",
                    hint="The artifact was altered or made by an incompatible tool.",
                )
            return value

        return self._run(f"unwrapping a data key under {wrapped.kek_id}", unwrap)

    # -- internals ---------------------------------------------------------------------------

    def _run(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(session)`` under the module lock, reconnecting once if the session died."""
        if self._closed:
            raise HsmError("This PKCS#11 provider is closed.", hint="Create a new Pkcs11Provider.")
        module = _load_module(self.module_path)
        with module.lock:
            for attempt in (1, 2):
                session = self._session(module)
                try:
                    with _mapped_errors(what):
                        return operation(session)
                except _StaleSession:
                    if self._conn is not None:
                        module.discard(self._conn)
                    self._conn = None
                    if attempt == 2:
                        raise HsmError(
                            f"The token {self.token_label!r} went away while {what}.",
                            hint="Check that the HSM is connected and the token present, then retry.",
                        ) from None
        raise AssertionError("unreachable")

    def _session(self, module: _Module) -> Any:
        if self._conn is not None and module.is_live(self._conn):
            return self._conn.session
        self._conn = None  # closed by refresh_tokens() or found dead: never touch its handle again
        token = self._find_token(module)
        if not self._pin:
            raise HsmPinError(
                f"No user PIN for token {self.token_label!r}.",
                hint=f"Set {PIN_ENV} or pass pin=... to Pkcs11Provider.",
            )
        self._conn = module.acquire(token, self._pin)
        return self._conn.session

    def _find_token(self, module: _Module) -> Any:
        try:
            tokens = list(module.lib.get_tokens())
        except p11x.PKCS11Error as exc:
            raise HsmError(
                f"Could not list the tokens of PKCS#11 module {self.module_path} ({type(exc).__name__}).",
                hint=_module_hint(),
            ) from None
        matches = [t for t in tokens if t.label == self.token_label]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise HsmError(
                f"{len(matches)} tokens are labelled {self.token_label!r}.",
                hint="Give each token a unique label.",
            )
        available = sorted({t.label for t in tokens if t.label}) or ["(none)"]
        raise HsmError(
            f"No PKCS#11 token labelled {self.token_label!r}; available tokens: {', '.join(available)}.",
            hint="Pick one of those labels, or initialise a token "
            "(softhsm2-util --init-token --free --label LABEL).",
        )

    @staticmethod
    def _wrapping_keys(session: Any, label: str | None = None) -> list[Any]:
        template: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.TOKEN: True,
            Attribute.WRAP: True,
            Attribute.UNWRAP: True,
        }
        if label is not None:
            template[Attribute.LABEL] = label
        return list(session.get_objects(template))

    def _sorted_keks(self, session: Any) -> list[tuple[tuple[int, bytes, str], str]]:
        found = []
        for key in self._wrapping_keys(session):
            label = key.label
            if not label:
                continue
            key_id = bytes(key.id or b"")
            ours = 1 if len(key_id) == _ID_BYTES else 0
            found.append(((ours, key_id if ours else b"", label), KEK_ID_PREFIX + label))
        found.sort()
        return found

    def _kek(self, session: Any, kek_id: str) -> Any:
        label = _label_of(kek_id)
        keks = self._wrapping_keys(session, label) if label is not None else []
        if len(keks) == 1:
            return keks[0]
        if keks:
            raise HsmError(
                f"{len(keks)} keys in token {self.token_label!r} are labelled {label!r}.",
                hint="Give each KEK a unique label.",
            )
        available = [kid for _, kid in self._sorted_keks(session)] or ["(none)"]
        raise KeyNotFoundError(
            f"Token {self.token_label!r} has no KEK {kek_id!r}; it holds: {', '.join(available)}.",
            hint="Open the artifact with the token that holds its KEK, or re-wrap it for a KEK you have.",
        )


def _label_of(kek_id: str) -> str | None:
    if not isinstance(kek_id, str) or not kek_id.startswith(KEK_ID_PREFIX):
        return None
    label = kek_id[len(KEK_ID_PREFIX):]
    return label if _LABEL_RE.fullmatch(label) else None


def _pin_error(token_label: str) -> HsmPinError:
    return HsmPinError(
        f"The token {token_label!r} rejected the user PIN.",
        hint=f"Check {PIN_ENV} (or the pin passed in); repeated failures may lock the token.",
    )


class _StaleSession(Exception):
    """Internal: the session handle died under us; the caller reconnects."""


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    """Turn python-pkcs11 exceptions escaping an operation into typed sealinfer errors."""
    try:
        yield
    except _STALE_SESSION:
        raise _StaleSession() from None
    except (p11x.MechanismInvalid, p11x.MechanismParamInvalid) as exc:
        raise HsmError(
            f"The token does not support the mechanism needed for {what} ({type(exc).__name__}).",
            hint="sealinfer needs CKM_AES_KEY_GEN and CKM_AES_KEY_WRAP_PAD (RFC 5649); "
            "use an HSM/firmware that offers them.",
        ) from None
    except p11x.PKCS11Error as exc:
        raise HsmError(
            f"The token refused {what} ({type(exc).__name__}).",
            hint="Check the token's state and the KEK's attributes (WRAP/UNWRAP allowed).",
        ) from None
