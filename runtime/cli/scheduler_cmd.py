"""``sealinfer devices`` and ``sealinfer schedule``: what can run models here, and where one would run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sealinfer.runtime.errors import ConfigurationError


def _devices(devices_file: str | None) -> list[Any]:
    from sealinfer.runtime.scheduler.devices import load_devices
    from sealinfer.runtime.scheduler.discovery import discover_devices

    discovered = discover_devices()
    if devices_file is None:
        return discovered
    operator = load_devices(devices_file, base={d.id: d for d in discovered})
    return discover_devices(extra=operator)


def _fmt(number: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if number >= factor:
            return f"{number / factor:.1f} {prefix}{unit}"
    return f"{number:.0f} {unit}"


@click.command("devices")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False), default=None,
              help="Operator's device descriptor YAML, merged over auto-discovered devices (by id).")
@click.option("--json", "as_json", is_flag=True, help="Print the descriptors as JSON.")
def devices(devices_file: str | None, as_json: bool) -> None:
    """List the devices the scheduler may place models on (discovered + --devices FILE)."""
    found = _devices(devices_file)
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in found], indent=2, sort_keys=True))
        return
    for d in found:
        flags = ", ".join(f for f, on in (("attested", d.attested), ("confidential", d.confidential)) if on) or "-"
        click.echo(f"{d.id:<16} {d.kind:<4} {d.provider:<28} {d.location:<8} "
                   f"fp32 {_fmt(d.flops_for('fp32'), 'FLOP/s'):>14}  mem {_fmt(d.memory_bytes, 'B'):>9}  "
                   f"{','.join(d.precisions)}  [{flags}]")


def _features(model: Path) -> tuple[Any, bool | None]:
    from sealinfer.runtime.scheduler.features import ModelFeatures, extract_features

    if model.suffix == ".sealed":
        try:
            from sealinfer.runtime.artifact import read_manifest  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ConfigurationError("this build cannot read .sealed manifests yet (sealinfer.runtime.artifact "
                                     "is missing).", hint="Pass the plain .onnx model instead.") from exc
        manifest = read_manifest(model)
        phi = manifest.get("phi")
        return ModelFeatures.from_dict(manifest.get("cost")), phi if isinstance(phi, bool) else None
    import onnx

    from sealinfer.runtime.errors import NotOnnxError

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:
        raise NotOnnxError(f"{model} is not a readable ONNX model ({exc}).",
                           hint="Give a .onnx file or a .sealed artifact.") from exc
    return extract_features(proto), None


@click.command("schedule")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", "policy_name", required=True, help="Policy profile name or YAML path.")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False), default=None,
              help="Operator's device descriptor YAML, merged over auto-discovered devices.")
@click.option("--phi/--no-phi", default=None,
              help="Whether requests carry PHI (default: the artifact's flag; PHI for plain .onnx).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size to place.")
@click.option("--priority", default="routine", show_default=True, help="Priority class of the request.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision and its explanation as JSON.")
def schedule(model: Path, policy_name: str, devices_file: str | None, phi: bool | None, batch: int,
             priority: str, as_json: bool) -> None:
    """Show where MODEL (.onnx or .sealed) would run under --policy, and why every other device would not."""
    from sealinfer.runtime.scheduler.placement import Placer
    from sealinfer.runtime.scheduler.policy import PlacementPolicy, load_policy_raw

    policy = PlacementPolicy.from_profile_dict(load_policy_raw(policy_name))
    features, manifest_phi = _features(model)
    # Fail closed: without an explicit answer, assume the model sees PHI.
    use_phi = phi if phi is not None else (manifest_phi if manifest_phi is not None else True)
    placement = Placer(_devices(devices_file)).place(features, policy, phi=use_phi, batch=batch, priority=priority)
    explanation = placement.explanation
    if as_json:
        click.echo(json.dumps(explanation, indent=2, sort_keys=True))
        return
    click.echo(f"{model.name}: {explanation['chosen']['device']} "
               f"(predicted {placement.predicted_latency_s * 1e3:.3f} ms, policy {policy.policy_id}, phi={use_phi})")
    for candidate in explanation["candidates"]:
        click.echo(f"  candidate {candidate['device']}: predicted {candidate['predicted_latency_s'] * 1e3:.3f} ms")
    for rejected in explanation["rejected"]:
        click.echo(f"  rejected  {rejected['device']}: {rejected['reason']}")
