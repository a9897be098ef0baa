"""Signed retention archive of an audit log (HIPAA asks for six years), readable without sealinfer.

The archive is a gzipped tar of plain files: ``events.jsonl`` (seq, prev_hash, entry_hash and the exact
hashed body of every record), ``checkpoints.jsonl``, ``keys.json``, ``README.txt`` (how to re-verify with
any SHA-256 and Ed25519 tool), ``manifest.json`` (log id, record count, head hash, Merkle root, the
verification result at export time and the SHA-256 of every file) and ``manifest.sig`` (Ed25519 over
the manifest bytes). A tampered log is still archived - as evidence - with its failed verification.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from sealinfer.runtime.audit import schema
from sealinfer.runtime.audit.checkpoint import Checkpoint
from sealinfer.runtime.audit.record import rfc3339
from sealinfer.runtime.audit.verify import VerifyResult, assess, verify_log, walk
from sealinfer.runtime.errors import AuditIntegrityError, SealinferError, StoreError
from sealinfer.runtime.keys.signing import Signer, TrustStore

ARCHIVE_FORMAT = "sealinfer-audit-archive/v1"
_README = """sealinfer audit archive ({fmt})

Each line of events.jsonl is one record. Its entry_hash is
    SHA-256( 0x00 || seq as 8-byte big-endian || prev_hash (32 bytes) || body as ASCII bytes )
and prev_hash of record 1 is SHA-256("sealinfer-audit/v1 genesis " || log_id). entry_hash values are
the leaves of an RFC 9162 Merkle tree; each line of checkpoints.jsonl signs, with Ed25519, the text
    sealinfer-audit-checkpoint/v1\\nlog <log_id>\\nsize <n>\\nroot <hex>\\ntime <t>\\nkey <key id>\\n
manifest.sig is the Ed25519 signature (base64) of manifest.json's bytes by manifest.json's
"exporter_key_id"; manifest.json lists the SHA-256 of every other file.
Verify with: sealinfer audit verify-archive ARCHIVE --keyring DIR
"""


def export_log(db_path: str | os.PathLike[str], out_path: str | os.PathLike[str], signer: Signer,
               trust_store: TrustStore | None = None) -> dict[str, Any]:
    """Write the signed archive; returns its manifest."""
    result = verify_log(db_path, trust_store)
    conn, log_id = schema.open_readonly(db_path)
    out = Path(out_path)
    try:
        with tempfile.TemporaryDirectory(prefix="sealinfer-export-") as tmp:
            files: dict[str, str] = {}

            def write(name: str, lines: Any) -> None:
                digest = hashlib.sha256()
                with open(Path(tmp) / name, "wb") as fh:
                    for line in lines:
                        data = (line + "\n").encode()
                        digest.update(data)
                        fh.write(data)
                files[name] = digest.hexdigest()

            write("events.jsonl", (json.dumps({"seq": s, "prev_hash": bytes(p).hex(), "entry_hash": bytes(e).hex(),
                                               "body": bytes(b).decode("ascii", "replace")}, separators=(",", ":"))
                                   for s, b, p, e in conn.execute(
                                       "SELECT seq, CAST(body AS BLOB), prev_hash, entry_hash FROM audit_events "
                                       "ORDER BY seq")))
            write("checkpoints.jsonl", (json.dumps(Checkpoint(log_id, r[0], bytes(r[1]), r[2], r[3],
                                                              bytes(r[4])).to_dict(), sort_keys=True)
                                        for r in conn.execute("SELECT tree_size, root, time, key_id, signature "
                                                              "FROM audit_checkpoints ORDER BY tree_size")))
            keys = [{"key_id": k, "public_key": base64.b64encode(bytes(v)).decode(), "added": a}
                    for k, v, a in conn.execute("SELECT key_id, public_key, added FROM audit_keys")]
            keys.append({"key_id": signer.key_id, "public_key": base64.b64encode(signer.public_key_bytes()).decode(),
                         "added": "exporter"})
            write("keys.json", [json.dumps(keys, sort_keys=True, indent=1)])
            write("README.txt", [_README.format(fmt=ARCHIVE_FORMAT)])
            manifest = {"format": ARCHIVE_FORMAT, "log_id": log_id, "records": result.records,
                        "head_hash": result.head_hash, "root": result.root, "exported_at": rfc3339(time.time_ns()),
                        "exporter_key_id": signer.key_id, "verification": result.to_dict(), "files": files}
            manifest_bytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
            signature = base64.b64encode(signer.sign(manifest_bytes)) + b"\n"
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                for name in ("README.txt", "keys.json", "checkpoints.jsonl", "events.jsonl"):
                    tar.add(Path(tmp) / name, arcname=name)
                for name, data in (("manifest.json", manifest_bytes), ("manifest.sig", signature)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(data))
            os.replace(partial, out)
    finally:
        conn.close()
    return manifest


def verify_archive(path: str | os.PathLike[str], trust_store: TrustStore) -> VerifyResult:
    """Check the manifest signature (by a trusted key), file digests, then the chain and checkpoints."""
    try:
        tar = tarfile.open(path, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise StoreError(f"{path} is not a sealinfer audit archive ({exc}).",
                         hint="Pass a file written by `sealinfer audit export`.") from None
    with tar:
        def read(name: str) -> bytes:
            try:
                member = tar.extractfile(name)
                data = member.read() if member is not None else None
            except KeyError:
                data = None
            except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:  # decompression runs lazily, here
                raise AuditIntegrityError(f"Audit archive {path} is damaged ({type(exc).__name__}: {exc}).",
                                          hint="The archive was altered or truncated; use another retained copy.",
                                          ) from None
            if data is None:
                raise AuditIntegrityError(f"Audit archive {path} lacks {name}.",
                                          hint="The archive is incomplete; use another retained copy.")
            return data

        manifest_bytes = read("manifest.json")
        try:  # nothing in the manifest is trusted before its signature holds
            manifest = json.loads(manifest_bytes)
            fmt, key_id = manifest.get("format"), str(manifest["exporter_key_id"])
            signature = base64.b64decode(read("manifest.sig").strip(), validate=True)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise AuditIntegrityError(f"Audit archive {path} has an unreadable manifest or signature.",
                                      hint="The archive was altered; use another retained copy.") from None
        if fmt != ARCHIVE_FORMAT:
            raise StoreError(f"{path} is not a {ARCHIVE_FORMAT} archive.", hint="Use a matching sealinfer release.")
        try:
            trust_store.verify(key_id, signature, manifest_bytes)
        except SealinferError as exc:
            raise AuditIntegrityError(f"Audit archive manifest signature: {exc.message}",
                                      hint=exc.hint or "Use an untampered copy.") from None
        contents = {name: read(name) for name in manifest["files"]}
        try:  # to the end of the gzip stream, whose CRC then covers every byte, signed or not
            while tar.fileobj is not None and tar.fileobj.read(1 << 20):
                pass
        except (OSError, EOFError, zlib.error) as exc:
            raise AuditIntegrityError(f"Audit archive {path} is damaged ({type(exc).__name__}: {exc}).",
                                      hint="The archive was altered or truncated; use another retained copy.",
                                      ) from None
        for name, digest in manifest["files"].items():
            if hashlib.sha256(contents[name]).hexdigest() != digest:
                raise AuditIntegrityError(f"Audit archive file {name} does not match the signed manifest.",
                                          hint="The archive was altered after export; use another retained copy.")
    log_id = manifest["log_id"]
    records = [json.loads(line) for line in contents["events.jsonl"].splitlines()]
    rows = ((r["seq"], r["body"].encode(), bytes.fromhex(r["prev_hash"]), bytes.fromhex(r["entry_hash"]))
            for r in records)
    leaves, problem, head = walk(rows, schema.genesis_hash(log_id))
    keys = {k["key_id"]: base64.b64decode(k["public_key"]) for k in json.loads(contents["keys.json"])}
    cps = [Checkpoint.from_dict(json.loads(line)) for line in contents["checkpoints.jsonl"].splitlines()]
    return assess(log_id, leaves, problem, head, keys, cps, trust_store)
