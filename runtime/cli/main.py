"""The ``sealinfer`` command: one group whose subcommands mirror the Python API.

Each command group lives in its own module under ``sealinfer.runtime.cli`` and is listed in
``_COMMAND_MODULES``; modules import heavy libraries (torch, streamlit) inside their commands so
``sealinfer --help`` stays fast. Any ``SealinferError`` is printed as one line, without a
traceback, and the process exits with the error's ``exit_code``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from sealinfer.runtime.errors import SealinferError

# (module, attribute) pairs; the attribute is a click.Command or click.Group.
_COMMAND_MODULES: list[tuple[str, str]] = [
    ("sealinfer.runtime.cli.keys_cmd", "keys"),
    ("sealinfer.runtime.cli.artifact_cmd", "seal"),
    ("sealinfer.runtime.cli.artifact_cmd", "inspect"),
    ("sealinfer.runtime.cli.artifact_cmd", "verify"),
    ("sealinfer.runtime.cli.run_cmd", "run"),
    ("sealinfer.runtime.cli.demo_cmd", "demo"),
    ("sealinfer.runtime.cli.watermark_cmd", "watermark"),
    ("sealinfer.runtime.cli.dp_cmd", "dp"),
    ("sealinfer.runtime.cli.policy_cmd", "policy"),
    ("sealinfer.runtime.cli.scheduler_cmd", "devices"),
    ("sealinfer.runtime.cli.scheduler_cmd", "schedule"),
    ("sealinfer.runtime.cli.audit_cmd", "audit"),
    ("sealinfer.runtime.cli.audit_cmd", "report"),
    ("sealinfer.runtime.cli.dashboard_cmd", "dashboard"),
    ("sealinfer.runtime.cli.bench_cmd", "bench"),
]


class SealinferGroup(click.Group):
    """Turns ``SealinferError`` into a one-line message and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SealinferError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=SealinferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealinfer")
def cli() -> None:
    """sealinfer: sealed, policy-checked, audited ONNX inference for hospitals.

    Keys live in a keyring folder given by --keyring or SEALINFER_KEYRING; its passphrase comes
    from SEALINFER_PASSPHRASE or a prompt.
    """


def _register() -> None:
    for module_name, attr in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that command group is not built yet
                continue
            raise
        command = getattr(module, attr, None)
        if command is not None:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        # With standalone_mode=False click returns the exit code of ctx.exit() instead of raising.
        rv = cli.main(args=argv, prog_name="sealinfer", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
