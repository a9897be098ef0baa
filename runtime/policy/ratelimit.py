"""Per-caller query-rate limits, the defence against model extraction by repeated querying.

A sliding-window log, not a token bucket: an extraction attack is bounded by how many answers fit in
ANY window, and a token bucket lets a caller take up to twice its budget across a window boundary.
The log costs one float per admitted query per caller, bounded by the limit itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from sealinfer.runtime.errors import RateLimitError


class QueryRateExceededError(RateLimitError):
    """The caller asked more than the profile's ``max_queries_per_minute``; ``retry_after`` is seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class SlidingWindowLimiter:
    """At most ``limit`` admissions per key in any ``window_s`` seconds. Thread-safe."""

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_idle_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._log: dict[Hashable, deque[float]] = {}
        self._prune_at = max_idle_keys

    def acquire(self, key: Hashable, label: str = "caller") -> None:
        """Admit one query for ``key`` or raise ``QueryRateExceededError`` (nothing is counted then)."""
        with self._lock:
            now = self._clock()
            log = self._log.get(key)
            if log is None:
                if len(self._log) >= self._prune_at:
                    self._prune(now)
                log = self._log[key] = deque()
            horizon = now - self.window_s
            while log and log[0] <= horizon:
                log.popleft()
            if len(log) >= self.limit:
                retry_after = max(0.0, log[0] + self.window_s - now)
                raise QueryRateExceededError(
                    f"{label} exceeded {self.limit} queries per {self.window_s:g} s (limit set by the policy "
                    "profile against model extraction).",
                    hint=f"Retry after {retry_after:.1f} s, or ask for a profile with a higher limit.",
                    retry_after=retry_after,
                )
            log.append(now)

    def remaining(self, key: Hashable) -> int:
        with self._lock:
            log = self._log.get(key)
            if not log:
                return self.limit
            horizon = self._clock() - self.window_s
            return self.limit - sum(1 for t in log if t > horizon)

    def _prune(self, now: float) -> None:
        # Drop callers idle for a whole window; they carry no state that matters. Next prune only
        # after the table doubles, so pruning stays amortised O(1) per call.
        horizon = now - self.window_s
        for k in [k for k, log in self._log.items() if not log or log[-1] <= horizon]:
            del self._log[k]
        self._prune_at = max(self._prune_at, 2 * len(self._log))


__all__ = ["QueryRateExceededError", "SlidingWindowLimiter"]
