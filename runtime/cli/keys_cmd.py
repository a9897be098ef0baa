"""``sealinfer keys``: create, list, rotate, revoke and trust keys (mirrors ``Keyring``)."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from sealinfer.runtime.cli.common import echo_json, keyring_option, open_keyring, passphrase
from sealinfer.runtime.cli.hsm import hsm_option, hsm_providers
from sealinfer.runtime.errors import ConfigurationError

KINDS = ["kek", "signing", "watermark", "audit-hmac"]


@click.group()
def keys() -> None:
    """Manage the keyring: KEKs, signing keys, watermark and audit secrets."""


@keys.command("init")
@keyring_option
@click.option("--scrypt-n", type=int, default=2**15, show_default=True, help="scrypt cost (power of two).")
def init(keyring_path: Path, scrypt_n: int) -> None:
    """Create a keyring with one KEK and one signing key."""
    from sealinfer.runtime.keys.keyring import Keyring

    if scrypt_n < 2**10 or scrypt_n & (scrypt_n - 1):
        raise ConfigurationError("--scrypt-n must be a power of two >= 1024.", hint="Keep the default 32768.")
    ring = Keyring.create(keyring_path.expanduser(), passphrase(confirm=True), scrypt_n=scrypt_n)
    click.echo(f"created keyring at {ring.path}")
    for info in ring.list_keys():
        click.echo(f"  {info.id:28} {info.kind:10} {info.status}")


@keys.command("list")
@keyring_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(keyring_path: Path, as_json: bool) -> None:
    """List keys (ids, kinds, status, dates; never key bytes)."""
    ring = open_keyring(keyring_path)
    infos = ring.list_keys()
    if as_json:
        echo_json({"keys": [i.to_dict() for i in infos], "trusted_signers": ring.trusted_signers()})
        return
    click.echo(f"{'KEY ID':28} {'KIND':10} {'STATUS':8} {'CREATED':21} NOTE")
    for i in infos:
        note = f"rotated from {i.rotated_from}" if i.rotated_from else ""
        if i.status == "revoked":
            note = f"revoked {i.revoked_at}: {i.revoke_reason}"
        if i.fingerprint:
            note = f"fingerprint {i.fingerprint} {note}".strip()
        click.echo(f"{i.id:28} {i.kind:10} {i.status:8} {i.created:21} {note}")
    for s in ring.trusted_signers():
        click.echo(f"{s['id']:28} {'trusted':10} {s['status']:8} {s['added']:21} fingerprint {s['fingerprint']}")


@keys.command("rotate")
@keyring_option
@hsm_option
@click.argument("key_id", required=False)
@click.option("--kind", type=click.Choice(KINDS), default="kek", show_default=True, help="Kind to rotate.")
@click.option(
    "--rewrap",
    "rewrap",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sealed artifact to re-wrap for the new KEK (in place; payload not re-encrypted). Repeatable.",
)
def rotate(
    keyring_path: Path, hsm_tokens: tuple[str, ...], key_id: str | None, kind: str, rewrap: tuple[Path, ...]
) -> None:
    """Replace KEY_ID (default: the active key of --kind) with a new key; the old one is retired."""
    from sealinfer.runtime.rotation import rewrap_artifact

    ring = open_keyring(keyring_path)
    old = ring.key_info(key_id) if key_id else ring.key_info(ring.active_key_id(kind))
    new = ring.rotate(old.id)
    click.echo(f"rotated {old.id} -> {new.id} ({new.kind}); {old.id} is now retired")
    if rewrap and new.kind != "kek":
        raise ConfigurationError("--rewrap only applies to KEK rotation.", hint="Drop --rewrap or use --kind kek.")
    providers = hsm_providers(hsm_tokens)
    for path in rewrap:
        rewrap_artifact(path, ring, new_kek_id=new.id, old_kek_id=old.id, providers=providers)
        click.echo(f"re-wrapped {path} for {new.id}")


@keys.command("revoke")
@keyring_option
@click.argument("key_id")
@click.option("--reason", default="unspecified", show_default=True, help="Why (kept in the keyring and reports).")
def revoke(keyring_path: Path, key_id: str, reason: str) -> None:
    """Revoke KEY_ID: artifacts signed by it or wrapped only for it refuse to open."""
    ring = open_keyring(keyring_path)
    ring.revoke(key_id, reason)
    click.echo(f"revoked {key_id}")


@keys.command("trust")
@keyring_option
@click.argument("key_id")
@click.argument("public_key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def trust(keyring_path: Path, key_id: str, public_key_file: Path) -> None:
    """Trust another site's signing key (file from `sealinfer keys export`)."""
    text = public_key_file.read_bytes().strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ConfigurationError(f"{public_key_file} is not a base64 public key.", hint="Use `keys export`.") from None
    ring = open_keyring(keyring_path)
    ring.trust(key_id, raw)
    click.echo(f"now trusting {key_id}")


@keys.command("export")
@keyring_option
@click.argument("key_id", required=False)
def export(keyring_path: Path, key_id: str | None) -> None:
    """Print the base64 public key of a signing key (default: the active one)."""
    ring = open_keyring(keyring_path)
    click.echo(base64.b64encode(ring.public_key(key_id or ring.active_key_id("signing"))).decode())


@keys.command("hsm-generate")
@keyring_option
@hsm_option
@click.option("--label", default=None, help="Label for the new KEK inside the token.")
def hsm_generate(keyring_path: Path, hsm_tokens: tuple[str, ...], label: str | None) -> None:
    """Generate a non-extractable AES-256 KEK inside a PKCS#11 token (--hsm-token)."""
    providers = hsm_providers(hsm_tokens)
    if len(providers) != 1:
        raise ConfigurationError("Name exactly one --hsm-token.", hint="e.g. --hsm-token sealinfer")
    with providers[0] as hsm:
        kek_id = hsm.generate_kek(label)
    click.echo(kek_id)
