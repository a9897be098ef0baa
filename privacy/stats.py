"""Differentially private aggregates over prediction logs, released with OpenDP under a budget ledger.

Every release is an OpenDP measurement (``opendp.prelude``): counts and histograms with the discrete
Laplace mechanism (integer counts, sensitivity 1 per record under the symmetric distance), sums with
the Laplace mechanism over values clamped to public bounds, means as a basic composition of a clamped
sum and a count. The noise scale is the smallest for which OpenDP's own privacy map stays within the
requested epsilon, and the ledger is charged the map's value (never the request) *before* the
measurement touches the data; a refused charge releases nothing.

Values must be prepared row by row before they come here (filtering to "predictions of model X",
bucketing a score): such per-record maps do not change the sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sealinfer.privacy.errors import PrivacyParameterError
from sealinfer.privacy.ledger import BudgetLedger

OTHER = "__other__"


@dataclass(frozen=True)
class Release:
    """A DP answer. ``scale`` is the noise scale (per component); ``epsilon`` what the ledger was charged."""

    dataset: str
    query: str
    value: Any
    epsilon: float
    mechanism: str
    scale: float
    remaining_epsilon: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "query": self.query, "value": self.value, "epsilon": self.epsilon,
            "mechanism": self.mechanism, "scale": self.scale, "remaining_epsilon": self.remaining_epsilon,
        }


class DPStatistics:
    """DP queries against one dataset's budget in ``ledger``."""

    def __init__(self, ledger: BudgetLedger, dataset: str) -> None:
        self.ledger = ledger
        self.dataset = dataset

    def count(self, values: Sequence[Any], *, epsilon: float) -> Release:
        """Number of records, with discrete Laplace noise."""
        dp = _opendp()
        space = dp.vector_domain(dp.atom_domain(T=bool)), dp.symmetric_distance()
        meas, scale = _calibrate(
            ("count",), lambda s: space >> dp.t.then_count() >> dp.m.then_laplace(scale=s), epsilon
        )
        data = [True] * len(values)
        return self._release("count", meas, data, scale, "discrete laplace", lambda v: int(v))

    def sum(self, values: Sequence[float], *, bounds: tuple[float, float], epsilon: float) -> Release:
        """Sum of values clamped to ``bounds``, with Laplace noise."""
        dp = _opendp()
        lo, hi = _check_bounds(bounds)
        data = _floats(values)
        meas, scale = _calibrate(
            ("sum", lo, hi), lambda s: _clamped_sum(dp, lo, hi) >> dp.m.then_laplace(scale=s), epsilon
        )
        return self._release(f"sum[{lo:g},{hi:g}]", meas, data, scale, "laplace", float)

    def mean(self, values: Sequence[float], *, bounds: tuple[float, float], epsilon: float) -> Release:
        """Mean of values clamped to ``bounds``: noisy clamped sum / noisy count, epsilon split in half."""
        dp = _opendp()
        lo, hi = _check_bounds(bounds)
        data = _floats(values)

        # Half of epsilon each, calibrated separately (a binary search over the composition is ~40x slower).
        total, scale = _calibrate(
            ("sum", lo, hi), lambda s: _clamped_sum(dp, lo, hi) >> dp.m.then_laplace(scale=s), epsilon / 2
        )
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
        n, _ = _calibrate(("count-float",), lambda s: space >> dp.t.then_count() >> dp.m.then_laplace(scale=s),
                          epsilon / 2)
        meas = dp.c.make_composition([total, n])
        if not meas.map(1) <= epsilon:
            raise PrivacyParameterError(f"could not calibrate noise for epsilon={epsilon:g}.",
                                        hint="Use a larger epsilon.")

        def post(pair: Any) -> float:
            noisy_sum, noisy_count = pair
            return float(min(max(noisy_sum / max(noisy_count, 1), lo), hi))

        return self._release(f"mean[{lo:g},{hi:g}]", meas, data, scale, "laplace (sum) + discrete laplace (count)",
                             post)

    def histogram(
        self,
        values: Sequence[Any],
        *,
        epsilon: float,
        edges: Sequence[float] | None = None,
        categories: Sequence[str] | None = None,
    ) -> Release:
        """Counts per bin (numeric ``edges``, half-open [a, b), last bin closed) or per category.

        Records outside every bin/category are counted under ``"__other__"``.
        """
        dp = _opendp()
        if (edges is None) == (categories is None):
            raise PrivacyParameterError("give exactly one of edges or categories.",
                                        hint="edges for numbers, categories for labels.")
        if edges is not None:
            labels, data = _bin(values, edges)
        else:
            labels = [str(c) for c in categories or []]
            if not labels or len(set(labels)) != len(labels):
                raise PrivacyParameterError("categories must be non-empty and distinct.", hint="List each once.")
            data = [str(v) for v in values]
        space = dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance()
        meas, scale = _calibrate(
            ("histogram", tuple(labels)),
            lambda s: space >> dp.t.then_count_by_categories(categories=labels) >> dp.m.then_laplace(scale=s),
            epsilon,
        )

        def post(counts: Any) -> dict[str, int]:
            return dict(zip([*labels, OTHER], (int(c) for c in counts), strict=True))

        return self._release("histogram", meas, data, scale, "discrete laplace", post)

    # --- internals -------------------------------------------------------------------------------

    def _release(self, query: str, meas: Any, data: Any, scale: float, mechanism: str,
                 post: Callable[[Any], Any]) -> Release:
        charge = float(meas.map(1))
        # Charge first: if this raises BudgetExceededError, the measurement never sees the data.
        remaining = self.ledger.spend(self.dataset, charge, query=query, mechanism=mechanism)
        value = post(meas(data))
        return Release(self.dataset, query, value, charge, mechanism, float(scale), remaining)


def _opendp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _clamped_sum(dp: Any, lo: float, hi: float) -> Any:
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    return space >> dp.t.then_clamp((lo, hi)) >> dp.t.then_sum()


_CALIBRATED: dict[tuple[Any, ...], tuple[Any, float]] = {}
_CALIBRATED_MAX = 256


def _calibrate(key: tuple[Any, ...], build: Callable[[float], Any], epsilon: float) -> tuple[Any, float]:
    """The measurement with the smallest noise scale whose privacy map (d_in=1) is within ``epsilon``.

    The binary search costs ~35 ms, so results are memoised by (query shape, epsilon); OpenDP
    measurements are immutable and safe to reuse.
    """
    dp = _opendp()
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not (
        math.isfinite(epsilon) and epsilon > 0
    ):
        raise PrivacyParameterError(f"epsilon={epsilon!r} must be a positive finite number.",
                                    hint="Pass the privacy budget this query may spend, e.g. 0.1.")
    cache_key = (*key, float(epsilon))
    if cache_key in _CALIBRATED:
        return _CALIBRATED[cache_key]
    scale = float(dp.binary_search_param(build, d_in=1, d_out=float(epsilon)))
    meas = build(scale)
    if not meas.map(1) <= epsilon:  # binary_search_param promises this; check it, since the ledger relies on it
        raise PrivacyParameterError(f"could not calibrate noise for epsilon={epsilon:g}.", hint="Use a larger epsilon.")
    if len(_CALIBRATED) >= _CALIBRATED_MAX:
        _CALIBRATED.clear()
    _CALIBRATED[cache_key] = (meas, scale)
    return meas, scale


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"bounds {bounds!r} must be two numbers (lower, upper).",
                                    hint="Give public bounds such as (0, 1) for a probability.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise PrivacyParameterError(f"bounds ({lo}, {hi}) must be finite with lower < upper.",
                                    hint="Choose bounds from domain knowledge, not from the data.")
    return lo, hi


def _numbers(values: Sequence[Any]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PrivacyParameterError("values must be numbers.",
                                    hint="Parse the column as numbers first (e.g. pandas.to_numeric).") from None


def _floats(values: Sequence[Any]) -> list[float]:
    arr = _numbers(values)
    if not np.all(np.isfinite(arr)):
        raise PrivacyParameterError("values contain NaN or infinity.", hint="Drop or impute them before the query.")
    return arr.tolist()


def _bin(values: Sequence[Any], edges: Sequence[float]) -> tuple[list[str], list[str]]:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise PrivacyParameterError(f"edges {list(edges)} must be >= 2 increasing finite numbers.",
                                    hint="For example 0,0.25,0.5,0.75,1.")
    labels = [f"[{a:g},{b:g}{']' if i == len(e) - 2 else ')'}" for i, (a, b) in enumerate(zip(e[:-1], e[1:],
                                                                                               strict=True))]
    x = _numbers(values)
    idx = np.searchsorted(e, x, side="right") - 1
    idx[x == e[-1]] = len(e) - 2  # the last bin is closed on the right
    inside = (idx >= 0) & (idx < len(e) - 1) & np.isfinite(x)
    return labels, [labels[i] if ok else OTHER for i, ok in zip(idx, inside, strict=True)]
