"""Fixed latency buckets shared by the rollups, the dashboard and Prometheus.

Edges follow a 1-1.2-1.5-2-2.5-3-4-5-6-8 series per decade (1 µs .. 1000 s), at most 25 % apart, so a
quantile read from the buckets is within one bucket of the exact value, and the usual deadlines
(200 ms, 2 s, 60 s) are edges: SLO attainment read from the buckets is then exact. Buckets are
right-closed like Prometheus ``le``: bucket ``k`` holds ``edges[k-1] < v <= edges[k]``; the last
bucket (index ``len(EDGES_US)``) holds everything above the top edge.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping

_MANTISSAS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
EDGES_US: tuple[float, ...] = tuple(
    round(m * 10**d, 6) for d in range(0, 9) for m in _MANTISSAS
) + (1e9,)
OVERFLOW = len(EDGES_US)


def bucket_of(value_us: float) -> int:
    """Index of the bucket holding ``value_us``."""
    return bisect_left(EDGES_US, value_us)


def upper_edge(bucket: int) -> float:
    return EDGES_US[bucket] if bucket < OVERFLOW else math.inf


def lower_edge(bucket: int) -> float:
    return EDGES_US[bucket - 1] if bucket > 0 else 0.0


def quantiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """Quantiles from bucket counts, interpolating log-linearly inside the bucket that holds them.

    Returns ``None`` for each quantile when there are no counts. The overflow bucket reports its lower
    edge (the top edge): nothing better is known about values above 1000 s.
    """
    items = sorted((b, n) for b, n in counts.items() if n > 0)
    total = sum(n for _, n in items)
    out: list[float | None] = []
    for q in qs:
        if total == 0:
            out.append(None)
            continue
        rank = q * total
        seen = 0
        value = lower_edge(items[-1][0])
        for b, n in items:
            if seen + n >= rank:
                lo, hi = lower_edge(b), upper_edge(b)
                frac = (rank - seen) / n
                if math.isinf(hi):
                    value = lo
                elif lo <= 0:
                    value = hi * frac
                else:
                    value = lo * (hi / lo) ** frac
                break
            seen += n
        out.append(value)
    return out


def fraction_at_most(counts: Mapping[int, int], limit_us: float) -> float | None:
    """Share of values ``<= limit_us``; exact when ``limit_us`` is an edge, interpolated otherwise."""
    total = sum(counts.values())
    if total == 0:
        return None
    b_limit = bucket_of(limit_us)
    below = sum(n for b, n in counts.items() if b < b_limit)
    inside = counts.get(b_limit, 0)
    lo, hi = lower_edge(b_limit), upper_edge(b_limit)
    if inside and not math.isinf(hi) and hi > lo:
        if limit_us >= hi:
            below += inside
        elif lo > 0:
            below += inside * math.log(limit_us / lo) / math.log(hi / lo)
        else:
            below += inside * limit_us / hi
    return below / total
