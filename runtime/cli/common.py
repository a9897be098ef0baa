"""Options and helpers shared by the CLI command modules."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sealinfer.runtime.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_KEYRING = "~/.sealinfer/keyring"


def keyring_option(func: F) -> F:
    """Add ``--keyring DIR`` (env ``SEALINFER_KEYRING``) to a command."""
    return click.option(
        "--keyring",
        "keyring_path",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SEALINFER_KEYRING",
        default=DEFAULT_KEYRING,
        show_default=True,
        show_envvar=True,
        help="Keyring folder.",
    )(func)


def passphrase(*, confirm: bool = False) -> str:
    """The keyring passphrase from ``SEALINFER_PASSPHRASE`` or an interactive prompt."""
    value = os.environ.get("SEALINFER_PASSPHRASE")
    if value:
        return value
    if not click.get_text_stream("stdin").isatty():
        raise ConfigurationError(
            "No keyring passphrase: SEALINFER_PASSPHRASE is unset and there is no terminal to prompt on.",
            hint="Set SEALINFER_PASSPHRASE in the service's environment (from your secret store).",
        )
    return str(click.prompt("Keyring passphrase", hide_input=True, confirmation_prompt=confirm))


def open_keyring(path: Path | str) -> Any:
    """Open the keyring at ``path`` (expanding ``~``), asking for the passphrase if needed."""
    from sealinfer.runtime.keys.keyring import Keyring

    return Keyring.open(Path(path).expanduser(), passphrase())


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
