"""``sealinfer seal | inspect | verify``: make and check sealed artifacts (mirrors ``seal_model``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sealinfer.runtime.cli.common import echo_json, keyring_option, open_keyring
from sealinfer.runtime.cli.hsm import hsm_option, hsm_providers
from sealinfer.runtime.errors import ConfigurationError


@click.command()
@keyring_option
@hsm_option
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="OUT.sealed")
@click.option("--recipient", "recipients", multiple=True, help="KEK id to wrap for (repeatable; default: active KEK).")
@click.option("--name", default=None, help="Model name (default: file stem).")
@click.option("--version", "version", default="1", show_default=True, help="Model version.")
@click.option("--policy", default=None, help="Policy profile to compile for (name or YAML path).")
@click.option("--phi/--no-phi", default=True, show_default=True, help="Whether the model processes PHI.")
@click.option("--watermark-payload", default=None, help="Text to watermark into the weights (≤ 32 bytes).")
@click.option("--dp-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="DP certificate JSON.")
@click.option("--max-epsilon", type=float, default=None, help="Epsilon limit (default: the policy's).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def seal(
    keyring_path: Path,
    hsm_tokens: tuple[str, ...],
    model: Path,
    output: Path,
    recipients: tuple[str, ...],
    name: str | None,
    version: str,
    policy: str | None,
    phi: bool,
    watermark_payload: str | None,
    dp_cert: Path | None,
    max_epsilon: float | None,
    progress: bool,
) -> None:
    """Seal MODEL (.onnx) into an encrypted, signed artifact."""
    from sealinfer.runtime.compiler import SealOptions, seal_model, seal_options_for_policy

    ring = open_keyring(keyring_path)
    cert = None
    if dp_cert is not None:
        try:
            cert = json.loads(dp_cert.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{dp_cert} is not JSON ({exc}).", hint="Pass the certificate train_dp wrote."
            ) from None
    options = SealOptions(
        name=name,
        version=version,
        recipients=recipients,
        phi=phi,
        watermark_payload=watermark_payload.encode("utf-8") if watermark_payload is not None else None,
        dp_certificate=cert,
        max_epsilon=max_epsilon,
        progress=progress,
    )
    if policy is not None:
        options = seal_options_for_policy(options, policy)
    artifact = seal_model(model, output, keyring=ring, providers=hsm_providers(hsm_tokens), options=options)
    m = artifact.manifest
    click.echo(
        f"sealed {m['model']['name']} v{m['model']['version']} -> {output} "
        f"({artifact.payload.segment_count} segments, signer {m['signer_key_id']}, "
        f"recipients {', '.join(r.kek_id for r in artifact.recipients)})"
    )


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
def inspect(artifact: Path) -> None:
    """Print ARTIFACT's manifest and recipients as JSON (no keys needed; nothing secret shown)."""
    from sealinfer.runtime.artifact import SealedArtifact

    echo_json(SealedArtifact.open(artifact).inspect())


@click.command()
@keyring_option
@hsm_option
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def verify(keyring_path: Path, hsm_tokens: tuple[str, ...], artifact: Path, as_json: bool, progress: bool) -> None:
    """Verify ARTIFACT: signature, keys and every segment. Exit 0 only if all hold."""
    from sealinfer.runtime.verification import verify_artifact

    result = verify_artifact(
        artifact, open_keyring(keyring_path), providers=hsm_providers(hsm_tokens), progress=progress
    )
    if as_json:
        echo_json({"ok": True, **result.to_dict()})
    else:
        click.echo(
            f"OK {result.path}: {result.model} v{result.version}, signed by {result.signer_key_id}, "
            f"opened with {result.opened_with}, {result.segments} segments authenticated, "
            f"sha256 {result.content_sha256}"
        )
