"""Online calibration of roofline predictions from measured latencies, per (model, device).

The roofline is a bound, not a forecast: real kernels reach a model- and device-specific fraction of
peak. That fraction is learnt as an exponentially weighted moving average of log(measured/roofline);
the log keeps one slow outlier (a context switch on a shared host) from dragging the factor as far as
it would in linear space, and makes over- and under-estimates symmetric.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass
class _Entry:
    log_factor: float = 0.0
    samples: int = 0
    abs_log_error: float = 0.0  # EWMA of |log(measured / calibrated prediction)| before each update


class Calibration:
    """EWMA of measured/predicted ratios. ``factor()`` is read lock-free on the placement hot path."""

    def __init__(self, alpha: float = 0.2, *, min_factor: float = 1e-3, max_factor: float = 1e6) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._lo, self._hi = math.log(min_factor), math.log(max_factor)
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._factors: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def factor(self, model_key: str, device_id: str) -> float:
        return self._factors.get((model_key, device_id), 1.0)

    def observe(self, model_key: str, device_id: str, roofline_s: float, measured_s: float) -> float:
        """Record one run: ``roofline_s`` is the uncalibrated estimate. Returns the new factor."""
        if not (roofline_s > 0 and measured_s > 0 and math.isfinite(roofline_s) and math.isfinite(measured_s)):
            return self.factor(model_key, device_id)
        log_ratio = math.log(measured_s / roofline_s)
        key = (model_key, device_id)
        with self._lock:
            entry = self._entries.setdefault(key, _Entry())
            error = abs(log_ratio - entry.log_factor)
            if entry.samples == 0:
                entry.log_factor, entry.abs_log_error = log_ratio, error
            else:
                entry.log_factor += self.alpha * (log_ratio - entry.log_factor)
                entry.abs_log_error += self.alpha * (error - entry.abs_log_error)
            entry.log_factor = min(max(entry.log_factor, self._lo), self._hi)
            entry.samples += 1
            self._factors[key] = math.exp(entry.log_factor)
            return self._factors[key]

    def stats(self) -> list[dict[str, float | str | int]]:
        with self._lock:
            return [{"model": m, "device": d, "factor": math.exp(e.log_factor), "samples": e.samples,
                     "typical_error": math.exp(e.abs_log_error) - 1.0}
                    for (m, d), e in sorted(self._entries.items())]
