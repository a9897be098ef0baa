"""Output guards: reveal less per answer and fewer answers per caller, against model extraction.

- ``top_k``: keep the k largest scores in each row (along the last axis) and zero the rest. The
  shape is unchanged, so code that takes an argmax or reads a column keeps working; the zeroed
  scores are what an extraction attack would have learned from.
- ``round_decimals``: round float outputs, so tiny score differences (which leak the decision
  boundary) disappear.
- ``max_queries_per_minute``: a per-caller (tenant, user) sliding-window limit.

Only float tensors are transformed; integer outputs (labels) pass through. A non-array output
(e.g. a sequence of maps from a scikit-learn ZipMap) cannot be guarded, so it is refused rather
than passed through: guards fail closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sealinfer.runtime.caller import Caller
from sealinfer.runtime.errors import PolicyError
from sealinfer.runtime.policy.profile import OutputGuards
from sealinfer.runtime.policy.ratelimit import QueryRateExceededError, SlidingWindowLimiter


class UnguardableOutputError(PolicyError):
    """The profile requires output guards but an output is not a numpy array they can apply to."""

    code = "output_unguardable"


class OutputGuard:
    """Applies a profile's ``outputs`` section. Thread-safe; share one per session or runtime.

    ``apply`` = ``admit`` (rate limit) + ``transform``. The runtime may call ``admit`` before
    inference, so a rate-limited caller costs no model run, and ``transform`` after it.
    """

    def __init__(
        self, outputs_cfg: OutputGuards | Mapping[str, Any], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        cfg = outputs_cfg if isinstance(outputs_cfg, OutputGuards) else _from_mapping(outputs_cfg)
        self.config = cfg
        self._top_k = cfg.top_k
        self._decimals = cfg.round_decimals
        self._transforms = cfg.top_k is not None or cfg.round_decimals is not None
        self._limiter = (
            SlidingWindowLimiter(cfg.max_queries_per_minute, 60.0, clock=clock)
            if cfg.max_queries_per_minute is not None
            else None
        )
        self.active = self._transforms or self._limiter is not None

    @property
    def limits_queries(self) -> bool:
        """Whether :meth:`admit` does anything (a per-caller query-rate limit is set)."""
        return self._limiter is not None

    def apply(self, outputs: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Rate-limit ``caller`` then guard ``outputs``; returns new arrays, never mutates the inputs."""
        if not self.active:
            return outputs
        self.admit(caller)
        return self.transform(outputs)

    def admit(self, caller: Caller) -> None:
        """Count one query for ``caller``; raise ``QueryRateExceededError`` past the limit."""
        if self._limiter is not None:
            self._limiter.acquire((caller.tenant, caller.user), label=f"user {caller.user!r}")

    def transform(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """Top-k and rounding on float outputs."""
        if not self._transforms:
            return outputs
        return {name: self._guard(name, value) for name, value in outputs.items()}

    def _guard(self, name: str, y: Any) -> Any:
        if not isinstance(y, np.ndarray):
            raise UnguardableOutputError(
                f"Output {name!r} is a {type(y).__name__}; the policy profile's output guards "
                "(top_k / round_decimals) apply only to numpy arrays.",
                hint="Export the model with tensor outputs (for scikit-learn: options={'zipmap': False}).",
            )
        if y.dtype.kind != "f":
            return y
        k = self._top_k
        if k is not None and y.ndim >= 1 and y.shape[-1] > k:
            keep = np.argpartition(y, -k, axis=-1)[..., -k:]
            guarded = np.zeros_like(y)
            np.put_along_axis(guarded, keep, np.take_along_axis(y, keep, axis=-1), axis=-1)
            if self._decimals is not None:
                guarded.round(self._decimals, out=guarded)
            return guarded
        if self._decimals is not None:
            return y.round(self._decimals)  # np.round's own kernel, without its dispatch layer
        return y


def _from_mapping(cfg: Mapping[str, Any]) -> OutputGuards:
    unknown = set(cfg) - {"top_k", "round_decimals", "max_queries_per_minute"}
    if unknown:
        raise PolicyError(
            f"Unknown output guard setting(s): {', '.join(sorted(unknown))}.",
            hint="Use top_k, round_decimals and max_queries_per_minute.",
        )
    values = {k: cfg.get(k) for k in ("top_k", "round_decimals", "max_queries_per_minute")}
    for key, value in values.items():
        minimum = 0 if key == "round_decimals" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise PolicyError(f"Output guard {key} must be null or an integer >= {minimum}, got {value!r}.",
                              hint="Fix the profile's outputs section.")
    return OutputGuards(**values)


__all__ = ["OutputGuard", "QueryRateExceededError", "UnguardableOutputError"]
