"""``sealinfer run``: one inference on a sealed model, as ``Runtime.load(...).run(...)`` does it.

Inputs come from ``.npy`` files (``--input NAME=FILE``) or one ``.npz`` holding every input by name,
read without pickle. With ``--policy`` the call goes through the whole pipeline (authorization,
validation, output guards, audit, telemetry) as ``--user/--role/--purpose``; the exit code says how it
ended (3 denied, 2 bad arguments, 1 any other refusal or failure, a refused input included) and the
audit record's seq is printed either way.

Outputs are predictions about patients: by default only their names, dtypes and shapes are printed.
``-o FILE.npz`` writes them (mode 0600) and ``--json`` prints their values, both on request only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from sealinfer.runtime.atomic import atomic_output
from sealinfer.runtime.cli.common import keyring_option, load_arrays, load_npz, open_keyring
from sealinfer.runtime.errors import ConfigurationError, InputValidationError, SealinferError


@click.command(name="run")
@click.argument("artifact", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--input", "input_specs", multiple=True, metavar="NAME=FILE.npy",
              help="One model input from a .npy file (repeatable).")
@click.option("--inputs", "npz", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A .npz file holding every model input by name.")
@keyring_option
@click.option("--policy", "policy_name", default=None,
              help="Policy profile name or YAML path: authorize, validate, guard, audit and time the call.")
@click.option("--audit-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Audit log (required with --policy).")
@click.option("--telemetry-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Telemetry store (optional, with --policy).")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Device descriptor file (which devices are attested, where they are).")
@click.option("--user", default=None, help="Who asks (with --policy).")
@click.option("--role", default=None, help="clinician, researcher, ops, auditor or service (with --policy).")
@click.option("--purpose", default=None, help="treatment, operations or research (with --policy).")
@click.option("--tenant", default=None, help="Tenant (ward, department) for quotas and reports.")
@click.option("--break-glass", is_flag=True, help="Emergency access (clinicians only; audited loudly).")
@click.option("-o", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the outputs to this .npz file (mode 0600).")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs' values as JSON.")
def run(artifact: Path, input_specs: tuple[str, ...], npz: Path | None, keyring_path: Path,
        policy_name: str | None, audit_db: Path | None, telemetry_db: Path | None, devices_file: Path | None,
        user: str | None, role: str | None, purpose: str | None, tenant: str | None, break_glass: bool,
        output: Path | None, as_json: bool) -> None:
    """Run ARTIFACT (.sealed) once on the given inputs and report or save its outputs."""
    from sealinfer.runtime import Runtime
    from sealinfer.runtime.caller import Caller

    inputs = read_inputs(input_specs, npz)
    keyring = open_keyring(keyring_path)
    if policy_name is None:
        if any(v is not None for v in (audit_db, telemetry_db, user, role, purpose, tenant)) or break_glass:
            raise ConfigurationError("--audit-db, --telemetry-db and the caller options need --policy.",
                                     hint="Add --policy hipaa (or your profile), or drop them.")
        with Runtime(keyring).load(artifact) as session:
            _report(session.run(inputs), output, as_json)
        return
    if audit_db is None or not (user and role and purpose):
        raise ConfigurationError("Running under a policy needs --audit-db, --user, --role and --purpose.",
                                 hint="e.g. --audit-db audit.db --user dr.grey --role clinician --purpose treatment")
    caller = Caller(user, role, purpose, tenant=tenant, break_glass=break_glass)
    with Runtime(keyring, policy_name, audit_db=audit_db, telemetry_db=telemetry_db, devices=devices_file) as rt:
        try:
            with rt.load(artifact, caller=caller) as session:
                outputs = session.run(inputs, caller=caller)
        except SealinferError as exc:  # every refusal is audited: say where, then the error itself
            seq = getattr(exc, "audit_seq", None) or rt.audit_log.size
            click.echo(f"audit record: seq {seq} in {audit_db}", err=True)
            raise
        _report(outputs, output, as_json)
        click.echo(f"audit record: seq {rt.audit_log.size} in {audit_db}", err=True)


def read_inputs(specs: tuple[str, ...], npz: Path | None) -> dict[str, np.ndarray]:
    """The model inputs named on the command line, read with ``allow_pickle=False``."""
    if bool(specs) == (npz is not None):
        raise ConfigurationError("Give the inputs as --input NAME=FILE.npy (repeatable) or as --inputs FILE.npz.",
                                 hint="`sealinfer inspect ARTIFACT` lists the model's input names, dtypes and shapes.")
    if npz is not None:
        return load_npz(npz, what="inputs", hint="Write them with numpy.savez(path, input=array, ...).",
                        error=InputValidationError)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise ConfigurationError(f"--input {spec!r} is not NAME=FILE.npy.", hint="e.g. --input input=x.npy")
        if name in inputs:
            raise ConfigurationError(f"Input {name!r} is given twice.", hint="Give each input once.")
        value = load_arrays(file, what=f"input {name!r}", hint="Write it with numpy.save(path, array).",
                            error=InputValidationError)
        if isinstance(value, dict):
            raise InputValidationError(f"{file} is a .npz archive, not one array.",
                                       hint="Pass it as --inputs FILE.npz instead.")
        inputs[name] = value
    return inputs


def _report(outputs: dict[str, Any], output: Path | None, as_json: bool) -> None:
    if output is not None:
        with atomic_output(output, mode=0o600) as fh:  # owner only; never a half-written file of predictions
            np.savez(fh, **outputs)
        click.echo(f"wrote {len(outputs)} output(s) to {output}")
    if as_json:
        click.echo(json.dumps({k: np.asarray(v).tolist() for k, v in outputs.items()}))
    elif output is None:
        for name, value in outputs.items():
            arr = np.asarray(value)
            click.echo(f"{name}: {arr.dtype} {list(arr.shape)}")
