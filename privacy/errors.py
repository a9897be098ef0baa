"""The privacy library's errors: the shared ones from ``sealinfer.runtime.errors`` plus one of its own.

``sealinfer.runtime.errors`` imports nothing, so depending on it keeps this package a leaf.
"""

from __future__ import annotations

from sealinfer.runtime.errors import BudgetExceededError, CertificateError, PrivacyError


class PrivacyParameterError(PrivacyError):
    """An argument to a privacy function is out of range (bad epsilon, delta, bounds, shapes...)."""

    code = "dp_parameter_invalid"
    exit_code = 2


class AccountantError(PrivacyError):
    """A privacy accountant raised, produced no finite epsilon, or ran past its time or memory limit."""

    code = "dp_accountant_failed"


class LedgerError(PrivacyError):
    """The DP budget ledger file is missing, not a ledger, or unwritable."""

    code = "dp_ledger_invalid"


__all__ = [
    "AccountantError",
    "BudgetExceededError",
    "CertificateError",
    "LedgerError",
    "PrivacyError",
    "PrivacyParameterError",
]
