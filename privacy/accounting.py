"""Recompute a certificate's epsilon with Opacus's accountants and decide whether it is acceptable.

The checker never trusts the epsilon a certificate states: it rebuilds the accountant history from
the certificate's segments (``opacus.accountants.create_accountant``; total steps are the sum of the
segments) and asks the accountant. Every doubt fails closed with a reason.

Why PRV runs in a forked worker process: the PRV accountant discretises the privacy-loss
distribution on a grid whose size grows as privacy weakens; on a weak certificate (e.g. sigma=0.3,
q=0.5, 10,000 steps) it was measured here allocating >24 GB before the kernel's OOM killer stopped
it. A thread cannot be stopped from outside in CPython (an abandoned thread keeps burning CPU and
memory), so the computation runs in a child process which (1) has an address-space limit
(``RLIMIT_AS``), turning runaway allocation into a ``MemoryError``, and (2) is terminated, then
killed, when the time limit passes. On Linux workers come from a ``forkserver`` with Opacus
preloaded: forking the (possibly multi-threaded) caller could deadlock the child, and a fresh
interpreter per check would spend the time limit importing torch; elsewhere ``spawn`` is used.
The child only runs numpy/scipy code. RDP's cost does not depend on the parameters (a fixed set of
orders, ~10-25 ms per segment), so it runs in-process unless a certificate has many distinct
segments, which then go to the same guarded worker.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sealinfer.privacy.certificate import Certificate
from sealinfer.privacy.errors import AccountantError, CertificateError, PrivacyParameterError

SUPPORTED_ACCOUNTANTS = ("rdp", "prv")
DEFAULT_PRV_MEMORY_LIMIT = 2 << 30  # bytes of address space the PRV worker may add to what it inherits
_CLAIM_TOLERANCE = 0.01
# RDP costs ~10-25 ms per distinct (sigma, q) segment; beyond this many it runs in the guarded worker.
_RDP_INLINE_SEGMENTS = 8  # a stated epsilon more than 1% below the recomputed one is an understatement

History = Sequence[tuple[float, float, int]]


@dataclass(frozen=True)
class PrivacyVerdict:
    """The outcome of ``check_certificate``. ``passed`` is True only when ``reasons`` is empty."""

    passed: bool
    epsilon: float | None
    delta: float
    accountant: str
    reasons: list[str] = field(default_factory=list)
    max_epsilon: float | None = None
    total_steps: int = 0
    model_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        eps = self.epsilon
        return {
            "passed": self.passed,
            # JSON has no inf/NaN; an unusable epsilon is reported as null with its reason.
            "epsilon": eps if eps is not None and math.isfinite(eps) else None,
            "delta": self.delta,
            "accountant": self.accountant,
            "max_epsilon": self.max_epsilon,
            "total_steps": self.total_steps,
            "model_sha256": self.model_sha256,
            "reasons": list(self.reasons),
        }

    def raise_for_failure(self) -> None:
        """Raise ``CertificateError`` naming every reason, unless the certificate passed."""
        if not self.passed:
            raise CertificateError(
                "DP certificate rejected: " + "; ".join(self.reasons) + ".",
                hint="Retrain with more noise, fewer steps or a smaller sampling rate "
                "(sealinfer.privacy.train_dp), or use a policy whose max_epsilon allows this model.",
            )


def compute_epsilon(
    accountant: str,
    history: History,
    delta: float,
    *,
    prv_timeout_s: float = 10.0,
    prv_memory_limit_bytes: int | None = DEFAULT_PRV_MEMORY_LIMIT,
) -> float:
    """Epsilon spent by ``history`` (Opacus ``[(noise_multiplier, sample_rate, steps), ...]``) at ``delta``.

    Raises ``AccountantError`` when the accountant raises, times out, runs out of memory or returns a
    non-finite epsilon. Segments with the same (noise_multiplier, sample_rate) are merged first (both
    accountants compose commutatively). The time limit applies to PRV, and to RDP when more than
    8 distinct segments remain (each costs ~10-25 ms, so a certificate with thousands would stall).
    """
    name = accountant.lower()
    if name not in SUPPORTED_ACCOUNTANTS:
        raise PrivacyParameterError(
            f"accountant {accountant!r} is not supported.", hint=f"Use one of {', '.join(SUPPORTED_ACCOUNTANTS)}."
        )
    if not (isinstance(prv_timeout_s, int | float) and prv_timeout_s > 0):
        raise PrivacyParameterError(f"prv_timeout_s is {prv_timeout_s!r}.", hint="Give a positive number of seconds.")
    hist = _merge(history)
    if name == "rdp" and len(hist) <= _RDP_INLINE_SEGMENTS:
        eps = _rdp_epsilon(hist, delta)
    else:
        eps = _epsilon_guarded(name, hist, delta, prv_timeout_s, prv_memory_limit_bytes)
    if not math.isfinite(eps):
        raise AccountantError(
            f"the {name.upper()} accountant returned epsilon={eps}, i.e. no privacy guarantee.",
            hint="A zero noise multiplier or sample rate 1 with many steps gives no guarantee; add noise.",
        )
    return eps


def check_certificate(
    cert: Certificate | Mapping[str, Any] | str | bytes,
    max_epsilon: float,
    *,
    model_bytes: bytes | None = None,
    prv_timeout_s: float = 10.0,
    require_secure_mode: bool = False,
    prv_memory_limit_bytes: int | None = DEFAULT_PRV_MEMORY_LIMIT,
) -> PrivacyVerdict:
    """Recompute the certificate's epsilon and judge it against ``max_epsilon``.

    A malformed certificate raises ``CertificateError``; a well-formed one always yields a verdict,
    failed (with every reason found) for: a gdp or unknown accountant, non-Poisson sampling,
    delta > 1/dataset_size, an accountant error, timeout or infinite/NaN epsilon, epsilon above
    ``max_epsilon``, a stated epsilon below the recomputed one, a ``model_sha256`` that does not match
    ``model_bytes`` (when given), and secure_mode off when ``require_secure_mode``.
    """
    if not isinstance(cert, Certificate):
        cert = Certificate.from_json(cert)
    if isinstance(max_epsilon, bool) or not isinstance(max_epsilon, int | float) or not (
        math.isfinite(max_epsilon) and max_epsilon > 0
    ):
        raise PrivacyParameterError(
            f"max_epsilon is {max_epsilon!r}.", hint="Give a positive, finite epsilon limit (the policy's max_epsilon)."
        )
    reasons: list[str] = []
    accountant = cert.accountant.lower()
    if accountant == "gdp":
        reasons.append(
            "accountant 'gdp' is not accepted: its central-limit approximation can underestimate epsilon "
            "for few steps or large sampling rates; certify with 'rdp' or 'prv'"
        )
    elif accountant not in SUPPORTED_ACCOUNTANTS:
        reasons.append(f"accountant {cert.accountant!r} is unknown; certify with 'rdp' or 'prv'")
    if cert.sampling.lower() != "poisson":
        reasons.append(
            f"sampling {cert.sampling!r} is not accepted: the accountants' amplification-by-sampling bound "
            "assumes Poisson sampling (Opacus poisson_sampling=True)"
        )
    if cert.delta > 1.0 / cert.dataset_size:
        reasons.append(
            f"delta={cert.delta:g} is above 1/dataset_size={1.0 / cert.dataset_size:g}: such a delta permits "
            "releasing a whole record; use delta < 1/dataset_size"
        )
    if require_secure_mode and not cert.secure_mode:
        reasons.append("secure_mode is off but the policy requires a cryptographically secure noise RNG")
    if model_bytes is not None and not cert.matches_model(model_bytes):
        reasons.append(
            "model digest mismatch: the certificate's model_sha256 is not the SHA-256 of this model, "
            "so the certificate belongs to another model"
        )

    epsilon: float | None = None
    if accountant in SUPPORTED_ACCOUNTANTS:
        try:
            epsilon = compute_epsilon(
                accountant, cert.history(), cert.delta, prv_timeout_s=prv_timeout_s,
                prv_memory_limit_bytes=prv_memory_limit_bytes,
            )
        except AccountantError as exc:
            reasons.append(f"epsilon could not be established: {exc.message}")
        else:
            if epsilon > max_epsilon:
                reasons.append(f"epsilon={epsilon:.4g} is above the limit max_epsilon={max_epsilon:g}")
            if cert.epsilon is not None and cert.epsilon < epsilon * (1 - _CLAIM_TOLERANCE):
                reasons.append(
                    f"the certificate states epsilon={cert.epsilon:.4g} but its parameters give "
                    f"{epsilon:.4g} ({accountant.upper()})"
                )
    return PrivacyVerdict(
        passed=not reasons,
        epsilon=epsilon,
        delta=cert.delta,
        accountant=cert.accountant,
        reasons=reasons,
        max_epsilon=float(max_epsilon),
        total_steps=cert.total_steps,
        model_sha256=cert.model_sha256,
    )


# --- accountants -----------------------------------------------------------------------------------


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import create_accountant

    acc = create_accountant("rdp")
    acc.history = list(history)
    try:
        with warnings.catch_warnings():
            # "optimal order is the largest/smallest alpha": the bound is still valid, only loose.
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta=delta))
    except Exception as exc:  # any accountant failure must fail closed, with its text
        raise AccountantError(f"the RDP accountant failed ({type(exc).__name__}: {exc}).") from exc


def _merge(history: History) -> list[tuple[float, float, int]]:
    steps: dict[tuple[float, float], int] = {}
    for sigma, rate, count in history:
        key = (float(sigma), float(rate))
        steps[key] = steps.get(key, 0) + int(count)
    return [(sigma, rate, count) for (sigma, rate), count in steps.items()]


def _worker(
    accountant: str, history: list[tuple[float, float, int]], delta: float, memory_limit: int | None, conn: Any
) -> None:
    try:
        if memory_limit is not None and sys.platform.startswith("linux"):
            import resource

            limit = _current_address_space() + memory_limit
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from opacus.accountants import create_accountant

        acc = create_accountant(accountant)
        acc.history = list(history)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conn.send(("ok", float(acc.get_epsilon(delta=delta))))
    except BaseException as exc:  # reported to the parent, which fails closed
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:  # the parent then sees EOF and fails closed anyway
            pass
    finally:
        conn.close()


def _current_address_space() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _worker_context() -> Any:
    """Where accountant workers come from: a fork server, started single-threaded, with Opacus loaded.

    Forking the caller directly is unsafe once it has other threads (onnxruntime pools, store
    flushers): the child can inherit a lock another thread held and hang until the time limit. A
    fresh interpreter per check (``spawn``) would spend the time limit importing torch. The fork server
    is both: clean, and paying the import once.
    """
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["opacus.accountants"])
        return ctx
    return multiprocessing.get_context("spawn")


def _epsilon_guarded(
    accountant: str, history: list[tuple[float, float, int]], delta: float, timeout_s: float,
    memory_limit: int | None,
) -> float:
    ctx = _worker_context()
    receiver, sender = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker, args=(accountant, history, delta, memory_limit, sender), daemon=True,
                         name=f"sealinfer-{accountant}-accountant")
    worker.start()
    sender.close()
    answered = False
    try:
        if not receiver.poll(timeout_s):
            raise AccountantError(
                f"the {accountant.upper()} accountant did not finish within {timeout_s:g} s and was stopped.",
                hint="Use fewer distinct segments, the 'rdp' accountant, or a longer time limit.",
            )
        try:
            status, value = receiver.recv()
            answered = True
        except EOFError:
            worker.join(1.0)
            raise AccountantError(
                f"the {accountant.upper()} accountant's worker died (exit code {worker.exitcode}) without an answer."
            ) from None
    finally:
        receiver.close()
        _stop(worker, grace_s=0.5 if answered else 0.0)
    if status != "ok":
        raise AccountantError(f"the {accountant.upper()} accountant failed ({value}).")
    return float(value)


def _stop(worker: multiprocessing.process.BaseProcess, *, grace_s: float) -> None:
    worker.join(grace_s)
    if worker.is_alive():
        worker.terminate()
        worker.join(2.0)
    if worker.is_alive():
        worker.kill()
        worker.join()
    worker.close()
