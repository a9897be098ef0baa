"""``sealinfer policy``: check, show and try out policy profiles and their Cedar rules."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sealinfer.runtime.errors import PolicyError


@click.group("policy")
def policy() -> None:
    """Policy profiles (YAML) and Cedar authorization rules."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(file: Path, as_json: bool) -> None:
    """Validate a policy profile FILE (or a .cedar policy file) and its Cedar rules.

    Prints OK with the profile id and version, or every problem as FILE:LINE: FIELD: message.
    Exits 0 when valid, 2 when not.
    """
    from sealinfer.runtime.policy.authz import Authorizer
    from sealinfer.runtime.policy.profile import ProfileValidationError, load_profile

    if not file.is_file():
        what = "is not a regular file" if file.exists() else "does not exist"
        raise PolicyError(f"{file} {what}.", hint="Pass the path of a policy profile YAML file.")
    try:
        if file.suffix == ".cedar":
            Authorizer(file.read_text("utf-8"), policy_version=f"check:{file.name}")
            result = {"ok": True, "file": str(file), "kind": "cedar"}
        else:
            profile = load_profile(file)
            authorizer = Authorizer.from_profile(profile)
            result = {
                "ok": True,
                "file": str(file),
                "id": profile.id,
                "version": profile.version,
                "digest": profile.digest,
                "policy_version": authorizer.policy_version,
            }
    except ProfileValidationError as exc:
        if as_json:
            issues = [{"file": i.file, "line": i.line, "field": i.field, "message": i.message,
                       "suggestion": i.suggestion} for i in exc.issues]
            click.echo(json.dumps({"ok": False, "file": str(file), "issues": issues}, indent=2))
        else:
            for issue in exc.issues:
                click.secho(str(issue), fg="red", err=True)
            click.echo(f"{file}: {len(exc.issues)} problem(s)", err=True)
        raise SystemExit(exc.exit_code) from exc
    except PolicyError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": str(file), "error": str(exc)}, indent=2))
            raise SystemExit(exc.exit_code) from exc
        raise
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif result.get("kind") == "cedar":
        click.echo(f"OK {file}: Cedar policies parse and validate against the schema")
    else:
        click.echo(f"OK {file}: {result['id']} {result['version']} (sha256 {str(result['digest'])[:16]}…)")


@policy.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the validated profile as JSON with its digest.")
def show(name: str, as_json: bool) -> None:
    """Show profile NAME (hipaa, research, dev, or a YAML path) after validating it."""
    from sealinfer.runtime.policy.profile import load_profile

    profile = load_profile(name)
    if as_json:
        click.echo(json.dumps({"id": profile.id, "version": profile.version, "digest": profile.digest,
                               "profile": profile.raw}, indent=2))
        return
    import yaml

    click.echo(f"# {profile.id} {profile.version}  sha256:{profile.digest}")
    click.echo(yaml.safe_dump(profile.raw, sort_keys=False).rstrip())


@policy.command("authorize")
@click.option("--profile", "profile_name", default="hipaa", show_default=True, help="Profile name or path.")
@click.option("--user", required=True, help="User id.")
@click.option("--role", required=True, help="clinician, researcher, ops, auditor or service.")
@click.option("--purpose", required=True, help="treatment, operations or research.")
@click.option("--action", default="infer", show_default=True, help="load, infer, inspect or report.")
@click.option("--phi/--no-phi", default=True, show_default=True, help="Whether the model handles PHI.")
@click.option("--break-glass", is_flag=True, help="Request emergency (break-glass) access.")
@click.option("--model", "model_name", default="model", show_default=True, help="Model name.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def authorize(profile_name: str, user: str, role: str, purpose: str, action: str, phi: bool,
              break_glass: bool, model_name: str, as_json: bool) -> None:
    """Ask the profile's Cedar rules whether a caller may act on a model (exit 3 when denied)."""
    from sealinfer.runtime.caller import Caller
    from sealinfer.runtime.policy.authz import Authorizer, ModelResource
    from sealinfer.runtime.policy.profile import load_profile

    authorizer = Authorizer.from_profile(load_profile(profile_name))
    caller = Caller(user, role, purpose, break_glass=break_glass)
    decision = authorizer.authorize(caller, action, ModelResource(model_name, "0", "0" * 64, phi))
    if as_json:
        click.echo(json.dumps({"allowed": decision.allowed, "reasons": list(decision.reasons),
                               "break_glass": decision.break_glass,
                               "policy_version": decision.policy_version}, indent=2))
    else:
        verdict = "ALLOW" if decision.allowed else "DENY"
        click.secho(f"{verdict} {role} {user!r} {action} {'PHI ' if phi else ''}model for {purpose}"
                    f"{'  [BREAK-GLASS]' if break_glass else ''}", fg="green" if decision.allowed else "red")
        for reason in decision.reasons:
            click.echo(f"  - {reason}")
    if not decision.allowed:
        raise SystemExit(3)
