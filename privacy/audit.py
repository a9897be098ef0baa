"""Empirical privacy audit: a loss-threshold membership-inference attack and the epsilon it proves.

The attack (Yeom et al., 2018) guesses "member" when a record's loss under the model is below a
threshold. For every threshold, (epsilon, delta)-DP bounds what any such test can achieve
(Kairouz et al., 2015):  FPR + e^eps * FNR >= 1 - delta  and  FNR + e^eps * FPR >= 1 - delta.
Replacing FPR and FNR by Clopper-Pearson *upper* confidence bounds turns an observed attack into a
lower bound on the model's true epsilon (Jagielski et al., 2020; Nasr et al., 2021).

Confidence: every (threshold, rate) interval is taken at level 1 - alpha / (2K) for K thresholds, so
by the union bound all hold together with probability >= 1 - alpha (default 95%). The reported bound
is the largest over thresholds and therefore holds with that confidence, *assuming each audited record
is an independent trial* - the usual audit assumption, which is exact only when every record's
membership was decided by an independent coin flip before training. It is a test that can expose an
overstated certificate (``flagged``), not a proof that a model is private.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sealinfer.privacy import onnx_io
from sealinfer.privacy.errors import PrivacyParameterError

_MAX_THRESHOLDS = 128
_TARGET_FPR = 1e-3


@dataclass(frozen=True)
class MembershipAudit:
    """Outcome of ``audit_membership``. ``flagged``: the certificate's epsilon is below the proven bound."""

    auc: float
    tpr_at_fpr_1e3: float
    epsilon_lower_bound: float
    confidence: float
    delta: float
    n_members: int
    n_non_members: int
    best_threshold: float | None
    certificate_epsilon: float | None
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "tpr_at_fpr_1e3": self.tpr_at_fpr_1e3,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "delta": self.delta,
            "n_members": self.n_members,
            "n_non_members": self.n_non_members,
            "best_threshold": self.best_threshold,
            "certificate_epsilon": self.certificate_epsilon,
            "flagged": self.flagged,
        }


def audit_membership(
    model_bytes: bytes,
    members: tuple[np.ndarray, np.ndarray],
    non_members: tuple[np.ndarray, np.ndarray],
    *,
    delta: float = 1e-5,
    certificate_epsilon: float | None = None,
    confidence: float = 0.95,
    outputs: str = "logits",
) -> MembershipAudit:
    """Attack the ONNX classifier ``model_bytes`` with per-record losses; ``members`` were trained on.

    ``members`` and ``non_members`` are ``(X, y)`` with integer labels; ``outputs`` says whether the
    model's first output is "logits" or "probabilities".
    """
    if not 0 <= delta < 1:
        raise PrivacyParameterError(f"delta={delta!r} must be in [0, 1).", hint="Use the certificate's delta.")
    if not 0.5 <= confidence < 1:
        raise PrivacyParameterError(f"confidence={confidence!r} must be in [0.5, 1).", hint="0.95 is customary.")
    if certificate_epsilon is not None and not (math.isfinite(certificate_epsilon) and certificate_epsilon >= 0):
        raise PrivacyParameterError(f"certificate_epsilon={certificate_epsilon!r} is not a finite epsilon.",
                                    hint="Pass the verdict's epsilon.")
    sess = onnx_io.session(model_bytes)
    loss_in = per_example_loss(sess, *_check_split("members", members), outputs=outputs)
    loss_out = per_example_loss(sess, *_check_split("non_members", non_members), outputs=outputs)
    # Lower loss means "more likely a member": score = -loss.
    s_in, s_out = -loss_in, -loss_out
    auc = _auc(s_in, s_out)
    tpr = _tpr_at_fpr(s_in, s_out, _TARGET_FPR)
    eps_lb, threshold = epsilon_lower_bound(s_in, s_out, delta=delta, confidence=confidence)
    flagged = certificate_epsilon is not None and certificate_epsilon < eps_lb
    return MembershipAudit(
        auc=auc, tpr_at_fpr_1e3=tpr, epsilon_lower_bound=eps_lb, confidence=confidence, delta=float(delta),
        n_members=len(s_in), n_non_members=len(s_out),
        best_threshold=None if threshold is None else float(-threshold),  # reported as a loss threshold
        certificate_epsilon=certificate_epsilon, flagged=flagged,
    )


def per_example_loss(sess: Any, X: np.ndarray, y: np.ndarray, *, outputs: str = "logits") -> np.ndarray:
    """Cross-entropy of each record under an onnxruntime classifier session."""
    out = onnx_io.run(sess, X).astype(np.float64)
    if out.ndim != 2 or out.shape[0] != len(y):
        raise PrivacyParameterError(f"the model's output has shape {out.shape}; expected (rows, classes).",
                                    hint="Audit a classifier whose first output is per-class scores.")
    if y.max(initial=0) >= out.shape[1]:
        raise PrivacyParameterError(f"labels go up to {int(y.max())} but the model has {out.shape[1]} classes.",
                                    hint="Pass the labels the model was trained with.")
    rows = np.arange(len(y))
    if outputs == "logits":
        shifted = out - out.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probs[rows, y]
    if outputs == "probabilities":
        return -np.log(np.clip(out[rows, y], 1e-300, 1.0))
    raise PrivacyParameterError(f"outputs={outputs!r} is unknown.", hint="Use 'logits' or 'probabilities'.")


def epsilon_lower_bound(
    member_scores: np.ndarray, non_member_scores: np.ndarray, *, delta: float, confidence: float = 0.95
) -> tuple[float, float | None]:
    """(epsilon lower bound, score threshold achieving it) for "member iff score > threshold" tests."""
    from scipy.stats import beta

    s_in = np.sort(np.asarray(member_scores, dtype=np.float64))
    s_out = np.sort(np.asarray(non_member_scores, dtype=np.float64))
    pooled = np.unique(np.concatenate([s_in, s_out]))
    if len(pooled) > _MAX_THRESHOLDS:
        pooled = np.unique(np.quantile(pooled, np.linspace(0, 1, _MAX_THRESHOLDS)))
    # -inf is the test that calls everyone a member.
    thresholds = np.concatenate([[-np.inf], pooled])
    alpha_each = (1 - confidence) / (2 * len(thresholds))
    n_in, n_out = len(s_in), len(s_out)
    fn = np.searchsorted(s_in, thresholds, side="right")  # members with score <= t are missed
    fp = n_out - np.searchsorted(s_out, thresholds, side="right")  # non-members with score > t
    fnr_hi = _cp_upper(fn, n_in, alpha_each, beta)
    fpr_hi = _cp_upper(fp, n_out, alpha_each, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log((1 - delta - fpr_hi) / fnr_hi)
        b = np.log((1 - delta - fnr_hi) / fpr_hi)
    eps = np.nan_to_num(np.maximum(a, b), nan=0.0, neginf=0.0, posinf=0.0)
    best = int(np.argmax(eps))
    if eps[best] <= 0:
        return 0.0, None
    return float(eps[best]), float(thresholds[best])


def _cp_upper(k: np.ndarray, n: int, alpha: float, beta: Any) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound on a rate with k successes out of n."""
    k = np.asarray(k, dtype=np.float64)
    upper = beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1e-12))
    return np.where(k >= n, 1.0, upper)


def _auc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    from scipy.stats import rankdata

    # Mann-Whitney U with average ranks for ties.
    ranks = rankdata(np.concatenate([s_in, s_out]))
    u = ranks[: len(s_in)].sum() - len(s_in) * (len(s_in) + 1) / 2
    return float(u / (len(s_in) * len(s_out)))


def _tpr_at_fpr(s_in: np.ndarray, s_out: np.ndarray, fpr: float) -> float:
    allowed = int(math.floor(fpr * len(s_out)))  # false positives the FPR budget permits
    threshold = np.sort(s_out)[::-1][allowed] if allowed < len(s_out) else -np.inf
    return float(np.mean(s_in > threshold))


def _check_split(name: str, split: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(split, tuple | list) or len(split) != 2:
        raise PrivacyParameterError(f"{name} must be a pair (X, y).", hint="Pass (features, labels).")
    X, y = np.asarray(split[0]), np.asarray(split[1])
    if X.ndim < 2 or len(X) == 0 or y.shape != (len(X),):
        raise PrivacyParameterError(f"{name}: X has shape {X.shape} and y {y.shape}; need (n, ...) and (n,), n > 0.",
                                    hint="Pass matching features and labels.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise PrivacyParameterError(f"{name}: labels must be non-negative integers.", hint="Encode classes 0..K-1.")
    if not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise PrivacyParameterError(f"{name}: features must be finite numbers.", hint="Impute or drop NaN/inf.")
    return X.astype(np.float32), y.astype(np.int64)
