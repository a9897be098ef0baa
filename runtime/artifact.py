"""The ``.sealed`` container: read, check and write it. Knows bytes, not ONNX.

Layout::

    offset  size  field
    0       8     magic  b"\\x89SEALED\\n"
    8       2     format version (big-endian, = 1)
    10      2     flags (= 0)
    12      4     header length H (big-endian, 1 <= H <= 4 MiB)
    16      H     header: canonical JSON {manifest, signature, recipients, recipients_mac}
    16+H    ...   payload: STREAM segments (see stream.py), nothing after the last one

Every byte is covered: the manifest by its Ed25519 signature, the recipients by an HMAC keyed from
the data key, the payload by GCM with the manifest digest as AAD, and the header's *encoding* by a
rule that it must be exactly the canonical re-serialisation of what it parses to (otherwise a bit
flip that turns ``1e-05`` into ``1E-05`` would change bytes but not meaning, and go unnoticed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealinfer.runtime.atomic import atomic_output
from sealinfer.runtime.canonical import canonical_json
from sealinfer.runtime.errors import (
    ArtifactError,
    HeaderError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    NotAnArtifactError,
    TruncatedArtifactError,
    UnsupportedVersionError,
)
from sealinfer.runtime.keys.base import KeyProvider, WrappedKey, strict_b64decode
from sealinfer.runtime.keys.mac import hmac_sha256
from sealinfer.runtime.keys.signing import Signer, TrustStore
from sealinfer.runtime.stream import (
    NONCE_PREFIX_BYTES,
    SALT_BYTES,
    TAG_BYTES,
    StreamDecryptor,
    StreamParams,
    _hkdf,
    key_commitment,
)

MAGIC = b"\x89SEALED\n"
FORMAT_VERSION = 1
PRELUDE = struct.Struct(">8sHHI")
MAX_HEADER_BYTES = 4 << 20
CIPHER = "AES-256-GCM-HKDF-SHA256-STREAM/1"
_MANIFEST_DOMAIN = b"sealinfer manifest v1\x00"
_RECIPIENTS_INFO = b"sealinfer recipients mac v1"


def manifest_digest(manifest: dict[str, Any]) -> bytes:
    """What is signed and what every payload segment's AAD binds to."""
    return hashlib.sha256(_MANIFEST_DOMAIN + canonical_json(manifest)).digest()


def _recipients_mac(data_key: bytes, salt: bytes, recipients: list[dict[str, Any]], digest: bytes) -> str:
    mac_key = _hkdf(data_key, salt, _RECIPIENTS_INFO)
    return base64.b64encode(hmac_sha256(mac_key, canonical_json(recipients) + digest)).decode()


_DROP_BEHIND = 16 << 20


def advise(mm: mmap.mmap, name: str, *span: int) -> None:
    """madvise() where the platform offers it; advice only changes speed and residency, never data."""
    flag = getattr(mmap, name, None)
    if flag is not None:
        try:
            mm.madvise(flag, *span)
        except OSError:
            pass


def _damaged(what: str) -> HeaderError:
    return HeaderError(f"The artifact header is invalid: {what}.", hint="The file is damaged; restore a trusted copy.")


@dataclass(frozen=True)
class PayloadInfo:
    segment_size: int
    segment_count: int
    plaintext_size: int
    salt: bytes
    nonce_prefix: bytes
    key_commitment: bytes
    sections: dict[str, tuple[int, int]]  # name -> (offset, length) in the plaintext

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> PayloadInfo:
        try:
            p = manifest["payload"]
            if p["cipher"] != CIPHER:
                raise UnsupportedVersionError(
                    f"Payload cipher {p['cipher']!r} is not supported.", hint="Upgrade sealinfer to open this artifact."
                )
            info = cls(
                segment_size=int(p["segment_size"]),
                segment_count=int(p["segment_count"]),
                plaintext_size=int(p["plaintext_size"]),
                salt=strict_b64decode(p["salt"]),
                nonce_prefix=strict_b64decode(p["nonce_prefix"]),
                key_commitment=strict_b64decode(p["key_commitment"]),
                sections={str(k): (int(v[0]), int(v[1])) for k, v in p["sections"].items()},
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise _damaged(f"payload description ({exc})") from None
        if (
            info.segment_size < 1024
            or len(info.salt) != SALT_BYTES
            or len(info.nonce_prefix) != NONCE_PREFIX_BYTES
            or info.plaintext_size < 0
            or info.segment_count != max(1, -(-info.plaintext_size // info.segment_size))
        ):
            raise _damaged("inconsistent payload parameters")
        return info

    def to_manifest(self) -> dict[str, Any]:
        return {
            "cipher": CIPHER,
            "segment_size": self.segment_size,
            "segment_count": self.segment_count,
            "plaintext_size": self.plaintext_size,
            "salt": base64.b64encode(self.salt).decode(),
            "nonce_prefix": base64.b64encode(self.nonce_prefix).decode(),
            "key_commitment": base64.b64encode(self.key_commitment).decode(),
            "sections": {k: [o, n] for k, (o, n) in sorted(self.sections.items())},
        }

    @property
    def ciphertext_size(self) -> int:
        return self.plaintext_size + TAG_BYTES * self.segment_count


@dataclass
class SealedArtifact:
    """A parsed ``.sealed`` file. ``open()`` checks structure only; signature and keys come after."""

    path: Path
    manifest: dict[str, Any]
    signature_key_id: str
    signature: bytes
    recipients: list[WrappedKey]
    recipients_mac: str
    payload: PayloadInfo
    payload_offset: int
    digest: bytes = field(repr=False)

    # --- parsing -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SealedArtifact:
        p = Path(path)
        try:
            size = p.stat().st_size
            with p.open("rb") as fh:
                prelude = fh.read(PRELUDE.size)
                if len(prelude) < PRELUDE.size:
                    if not prelude:
                        raise NotAnArtifactError(f"{p} is empty.", hint="Seal a model with `sealinfer seal`.")
                    if not MAGIC.startswith(prelude[: len(MAGIC)]):
                        raise NotAnArtifactError(f"{p} is not a sealed artifact.", hint="Check the path.")
                    raise TruncatedArtifactError(f"{p} ends inside its header.", hint="Restore a complete copy.")
                magic, version, flags, header_len = PRELUDE.unpack(prelude)
                if magic != MAGIC:
                    raise NotAnArtifactError(
                        f"{p} is not a sealed artifact (bad magic bytes).",
                        hint="Seal ONNX models with `sealinfer seal MODEL.onnx -o OUT.sealed`.",
                    )
                if version != FORMAT_VERSION:
                    raise UnsupportedVersionError(
                        f"{p} uses artifact format version {version}; this sealinfer reads version {FORMAT_VERSION}.",
                        hint="Upgrade sealinfer, or re-seal the model with this version.",
                    )
                if flags != 0:
                    raise _damaged(f"unknown flags {flags:#06x}")
                if header_len == 0 or header_len > MAX_HEADER_BYTES:
                    raise HeaderError(
                        f"{p} declares a header of {header_len} bytes (allowed: 1..{MAX_HEADER_BYTES}).",
                        hint="The file is damaged or not produced by sealinfer.",
                    )
                raw = fh.read(header_len)
        except OSError as exc:
            raise ArtifactError(f"Cannot read {p}: {exc.strerror}.", hint="Check the path and permissions.") from None
        if len(raw) < header_len:
            raise TruncatedArtifactError(f"{p} ends inside its header.", hint="Restore a complete copy.")
        art = cls._parse_header(p, raw, PRELUDE.size + header_len)
        expected = art.payload_offset + art.payload.ciphertext_size
        if size < expected:
            raise TruncatedArtifactError(
                f"{p} is truncated: {size} bytes, the manifest requires {expected}.",
                hint="The copy is incomplete; restore it from a trusted source.",
            )
        if size > expected:
            raise IntegrityError(
                f"{p} has {size - expected} unexpected bytes after the payload.",
                hint="The file was altered; restore it from a trusted copy.",
            )
        return art

    @classmethod
    def _parse_header(cls, path: Path, raw: bytes, payload_offset: int) -> SealedArtifact:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _damaged(f"not JSON ({exc.__class__.__name__})") from None
        if not isinstance(header, dict) or set(header) != {"manifest", "signature", "recipients", "recipients_mac"}:
            raise _damaged("unexpected structure")
        try:
            if canonical_json(header) != raw:
                raise _damaged("not in canonical form")
        except ValueError:  # NaN / Infinity smuggled in
            raise _damaged("non-finite number") from None
        manifest, sig, recipients = header["manifest"], header["signature"], header["recipients"]
        if not isinstance(manifest, dict) or not isinstance(sig, dict) or not isinstance(recipients, list):
            raise _damaged("unexpected structure")
        if set(sig) != {"alg", "key_id", "value"} or sig["alg"] != "Ed25519" or not isinstance(sig["key_id"], str):
            raise _damaged("signature block")
        if not recipients:
            raise _damaged("no recipients")
        if manifest.get("signer_key_id") != sig["key_id"]:
            raise _damaged("signer key id differs between manifest and signature")
        if not isinstance(header["recipients_mac"], str):
            raise _damaged("recipients MAC")
        strict_b64decode(header["recipients_mac"])
        wrapped = []
        for entry in recipients:
            if not isinstance(entry, dict) or set(entry) != {"provider", "kek_id", "algorithm", "wrapped"}:
                raise _damaged("recipient entry")
            wrapped.append(WrappedKey.from_dict(entry))
        return cls(
            path=path,
            manifest=manifest,
            signature_key_id=sig["key_id"],
            signature=strict_b64decode(sig["value"]),
            recipients=wrapped,
            recipients_mac=header["recipients_mac"],
            payload=PayloadInfo.from_manifest(manifest),
            payload_offset=payload_offset,
            digest=manifest_digest(manifest),
        )

    @classmethod
    def open_verified(cls, path: str | os.PathLike[str], keyring: Any) -> SealedArtifact:
        """Open ``path`` and check its signature against ``keyring``'s trusted, unrevoked signers."""
        artifact = cls.open(path)
        artifact.verify_signature(keyring.trust_store())
        return artifact

    def unwrap_for(self, keyring: Any, providers: Sequence[KeyProvider] = ()) -> bytes:
        """The data key, via the keyring or an HSM, honouring the keyring's revocation list."""
        return self.unwrap_data_key([keyring, *providers], revoked=keyring.is_revoked)

    # --- checks ------------------------------------------------------------------------------

    def verify_signature(self, trust: TrustStore) -> None:
        """Raise unless the manifest is signed by a trusted, unrevoked key."""
        trust.verify(self.signature_key_id, self.signature, _MANIFEST_DOMAIN + canonical_json(self.manifest))

    def unwrap_data_key(self, providers: Sequence[KeyProvider], *, revoked: Callable[[str], bool]) -> bytes:
        """Find a recipient some provider can open, unwrap the DEK and check it against the manifest.

        A revoked KEK is never used; when every usable recipient is revoked the error says so.
        """
        revoked_ids: list[str] = []
        last_error: Exception | None = None
        for recipient in self.recipients:
            if revoked(recipient.kek_id):
                revoked_ids.append(recipient.kek_id)
                continue
            for provider in providers:
                if provider.name != recipient.provider or not provider.has_kek(recipient.kek_id):
                    continue
                try:
                    data_key = provider.unwrap_data_key(recipient)
                except KeyRevokedError as exc:
                    revoked_ids.append(recipient.kek_id)
                    last_error = exc
                    continue
                self._check_data_key(data_key)
                return data_key
        if revoked_ids:
            raise KeyRevokedError(
                f"Every key-encryption key this artifact can be opened with is revoked: {', '.join(revoked_ids)}.",
                hint="Ask the model owner to re-wrap it for a current KEK (`sealinfer keys rotate --rewrap`).",
            ) from last_error
        ids = ", ".join(f"{r.provider}:{r.kek_id}" if r.provider != "pkcs11" else r.kek_id for r in self.recipients)
        raise KeyNotFoundError(
            f"None of this artifact's recipients ({ids}) is in the available key providers.",
            hint="Open it with the keyring or HSM that holds one of those KEKs, or have it re-wrapped for yours.",
        )

    def _check_data_key(self, data_key: bytes) -> None:
        if not hmac.compare_digest(key_commitment(data_key, self.payload.salt), self.payload.key_commitment):
            raise IntegrityError(
                "The unwrapped data key does not match the key committed in the signed manifest.",
                hint="The recipient entry was forged or altered; do not use this artifact.",
            )
        expected = _recipients_mac(data_key, self.payload.salt, [r.to_dict() for r in self.recipients], self.digest)
        if not hmac.compare_digest(expected, self.recipients_mac):
            raise IntegrityError(
                "The recipients list was altered after sealing.",
                hint="Restore the artifact from a trusted copy.",
            )

    # --- payload -----------------------------------------------------------------------------

    def stream_params(self) -> StreamParams:
        return StreamParams(self.payload.segment_size, self.payload.salt, self.payload.nonce_prefix, self.digest)

    def ciphertext_segments(self) -> Iterator[tuple[int, memoryview]]:
        """Yield (index, ciphertext segment) straight out of an mmap of the file (no read copy).

        Each view is released before the next is produced, and on any exit, so the mmap can always
        be closed: a slice still exported (say, held by a traceback) would turn an IntegrityError
        into a BufferError.
        """
        pay = self.payload
        seg_ct = pay.segment_size + TAG_BYTES
        end = self.payload_offset + pay.ciphertext_size
        with self.path.open("rb") as fh:
            if os.fstat(fh.fileno()).st_size < end:
                raise TruncatedArtifactError(
                    f"{self.path} was truncated after it was opened.", hint="Restore a complete copy."
                )
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                advise(mm, "MADV_SEQUENTIAL")
                view = memoryview(mm)
                try:
                    dropped = self.payload_offset - self.payload_offset % mmap.PAGESIZE
                    pos = self.payload_offset
                    for index in range(pay.segment_count):
                        want = min(seg_ct, end - pos)
                        with view[pos : pos + want] as segment:
                            yield index, segment
                        pos += want
                        if pos - dropped >= _DROP_BEHIND:
                            # Unmap what was read: the ciphertext stays in the page cache, but it is not
                            # counted again on top of the plaintext the caller is building.
                            upto = pos - pos % mmap.PAGESIZE
                            advise(mm, "MADV_DONTNEED", dropped, upto - dropped)
                            dropped = upto
                finally:
                    view.release()

    def iter_segments(self, data_key: bytes) -> Iterator[tuple[int, memoryview]]:
        """Yield (plaintext offset, plaintext segment) in order, each authenticated before it is yielded.

        The yielded view is reused for the next segment: copy what you need before advancing.
        """
        pay = self.payload
        dec = StreamDecryptor(data_key, self.stream_params(), pay.segment_count)
        pt_buf = bytearray(pay.segment_size)
        try:
            with closing(self.ciphertext_segments()) as segments:
                for index, segment in segments:
                    n = dec.decrypt_segment_into(index, segment, memoryview(pt_buf))
                    yield index * pay.segment_size, memoryview(pt_buf)[:n]
        finally:
            pt_buf[:] = bytes(len(pt_buf))

    def inspect(self) -> dict[str, Any]:
        """What `sealinfer inspect` shows: the manifest and recipient key ids, never key bytes."""
        return {
            "path": str(self.path),
            "format_version": FORMAT_VERSION,
            "manifest": self.manifest,
            "manifest_sha256": self.digest.hex(),
            "signature": {"alg": "Ed25519", "key_id": self.signature_key_id},
            "recipients": [
                {"provider": r.provider, "kek_id": r.kek_id, "algorithm": r.algorithm} for r in self.recipients
            ],
        }


# --- writing -----------------------------------------------------------------------------------


def sign_manifest(manifest: dict[str, Any], signer: Signer) -> bytes:
    return signer.sign(_MANIFEST_DOMAIN + canonical_json(manifest))


def encode_header(
    manifest: dict[str, Any],
    signer_key_id: str,
    signature: bytes,
    recipients: Iterable[WrappedKey],
    data_key: bytes,
) -> bytes:
    """Return prelude + canonical header bytes for a signed manifest and its recipients."""
    salt = PayloadInfo.from_manifest(manifest).salt
    digest = manifest_digest(manifest)
    rec = [r.to_dict() for r in recipients]
    header = {
        "manifest": manifest,
        "signature": {"alg": "Ed25519", "key_id": signer_key_id, "value": base64.b64encode(signature).decode()},
        "recipients": rec,
        "recipients_mac": _recipients_mac(data_key, salt, rec, digest),
    }
    raw = canonical_json(header)
    if len(raw) > MAX_HEADER_BYTES:
        raise HeaderError("The header would exceed 4 MiB.", hint="Use fewer recipients or a smaller manifest.")
    return PRELUDE.pack(MAGIC, FORMAT_VERSION, 0, len(raw)) + raw


def rewrite_recipients(artifact: SealedArtifact, recipients: Sequence[WrappedKey], data_key: bytes, out: Path) -> None:
    """Re-wrap: write ``artifact`` to ``out`` with a new recipients list, copying the ciphertext unchanged.

    The manifest and its signature are kept as they are, so rotation needs no signing key and never
    re-encrypts the payload. The write is atomic (temp file + rename).
    """
    artifact._check_data_key(data_key)
    header = encode_header(artifact.manifest, artifact.signature_key_id, artifact.signature, recipients, data_key)
    with artifact.path.open("rb") as src, atomic_output(out) as dst:
        dst.write(header)
        src.seek(artifact.payload_offset)
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def read_manifest(path: str | os.PathLike[str], keyring: Any | None = None) -> dict[str, Any]:
    """The manifest of a ``.sealed`` file; signature-checked when a keyring is given."""
    art = SealedArtifact.open(path) if keyring is None else SealedArtifact.open_verified(path, keyring)
    return art.manifest


def open_model_proto(path: str | os.PathLike[str], keyring: Any, providers: Sequence[KeyProvider] = ()) -> Any:
    """Verify and decrypt into an in-memory ``onnx.ModelProto`` (see ``sealinfer.runtime.loader``)."""
    from sealinfer.runtime.loader import open_model_proto as _open  # loader depends on this module

    return _open(path, keyring, providers)
