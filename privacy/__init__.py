"""Differential privacy: certificates checked with Opacus, DP training, audits, DP statistics.

A leaf library: it imports nothing from the runtime but ``sealinfer.runtime.errors``. Heavy
dependencies (torch, opacus, onnxruntime, opendp) are imported inside the functions that need them,
so importing this package is cheap.

    from sealinfer.privacy import Certificate, check_certificate
    verdict = check_certificate(Certificate.from_json(text), max_epsilon=8.0, model_bytes=onnx)
    verdict.raise_for_failure()
"""

from sealinfer.privacy.accounting import PrivacyVerdict, check_certificate, compute_epsilon
from sealinfer.privacy.audit import MembershipAudit, audit_membership
from sealinfer.privacy.certificate import Certificate, Segment, sha256_hex
from sealinfer.privacy.errors import (
    AccountantError,
    BudgetExceededError,
    CertificateError,
    LedgerError,
    PrivacyError,
    PrivacyParameterError,
)
from sealinfer.privacy.ledger import BudgetLedger
from sealinfer.privacy.stats import DPStatistics, Release
from sealinfer.privacy.training import DPTrainingResult, TrainingResult, train_baseline, train_dp

__all__ = [
    "AccountantError",
    "BudgetExceededError",
    "BudgetLedger",
    "Certificate",
    "CertificateError",
    "DPStatistics",
    "DPTrainingResult",
    "LedgerError",
    "MembershipAudit",
    "PrivacyError",
    "PrivacyParameterError",
    "PrivacyVerdict",
    "Release",
    "Segment",
    "TrainingResult",
    "audit_membership",
    "check_certificate",
    "compute_epsilon",
    "sha256_hex",
    "train_baseline",
    "train_dp",
]
