"""DP-SGD training to a target (epsilon, delta) with Opacus, ending in ONNX bytes and a certificate.

``train_dp`` is the path a team should take: Poisson sampling (what the accountants assume),
BatchNorm replaced by GroupNorm (BatchNorm mixes examples, so per-example clipping would not bound
one record's influence), the unwrapped module exported to ONNX in memory, onnxruntime checked against
torch, and a certificate whose epsilon is recomputed by ``accounting.compute_epsilon`` from the
accountant's own history. ``train_baseline`` trains the same way without DP, for comparison.

Feature scaling statistics computed from the training data are *not* covered by the DP guarantee;
scale with public or domain bounds when that matters.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sealinfer.privacy import onnx_io
from sealinfer.privacy.accounting import SUPPORTED_ACCOUNTANTS, compute_epsilon
from sealinfer.privacy.certificate import Certificate, Segment, sha256_hex
from sealinfer.privacy.errors import AccountantError, PrivacyParameterError

_VERIFY_ROWS = 1024


@dataclass
class DPTrainingResult:
    """What ``train_dp`` produced. ``onnx_bytes`` is bound to ``certificate`` by its SHA-256."""

    onnx_bytes: bytes
    certificate: Certificate
    epsilon: float
    torch_model: Any
    noise_multiplier: float
    max_abs_diff: float
    epoch_losses: list[float] = field(default_factory=list)
    replaced_modules: list[str] = field(default_factory=list)


@dataclass
class TrainingResult:
    """What ``train_baseline`` produced (no privacy guarantee, no certificate)."""

    onnx_bytes: bytes
    torch_model: Any
    max_abs_diff: float
    epoch_losses: list[float] = field(default_factory=list)


def train_dp(
    model: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    *,
    target_epsilon: float,
    delta: float,
    epochs: int,
    batch_size: int,
    max_grad_norm: float = 1.0,
    lr: float = 0.1,
    seed: int = 0,
    accountant: str = "rdp",
    secure_mode: bool = False,
    fix_modules: bool = True,
    momentum: float = 0.9,
    torch_threads: int | None = None,
) -> DPTrainingResult:
    """Train ``model`` (a classifier returning logits) with DP-SGD to (``target_epsilon``, ``delta``).

    The caller's module is not modified: a copy is trained and returned as ``torch_model``.
    Poisson sampling draws each record with probability ``1 / ceil(len(X_train) / batch_size)`` at
    every step (Opacus's rule), so ``batch_size`` is roughly the expected batch size.
    ``torch_threads`` sets torch's intra-op threads for the call (restored afterwards); 1 is much
    faster for small tabular models on a busy machine.
    """
    with _torch_threads(torch_threads):
        import torch
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        X, y = _check_data(X_train, y_train)
        n = len(X)
        _check_positive("target_epsilon", target_epsilon)
        _check_positive("max_grad_norm", max_grad_norm)
        _check_positive("lr", lr)
        if not (isinstance(delta, float | int) and 0 < delta < 1.0 / n):
            raise PrivacyParameterError(
                f"delta={delta!r} must be in (0, 1/len(X_train)) = (0, {1.0 / n:.3g}).",
                hint="A delta of at most 1/(10*n) is customary.",
            )
        _check_count("epochs", epochs)
        _check_count("batch_size", batch_size)
        if batch_size > n:
            raise PrivacyParameterError(f"batch_size={batch_size} exceeds the {n} training rows.",
                                        hint="Use a smaller batch_size.")
        if accountant not in SUPPORTED_ACCOUNTANTS:
            raise PrivacyParameterError(f"accountant {accountant!r} is not supported.",
                                        hint=f"Use one of {', '.join(SUPPORTED_ACCOUNTANTS)}.")

        torch.manual_seed(seed)
        module = _checked_copy(model, X, y)
        replaced = _fix_modules(module, ModuleValidator, fix_modules)
        if replaced:
            module = ModuleValidator.fix(module)
        module.train()

        loader = _loader(X, y, batch_size, seed)
        optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)
        noise_gen = None if secure_mode else torch.Generator().manual_seed(seed + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about secure_mode=False; the certificate records it
            engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
            private_model, optimizer, loader = engine.make_private_with_epsilon(
                module=module, optimizer=optimizer, data_loader=loader, target_epsilon=float(target_epsilon),
                target_delta=float(delta), epochs=int(epochs), max_grad_norm=float(max_grad_norm),
                poisson_sampling=True, noise_generator=noise_gen,
            )
            losses = _fit(private_model, optimizer, loader, epochs)
        noise_multiplier = float(optimizer.noise_multiplier)
        history = [(float(s), float(q), int(t)) for s, q, t in engine.accountant.history]

        private_model._close()  # drop Opacus hooks and per-sample attributes before export
        trained = private_model._module
        trained.eval()
        epsilon = compute_epsilon(accountant, history, float(delta))
        if epsilon > target_epsilon * (1 + 1e-6):
            raise AccountantError(
                f"training spent epsilon={epsilon:.4g}, above the target {target_epsilon:g}.",
                hint="This is a bug in the noise calibration; do not deploy this model.",
            )

        onnx_bytes = onnx_io.export_onnx(trained, X)
        diff = onnx_io.verify_against_torch(onnx_bytes, trained, X[:_VERIFY_ROWS])
        certificate = Certificate(
            accountant=accountant,
            delta=float(delta),
            dataset_size=n,
            sampling="poisson",
            segments=tuple(Segment(s, q, t) for s, q, t in history),
            max_grad_norm=float(max_grad_norm),
            secure_mode=bool(secure_mode),
            model_sha256=sha256_hex(onnx_bytes),
            epsilon=epsilon,
            metadata=_provenance(target_epsilon, epochs, batch_size, lr, seed),
        )
        return DPTrainingResult(
            onnx_bytes=onnx_bytes, certificate=certificate, epsilon=epsilon, torch_model=trained,
            noise_multiplier=noise_multiplier, max_abs_diff=diff, epoch_losses=losses, replaced_modules=replaced,
        )


def train_baseline(
    model: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    torch_threads: int | None = None,
) -> TrainingResult:
    """Train without DP (Adam, shuffled minibatches) and export to ONNX; for baselines and audits."""
    with _torch_threads(torch_threads):
        import torch

        X, y = _check_data(X_train, y_train)
        _check_count("epochs", epochs)
        _check_count("batch_size", batch_size)
        _check_positive("lr", lr)
        torch.manual_seed(seed)
        module = _checked_copy(model, X, y)
        module.train()
        optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        losses = _fit(module, optimizer, _loader(X, y, min(batch_size, len(X)), seed, shuffle=True), epochs)
        module.eval()
        onnx_bytes = onnx_io.export_onnx(module, X)
        diff = onnx_io.verify_against_torch(onnx_bytes, module, X[:_VERIFY_ROWS])
        return TrainingResult(onnx_bytes=onnx_bytes, torch_model=module, max_abs_diff=diff, epoch_losses=losses)


# --- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    _check_count("torch_threads", n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(module: Any, optimizer: Any, loader: Any, epochs: int) -> list[float]:
    import torch

    criterion = torch.nn.CrossEntropyLoss()
    losses: list[float] = []
    for _ in range(int(epochs)):
        total, count = 0.0, 0
        for xb, yb in loader:
            if len(xb) == 0:
                continue  # Poisson sampling can draw an empty batch; there is nothing to learn from
            optimizer.zero_grad()
            loss = criterion(module(xb), yb)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        losses.append(total / max(count, 1))
    return losses


def _loader(X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, *, shuffle: bool = False) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
    # Opacus's DPDataLoader takes its sampling generator from the loader: seeding it makes runs repeatable.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def _fix_modules(module: Any, validator: Any, fix: bool) -> list[str]:
    errors = validator.validate(module, strict=False)
    if not errors:
        return []
    problems = sorted({str(e).splitlines()[0] for e in errors})
    if not fix:
        raise PrivacyParameterError(
            "the model has layers DP-SGD cannot train: " + "; ".join(problems) + ".",
            hint="Replace BatchNorm with GroupNorm/LayerNorm, or call train_dp(..., fix_modules=True).",
        )
    return problems


def _check_data(X_train: Any, y_train: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X_train)
    y = np.asarray(y_train)
    if X.ndim < 2 or len(X) < 2:
        raise PrivacyParameterError(f"X_train has shape {X.shape}; it must be (rows, features...) with >= 2 rows.",
                                    hint="Pass a 2-D float array.")
    if not np.issubdtype(X.dtype, np.number) or not np.all(np.isfinite(X)):
        raise PrivacyParameterError("X_train must be numeric and finite.", hint="Impute or drop NaN/inf values.")
    if y.shape != (len(X),) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise PrivacyParameterError(
            f"y_train must be {len(X)} non-negative integer class labels (got shape {y.shape}, {y.dtype}).",
            hint="Encode classes as 0..K-1.",
        )
    return X.astype(np.float32), y.astype(np.int64)


def _checked_copy(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """A copy of ``model`` (the caller's stays untouched), once it accepts X's rows and scores every label.

    One forward pass on two rows, so a mismatch is a typed error now rather than torch's own error
    (or an IndexError from the loss) in the middle of training.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise PrivacyParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}.",
                                    hint="Pass the untrained torch model, e.g. torch.nn.Sequential(...).")
    module = copy.deepcopy(model)
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.as_tensor(X[:2]))
    except Exception as exc:  # torch raises RuntimeError, ValueError, TypeError... for a shape mismatch
        raise PrivacyParameterError(
            f"The model does not accept X_train's rows (shape {X.shape[1:]}): {str(exc).splitlines()[0]}.",
            hint="Give the model's first layer as many inputs as the data has features.",
        ) from None
    classes = int(out.shape[-1]) if getattr(out, "ndim", 0) >= 2 else 0
    if int(y.max()) >= classes:
        raise PrivacyParameterError(
            f"y_train has labels up to {int(y.max())}, but the model outputs {classes} class score(s) per row.",
            hint="Encode classes as 0..K-1 and give the model K outputs (one logit per class).",
        )
    return module


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise PrivacyParameterError(f"{name}={value!r} must be a positive finite number.",
                                    hint=f"Pass a positive {name}.")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrivacyParameterError(f"{name}={value!r} must be a positive integer.", hint=f"Pass {name} >= 1.")


def _provenance(target_epsilon: float, epochs: int, batch_size: int, lr: float, seed: int) -> dict[str, Any]:
    import opacus
    import torch

    return {
        "producer": "sealinfer.privacy.train_dp",
        "opacus": opacus.__version__,
        "torch": torch.__version__,
        "target_epsilon": float(target_epsilon),
        "epochs": int(epochs),
        "expected_batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
    }
