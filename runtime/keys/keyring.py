"""The local keyring: a folder of passphrase-protected keys, the embedded default ``KeyProvider``.

Layout (every file 0600, the folder 0700)::

    keyring.json        metadata: key ids, kinds, status, public keys, trusted signers; HMAC-protected
    keys/<key_id>.key   12-byte nonce || AES-256-GCM(key-wrapping key, secret, aad=key_id|kind)

The key-wrapping key and the metadata MAC key are derived with HKDF-SHA256 from scrypt(passphrase),
so a wrong passphrase, a swapped key file or an edited ``keyring.json`` (say, un-revoking a key) are
all detected. Key bytes exist only in memory.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import stat
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding, aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from sealinfer.runtime.atomic import atomic_output
from sealinfer.runtime.canonical import canonical_json
from sealinfer.runtime.errors import (
    KeyNotFoundError,
    KeyRevokedError,
    KeyringError,
    UnwrapError,
    WrongPassphraseError,
)
from sealinfer.runtime.keys.base import DATA_KEY_BYTES, KeyProvider, WrappedKey, strict_b64decode
from sealinfer.runtime.keys.mac import hmac_sha256
from sealinfer.runtime.keys.signing import Signer, TrustStore, public_key_fingerprint

KeyKind = Literal["kek", "signing", "watermark", "audit-hmac"]
KEY_KINDS: tuple[str, ...] = ("kek", "signing", "watermark", "audit-hmac")
SECRET_KINDS = ("watermark", "audit-hmac")
FORMAT = "sealinfer-keyring/1"
METADATA_FILE = "keyring.json"
DEFAULT_SCRYPT_N = 2**15
_CHECK_PLAINTEXT = b"sealinfer keyring passphrase check"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never its bytes."""

    id: str
    kind: str
    status: str  # active | retired | revoked
    created: str
    provider: str = "keyring"
    rotated_from: str | None = None
    retired_at: str | None = None
    revoked_at: str | None = None
    revoke_reason: str | None = None
    public_key: str | None = None  # base64, signing keys only
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_key_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(6)}"


def _write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600 (created so, never chmod-ed after)."""
    with atomic_output(path, mode=0o600) as fh:
        fh.write(data)


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyringError(
            f"{path} is readable by other users (mode {mode:o}).",
            hint=f"Restrict it: chmod 600 {path} (and chmod 700 on the keyring folder).",
        )


class Keyring(KeyProvider):
    """Key-encryption keys, signing keys and secrets in a passphrase-protected folder.

    Create one with ``Keyring.create(path, passphrase)``; open it with ``Keyring.open(path)``.
    As a ``KeyProvider`` it wraps data keys with AES-KWP (RFC 5649) under its active KEK.
    """

    name = "keyring"

    def __init__(self, path: Path, wrapping_key: bytes, mac_key: bytes, metadata: dict[str, Any]) -> None:
        # Use create() or open(); this constructor trusts its arguments.
        self._path = path
        self._aead = AESGCM(wrapping_key)
        self._mac_key = mac_key
        self._meta = metadata
        self._lock = threading.RLock()
        self._cache: dict[str, bytes] = {}

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> Keyring:
        """Create a keyring at ``path`` with one active KEK and one active signing key."""
        folder = Path(path)
        if (folder / METADATA_FILE).exists():
            raise KeyringError(f"A keyring already exists at {folder}.", hint="Open it instead, or pick a new folder.")
        if not passphrase:
            raise KeyringError("The keyring passphrase is empty.", hint="Choose a passphrase (SEALINFER_PASSPHRASE).")
        if folder.is_dir() and any(folder.iterdir()):  # it would be made private (0700) and mixed with keys
            raise KeyringError(f"{folder} already holds other files; a keyring needs a folder of its own.",
                               hint="Pick a new or empty folder, e.g. --keyring ~/.sealinfer/keyring.")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        (folder / "keys").mkdir(exist_ok=True, mode=0o700)
        salt = secrets.token_bytes(16)
        kdf = {"alg": "scrypt", "salt": base64.b64encode(salt).decode(), "n": scrypt_n, "r": 8, "p": 1}
        wrapping_key, mac_key = cls._derive(passphrase, kdf)
        nonce = secrets.token_bytes(12)
        check = nonce + AESGCM(wrapping_key).encrypt(nonce, _CHECK_PLAINTEXT, b"check")
        meta = {
            "format": FORMAT,
            "kdf": kdf,
            "check": base64.b64encode(check).decode(),
            "keys": [],
            "trusted_signers": [],
        }
        ring = cls(folder, wrapping_key, mac_key, meta)
        ring.generate("kek")
        ring.generate("signing")
        return ring

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | None = None) -> Keyring:
        """Open the keyring at ``path``; the passphrase defaults to ``$SEALINFER_PASSPHRASE``."""
        folder = Path(path)
        meta_path = folder / METADATA_FILE
        if not meta_path.is_file():
            raise KeyringError(
                f"No keyring found at {folder}.",
                hint="Create one with `sealinfer keys init --keyring DIR`, or point --keyring/SEALINFER_KEYRING at it.",
            )
        _check_private(meta_path)
        if passphrase is None:
            passphrase = os.environ.get("SEALINFER_PASSPHRASE")
        if not passphrase:
            raise WrongPassphraseError(
                "No keyring passphrase was given.", hint="Set SEALINFER_PASSPHRASE or pass the passphrase."
            )
        try:
            meta = json.loads(meta_path.read_bytes())
            kdf = meta["kdf"]
            check = strict_b64decode(meta["check"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{meta_path} is corrupt ({exc}).", hint="Restore the keyring from backup.") from None
        if meta.get("format") != FORMAT:
            raise KeyringError(f"{meta_path} is not a {FORMAT} keyring.", hint="Check the --keyring path.")
        wrapping_key, mac_key = cls._derive(passphrase, kdf)
        try:
            AESGCM(wrapping_key).decrypt(check[:12], check[12:], b"check")
        except InvalidTag:
            raise WrongPassphraseError(
                f"Wrong passphrase for the keyring at {folder}.", hint="Check SEALINFER_PASSPHRASE."
            ) from None
        expected = meta.pop("mac", None)
        if not isinstance(expected, str) or not hmac.compare_digest(expected, cls._mac(mac_key, meta)):
            raise KeyringError(
                f"{meta_path} was modified outside sealinfer (its MAC does not match).",
                hint="Treat the keyring as compromised: restore it from backup and review revocations.",
            )
        return cls(folder, wrapping_key, mac_key, meta)

    @staticmethod
    def _derive(passphrase: str, kdf: dict[str, Any]) -> tuple[bytes, bytes]:
        if kdf.get("alg") != "scrypt":
            raise KeyringError(f"Unsupported keyring KDF {kdf.get('alg')!r}.", hint="Upgrade sealinfer.")
        try:
            salt = strict_b64decode(kdf["salt"])
            seed = Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(
                passphrase.encode("utf-8")
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise KeyringError(f"Keyring KDF parameters are invalid ({exc}).", hint="Restore from backup.") from None

        def expand(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed)

        return expand(b"sealinfer keyring wrap v1"), expand(b"sealinfer keyring mac v1")

    @staticmethod
    def _mac(mac_key: bytes, meta: dict[str, Any]) -> str:
        return hmac_sha256(mac_key, canonical_json(meta)).hex()

    def _save(self) -> None:
        body = dict(self._meta)
        body["mac"] = self._mac(self._mac_key, self._meta)
        _write_private(self._path / METADATA_FILE, json.dumps(body, indent=2, sort_keys=True).encode("utf-8"))

    @property
    def path(self) -> Path:
        return self._path

    # --- key records -------------------------------------------------------------------------

    def _record(self, key_id: str) -> dict[str, Any]:
        for rec in self._meta["keys"]:
            if rec["id"] == key_id:
                return rec
        raise KeyNotFoundError(
            f"Key {key_id!r} is not in the keyring at {self._path}.",
            hint="List the keys with `sealinfer keys list`.",
        )

    def list_keys(self, kind: str | None = None) -> list[KeyInfo]:
        with self._lock:
            return [KeyInfo(**r) for r in self._meta["keys"] if kind is None or r["kind"] == kind]

    def key_info(self, key_id: str) -> KeyInfo:
        with self._lock:
            return KeyInfo(**self._record(key_id))

    def active_key_id(self, kind: str) -> str:
        with self._lock:
            active = [r for r in self._meta["keys"] if r["kind"] == kind and r["status"] == "active"]
        if not active:
            raise KeyNotFoundError(
                f"The keyring has no active {kind} key.",
                hint=f"Create one with `sealinfer keys rotate --kind {kind}`.",
            )
        return active[-1]["id"]

    def is_revoked(self, key_id: str) -> bool:
        with self._lock:
            return any(r["id"] == key_id and r["status"] == "revoked" for r in self._meta["keys"]) or any(
                s["id"] == key_id and s["status"] == "revoked" for s in self._meta["trusted_signers"]
            )

    def generate(self, kind: str, *, rotated_from: str | None = None) -> KeyInfo:
        """Create a new active key of ``kind`` (the previous active one stays active unless rotated)."""
        if kind not in KEY_KINDS:
            raise KeyringError(f"Unknown key kind {kind!r}.", hint=f"Use one of: {', '.join(KEY_KINDS)}.")
        key_id = _new_key_id(kind)
        record: dict[str, Any] = {"id": key_id, "kind": kind, "status": "active", "created": _now()}
        if rotated_from:
            record["rotated_from"] = rotated_from
        if kind == "signing":
            private = Ed25519PrivateKey.generate()
            secret = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            record["public_key"] = base64.b64encode(public).decode()
            record["fingerprint"] = public_key_fingerprint(public)
        else:
            secret = secrets.token_bytes(32)
        with self._lock:
            nonce = secrets.token_bytes(12)
            blob = nonce + self._aead.encrypt(nonce, secret, f"{key_id}|{kind}".encode())
            _write_private(self._path / "keys" / f"{key_id}.key", blob)
            self._meta["keys"].append(record)
            self._save()
        return KeyInfo(**record)

    def rotate(self, key_id: str | None = None, *, kind: str = "kek") -> KeyInfo:
        """Replace an active key with a fresh one; the old one is retired (still opens old data)."""
        with self._lock:
            old = self._record(key_id) if key_id else self._record(self.active_key_id(kind))
            if old["status"] == "revoked":
                raise KeyRevokedError(f"Key {old['id']!r} is revoked; it cannot be rotated.", hint="Generate one.")
            new = self.generate(old["kind"], rotated_from=old["id"])
            old["status"] = "retired"
            old["retired_at"] = _now()
            self._save()
            return new

    def revoke(self, key_id: str, reason: str = "unspecified") -> None:
        """Revoke a key so nothing it wrapped or signed opens any more. Also accepts HSM KEK ids."""
        with self._lock:
            try:
                rec = self._record(key_id)
            except KeyNotFoundError:
                signer = next((s for s in self._meta["trusted_signers"] if s["id"] == key_id), None)
                if signer is not None:
                    rec = signer
                elif key_id.startswith("pkcs11:"):
                    rec = {"id": key_id, "kind": "kek", "provider": "pkcs11", "created": _now()}
                    self._meta["keys"].append(rec)
                else:
                    raise
            rec["status"] = "revoked"
            rec["revoked_at"] = _now()
            rec["revoke_reason"] = reason
            self._cache.pop(key_id, None)
            self._save()

    def _secret(self, key_id: str) -> bytes:
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None:
                return cached
            rec = self._record(key_id)
            if rec.get("provider", "keyring") != "keyring":
                raise KeyNotFoundError(f"Key {key_id!r} lives in an HSM, not in this keyring.", hint="Use the HSM.")
            path = self._path / "keys" / f"{key_id}.key"
            if not path.is_file():
                raise KeyringError(f"The key file for {key_id!r} is missing ({path}).", hint="Restore from backup.")
            _check_private(path)
            blob = path.read_bytes()
            try:
                secret = self._aead.decrypt(blob[:12], blob[12:], f"{key_id}|{rec['kind']}".encode())
            except InvalidTag:
                raise KeyringError(
                    f"The key file for {key_id!r} is corrupt or belongs to another key.", hint="Restore from backup."
                ) from None
            self._cache[key_id] = secret
            return secret

    # --- KeyProvider -------------------------------------------------------------------------

    def has_kek(self, kek_id: str) -> bool:
        with self._lock:
            return any(
                r["id"] == kek_id and r["kind"] == "kek" and r.get("provider", "keyring") == "keyring"
                for r in self._meta["keys"]
            )

    def default_kek_id(self) -> str:
        return self.active_key_id("kek")

    def wrap_data_key(self, kek_id: str, data_key: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError("data keys are 32 bytes")
        rec = self._record(kek_id)
        if rec["kind"] != "kek":
            raise KeyNotFoundError(f"{kek_id!r} is a {rec['kind']} key, not a KEK.", hint="Name a kek-... key.")
        if rec["status"] != "active":
            raise KeyRevokedError(
                f"KEK {kek_id!r} is {rec['status']}; new artifacts may only be wrapped for active KEKs.",
                hint="Use the active KEK (`sealinfer keys list`).",
            )
        wrapped = aes_key_wrap_with_padding(self._secret(kek_id), data_key)
        return WrappedKey(provider=self.name, kek_id=kek_id, wrapped=wrapped)

    def unwrap_data_key(self, wrapped: WrappedKey) -> bytes:
        rec = self._record(wrapped.kek_id)
        if rec["status"] == "revoked":
            raise KeyRevokedError(
                f"KEK {wrapped.kek_id!r} was revoked ({rec.get('revoke_reason', 'no reason given')}).",
                hint="Ask the model owner for a copy re-wrapped for a current KEK.",
            )
        try:
            return aes_key_unwrap_with_padding(self._secret(wrapped.kek_id), wrapped.wrapped)
        except (InvalidUnwrap, ValueError):  # ValueError: not a whole number of 8-byte blocks
            raise UnwrapError(
                f"The data key wrapped for {wrapped.kek_id!r} fails its integrity check.",
                hint="The artifact header was altered or the KEK file is not the original.",
            ) from None

    # --- signing and secrets -----------------------------------------------------------------

    def signer(self, key_id: str | None = None) -> Signer:
        key_id = key_id or self.active_key_id("signing")
        rec = self._record(key_id)
        if rec["status"] != "active":
            raise KeyRevokedError(f"Signing key {key_id!r} is {rec['status']}.", hint="Use the active signing key.")
        return Signer(key_id, Ed25519PrivateKey.from_private_bytes(self._secret(key_id)))

    def trust_store(self) -> TrustStore:
        """Own signing keys (active or retired) plus imported trusted signers; revoked ids listed."""
        store = TrustStore()
        with self._lock:
            for rec in self._meta["keys"]:
                if rec["kind"] == "signing" and "public_key" in rec and rec["status"] != "revoked":
                    store.add(rec["id"], base64.b64decode(rec["public_key"]))
            for sig in self._meta["trusted_signers"]:
                if sig["status"] != "revoked":
                    store.add(sig["id"], base64.b64decode(sig["public_key"]))
            store.revoked = {r["id"] for r in self._meta["keys"] if r["status"] == "revoked"} | {
                s["id"] for s in self._meta["trusted_signers"] if s["status"] == "revoked"
            }
        return store

    def trust(self, key_id: str, public_key: bytes) -> None:
        """Trust another site's signer public key (32-byte raw Ed25519)."""
        if len(public_key) != 32:
            raise KeyringError("An Ed25519 public key is 32 raw bytes.", hint="Export it with `sealinfer keys export`.")
        with self._lock:
            if any(r["id"] == key_id for r in self._meta["keys"]) or any(
                s["id"] == key_id for s in self._meta["trusted_signers"]
            ):
                raise KeyringError(f"Key id {key_id!r} is already in the keyring.", hint="Pick another id.")
            self._meta["trusted_signers"].append(
                {
                    "id": key_id,
                    "public_key": base64.b64encode(public_key).decode(),
                    "fingerprint": public_key_fingerprint(public_key),
                    "added": _now(),
                    "status": "active",
                }
            )
            self._save()

    def trusted_signers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._meta["trusted_signers"]]

    def public_key(self, key_id: str) -> bytes:
        rec = self._record(key_id)
        if "public_key" not in rec:
            raise KeyNotFoundError(f"{key_id!r} is not a signing key.", hint="Name a signing-... key.")
        return base64.b64decode(rec["public_key"])

    def secret(self, kind: str, key_id: str | None = None) -> tuple[str, bytes]:
        """A symmetric secret of ``kind`` ("watermark", "audit-hmac"), created on first use."""
        if kind not in SECRET_KINDS:
            raise KeyringError(f"{kind!r} is not a secret kind.", hint=f"Use one of: {', '.join(SECRET_KINDS)}.")
        with self._lock:
            if key_id is None:
                try:
                    key_id = self.active_key_id(kind)
                except KeyNotFoundError:
                    key_id = self.generate(kind).id
            rec = self._record(key_id)
            if rec["kind"] != kind:
                raise KeyNotFoundError(f"{key_id!r} is a {rec['kind']} key, not {kind}.", hint="Check the key id.")
            if rec["status"] == "revoked":
                raise KeyRevokedError(f"{kind} key {key_id!r} is revoked.", hint="Rotate to a new key.")
            return key_id, self._secret(key_id)

    def __repr__(self) -> str:
        return f"Keyring({str(self._path)!r})"
