"""``--hsm-token`` option: add a PKCS#11 token as a key provider (PIN from SEALINFER_HSM_PIN)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def hsm_option(func: F) -> F:
    return click.option(
        "--hsm-token",
        "hsm_tokens",
        multiple=True,
        envvar="SEALINFER_HSM_TOKEN",
        show_envvar=True,
        help="Label of a PKCS#11 token to use as a key provider (module: SEALINFER_PKCS11_MODULE, "
        "PIN: SEALINFER_HSM_PIN). Repeatable.",
    )(func)


def hsm_providers(labels: tuple[str, ...]) -> list[Any]:
    if not labels:
        return []
    from sealinfer.runtime.keys.pkcs11 import Pkcs11Provider

    return [Pkcs11Provider(token_label=label) for label in labels]
