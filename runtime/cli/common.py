"""Options and helpers shared by the CLI command modules."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from sealinfer.runtime.errors import ConfigurationError, SealinferError

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


def load_arrays(path: Path | str, *, what: str, hint: str,
                error: type[SealinferError] = ConfigurationError) -> Any:
    """The array of a ``.npy``, or the named arrays of a ``.npz`` as a dict, never unpickling anything.

    Anything else is ``error("Cannot read <what> from <path>: ...", hint=hint)``.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"Cannot read {what} from {path}: it does not exist.", hint=hint)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {name: np.asarray(loaded[name]) for name in loaded.files}
        return loaded
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        # numpy's own advice for pickled data is to load it unsafely: never the right advice here
        why = "numpy would have to unpickle it, which sealinfer never does" if "pickle" in str(exc) else str(exc)
        raise error(f"Cannot read {what} from {path}: it is not an .npz or .npy of arrays ({why}).",
                    hint=hint) from None


def load_npz(path: Path | str, *, what: str, hint: str,
             error: type[SealinferError] = ConfigurationError) -> dict[str, Any]:
    """The named arrays of a ``.npz`` (see :func:`load_arrays`); a lone ``.npy`` array is refused."""
    arrays = load_arrays(path, what=what, hint=hint, error=error)
    if not isinstance(arrays, dict):
        raise error(f"Cannot read {what} from {path}: it is one array, not an .npz of named arrays.", hint=hint)
    return arrays
