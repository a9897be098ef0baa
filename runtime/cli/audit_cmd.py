"""``sealinfer audit ...`` (verify, prove, consistency, recover, export, checkpoints) and ``sealinfer report``.

Exit codes: 0 verified with trusted keys; 1 integrity FAILED; 2 bad arguments, missing file or not an audit log;
4 chain intact but checkpoint keys not independently trusted (pass --keyring or --trusted-key, or
accept with --allow-untrusted); 5 report written but the period holds no audit records.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from sealinfer.runtime.cli.common import echo_json
from sealinfer.runtime.errors import AuditIntegrityError, ConfigurationError, StoreError

_DB = click.option("--db", "db", required=True, type=click.Path(dir_okay=False, path_type=Path),
                   help="The audit log (audit.db).")
_KEYRING = click.option("--keyring", "keyring_path", type=click.Path(file_okay=False, path_type=Path),
                        envvar="SEALINFER_KEYRING", default=None, show_envvar=True,
                        help="Keyring whose signing keys (and trusted signers) vouch for checkpoints.")
_TRUSTED = click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="Public key file from `sealinfer audit checkpoint-key export` (repeatable).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class UntrustedCheckpointKeysError(AuditIntegrityError):
    """The chain verified, but only against keys stored in the log itself."""

    code = "audit_keys_untrusted"
    exit_code = 4


class EmptyPeriodError(StoreError):
    """The report was written, but no audit record falls in the period."""

    code = "audit_period_empty"
    exit_code = 5


def _trust_store(keyring_path: Path | None, trusted_keys: tuple[Path, ...]) -> Any:
    from sealinfer.runtime.keys.signing import TrustStore

    if keyring_path is None and not trusted_keys:
        return None
    store = TrustStore()
    if keyring_path is not None:
        from sealinfer.runtime.cli.common import open_keyring

        store = open_keyring(keyring_path).trust_store()
    for path in trusted_keys:
        try:
            data = json.loads(path.read_text())
            store.add(str(data["key_id"]), base64.b64decode(data["public_key"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{path} is not a checkpoint public key file ({exc}).",
                                     hint="Write one with `sealinfer audit checkpoint-key export -o FILE`.") from None
    return store


def _untrusted() -> UntrustedCheckpointKeysError:
    return UntrustedCheckpointKeysError(
        "The chain and checkpoint signatures hold, but only against public keys stored in the log itself: "
        "whoever could rewrite the log could have re-signed it.",
        hint="Pass --keyring DIR or --trusted-key FILE (or --allow-untrusted to accept this explicitly).")


@click.group(name="audit")
def audit() -> None:
    """Verify, prove and archive the tamper-evident audit log.

    Exit codes: 0 verified with trusted keys; 1 integrity FAILED; 2 missing file or not an audit log;
    4 intact but checkpoint keys not independently trusted.
    """


@audit.command(name="verify")
@_DB
@_KEYRING
@_TRUSTED
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="An exported checkpoint (JSON) kept outside the log; detects truncation behind it.")
@click.option("--allow-untrusted", is_flag=True, help="Exit 0 even if checkpoint keys come only from the log.")
@_JSON
def verify_cmd(db: Path, keyring_path: Path | None, trusted_keys: tuple[Path, ...], checkpoints: tuple[Path, ...],
               allow_untrusted: bool, as_json: bool) -> None:
    """Re-derive the hash chain, every Merkle root and checkpoint signature; name the first bad record.

    Exits 0 only when all of it holds and the checkpoint keys are trusted.
    """
    from sealinfer.runtime.audit.checkpoint import Checkpoint
    from sealinfer.runtime.audit.verify import verify_log

    external = []
    for path in checkpoints:
        try:
            external.append(Checkpoint.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"Cannot read checkpoint {path} ({exc}).", hint="Check the path.") from None
    result = verify_log(db, _trust_store(keyring_path, trusted_keys), external_checkpoints=external)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.summary())
        for problem in result.problems[1:]:
            click.echo(f"  also: {problem}")
        for warning in result.warnings:
            click.echo(f"  note: {warning}")
    if not result.ok:
        where = f" at seq {result.first_bad_seq}" if result.first_bad_seq is not None else ""
        raise AuditIntegrityError(f"Audit log {db} FAILED verification{where}: {result.problem}.",
                                  hint="Treat the log as tampered; restore it from the retention archive "
                                       "(sealinfer audit verify-archive) and investigate.")
    if not result.keys_trusted and not allow_untrusted:
        raise _untrusted()


@audit.command(name="prove")
@click.argument("seq", type=int)
@_DB
@click.option("--tree-size", type=int, default=None, help="Tree size to prove against (default: newest checkpoint).")
def prove_cmd(seq: int, db: Path, tree_size: int | None) -> None:
    """Print an RFC 9162 inclusion proof that record SEQ is in the log (JSON), after checking it."""
    from sealinfer.runtime.audit.proofs import inclusion_proof, verify_inclusion_proof

    proof = inclusion_proof(db, seq, tree_size)
    verify_inclusion_proof(proof)
    echo_json(proof.to_dict())


@audit.command(name="consistency")
@click.argument("old", type=int)
@click.argument("new", type=int)
@_DB
def consistency_cmd(old: int, new: int, db: Path) -> None:
    """Print an RFC 9162 consistency proof that the first OLD records are a prefix of the first NEW."""
    from sealinfer.runtime.audit.proofs import consistency_proof, verify_consistency_proof

    proof = consistency_proof(db, old, new)
    verify_consistency_proof(proof)
    echo_json(proof.to_dict())


@audit.command(name="checkpoint")
@_DB
@click.option("-o", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the newest signed checkpoint here (default: stdout).")
def checkpoint_cmd(db: Path, output: Path | None) -> None:
    """Export the newest signed checkpoint, to keep outside the log (a witness against truncation)."""
    from sealinfer.runtime.audit import schema
    from sealinfer.runtime.audit.checkpoint import Checkpoint

    conn, log_id = schema.open_readonly(db)
    try:
        row = conn.execute("SELECT tree_size, root, time, key_id, signature FROM audit_checkpoints "
                           "ORDER BY tree_size DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    if row is None:
        raise StoreError(f"Audit log {db} has no signed checkpoint yet.",
                         hint="Checkpoints are written every N records, every T seconds and on close.")
    text = Checkpoint(log_id, row[0], bytes(row[1]), row[2], row[3], bytes(row[4])).to_json()
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
        click.echo(f"checkpoint at tree size {row[0]} written to {output}")


@audit.command(name="recover")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The audit log (audit.db) whose writer crashed.")
@click.option("--keyring", "keyring_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="SEALINFER_KEYRING", show_envvar=True, help="Keyring whose signing key signs the checkpoint.")
def recover_cmd(db: Path, keyring_path: Path) -> None:
    """Store the records a crashed writer acknowledged but left in the journal, and sign a checkpoint.

    The runtime does the same when it next opens the log; run this when it will not be restarted soon
    (before an audit, or to archive the log). Refused while the log's writer is running.
    """
    from sealinfer.runtime.audit import schema
    from sealinfer.runtime.audit.log import AuditLog
    from sealinfer.runtime.cli.common import open_keyring

    conn, _ = schema.open_readonly(db)  # refuses what is not an audit log before anything is written
    try:
        stored = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()[0]
    finally:
        conn.close()
    keyring = open_keyring(keyring_path)
    with AuditLog(db, signer=keyring.signer()) as log:  # opening for writing is the recovery
        size = log.size
    waiting = size - stored
    if waiting:
        click.echo(f"stored {waiting:,} record(s) from the journal; {db} now holds {size:,} records, "
                   "closed with a signed checkpoint")
    else:
        click.echo(f"nothing waited in the journal; {db} holds {size:,} records")


@audit.command(name="export")
@_DB
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (.tar.gz).")
@click.option("--keyring", "keyring_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="SEALINFER_KEYRING", show_envvar=True, help="Keyring whose signing key signs the archive.")
def export_cmd(db: Path, output: Path, keyring_path: Path) -> None:
    """Write a signed retention archive of the whole log (verification result included)."""
    from sealinfer.runtime.audit.export import export_log
    from sealinfer.runtime.cli.common import open_keyring

    keyring = open_keyring(keyring_path)
    manifest = export_log(db, output, keyring.signer(), keyring.trust_store())
    verdict = manifest["verification"]
    click.echo(f"archived {manifest['records']} records to {output} (signed by {manifest['exporter_key_id']}); "
               f"verification at export: {'OK' if verdict['ok'] else 'FAILED: ' + str(verdict['problem'])}")


@audit.command(name="verify-archive")
@click.argument("archive", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_KEYRING
@_TRUSTED
@_JSON
def verify_archive_cmd(archive: Path, keyring_path: Path | None, trusted_keys: tuple[Path, ...],
                       as_json: bool) -> None:
    """Check an exported archive: manifest signature, file digests, chain and checkpoints."""
    from sealinfer.runtime.audit.export import verify_archive

    store = _trust_store(keyring_path, trusted_keys)
    if store is None:
        raise ConfigurationError("Verifying an archive needs a trusted key.", hint="Pass --keyring or --trusted-key.")
    result = verify_archive(archive, store)
    echo_json(result.to_dict()) if as_json else click.echo(result.summary())
    if not result.ok:
        raise AuditIntegrityError(f"Archive {archive} FAILED verification: {result.problem}.",
                                  hint="Use another retained copy.")


@audit.group(name="checkpoint-key")
def checkpoint_key() -> None:
    """The public key that verifies checkpoints, to hand to auditors."""


@checkpoint_key.command(name="export")
@click.option("--keyring", "keyring_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="SEALINFER_KEYRING", show_envvar=True, help="Keyring holding the audit signing key.")
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
def checkpoint_key_export(keyring_path: Path, output: Path) -> None:
    """Write the active signing key's public half as JSON (for --trusted-key)."""
    from sealinfer.runtime.cli.common import open_keyring
    from sealinfer.runtime.keys.signing import public_key_fingerprint

    signer = open_keyring(keyring_path).signer()
    public = signer.public_key_bytes()
    output.write_text(json.dumps({"key_id": signer.key_id, "public_key": base64.b64encode(public).decode(),
                                  "fingerprint": public_key_fingerprint(public)}, indent=2) + "\n")
    click.echo(f"public key {signer.key_id} ({public_key_fingerprint(public)}) written to {output}")


_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]


@click.command(name="report")
@_DB
@click.option("--telemetry-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="telemetry.db for request counts per outcome and device.")
@click.option("--from", "start", required=True, type=click.DateTime(_DATE_FORMATS), help="Start (UTC).")
@click.option("--to", "end", required=True, type=click.DateTime(_DATE_FORMATS),
              help="End (UTC); a bare date includes that whole day.")
@click.option("--format", "fmt", type=click.Choice(["html", "pdf", "json"]), default="pdf", show_default=True)
@click.option("-o", "output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@_KEYRING
@_TRUSTED
@click.option("--allow-untrusted", is_flag=True, help="Exit 0 even if checkpoint keys come only from the log.")
def report(db: Path, telemetry_db: Path | None, start: datetime, end: datetime, fmt: str, output: Path,
           keyring_path: Path | None, trusted_keys: tuple[Path, ...], allow_untrusted: bool) -> None:
    """HIPAA §164.312 evidence report (HTML, PDF or JSON) for a period, from the audit log.

    The log is verified first; a report on a log that fails verification says FAILED on its first
    line and the command exits 1. Safeguards without evidence are marked NO EVIDENCE.
    """
    from sealinfer.runtime.reports.evidence import build_report

    start_utc = start.replace(tzinfo=UTC)
    end_utc = end.replace(tzinfo=UTC)
    if (end.hour, end.minute, end.second) == (0, 0, 0):
        end_utc += timedelta(days=1)
    keys = None
    if keyring_path is not None:
        from sealinfer.runtime.cli.common import open_keyring

        keys = [k.to_dict() for k in open_keyring(keyring_path).list_keys()]
    rep = build_report(db, telemetry_db=telemetry_db, start=start_utc, end=end_utc,
                       trust_store=_trust_store(keyring_path, trusted_keys), keys=keys)
    if fmt == "json":
        output.write_text(rep.to_json() + "\n")
    elif fmt == "html":
        from sealinfer.runtime.reports.html import render_html

        output.write_text(render_html(rep), encoding="utf-8")
    else:
        from sealinfer.runtime.reports.pdf import render_pdf

        render_pdf(rep, output)
    click.echo(f"{fmt} report written to {output}: integrity {rep.integrity}, {rep.events} records in period")
    if rep.failed:
        raise AuditIntegrityError(f"The audit log FAILED verification: {rep.verification['problem']}.",
                                  hint="The report says so on its first page; investigate before relying on it.")
    if rep.integrity != "VERIFIED" and not allow_untrusted:
        raise _untrusted()
    if rep.empty:
        raise EmptyPeriodError(f"No audit records between {rep.period_start} and {rep.period_end}.",
                               hint="Check the dates (UTC) and that --db is the log the runtime writes.")
