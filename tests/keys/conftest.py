"""Fixtures for key tests: real SoftHSM2 tokens (see ``sealinfer.tests.softhsm``)."""

from __future__ import annotations

from sealinfer.tests.softhsm import hsm_token, softhsm  # noqa: F401  (re-exported pytest fixtures)
