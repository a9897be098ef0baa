"""Aggregations over ``telemetry.db`` that read the rollups, never a full scan of ``requests``.

Every function takes a connection (see :func:`.schema.open_readonly`) and ``since_minute`` (epoch
minute, ``None`` = all retained data) and returns a small ``pandas.DataFrame``: at most
``max_points`` rows for time series (minutes are merged into coarser steps in SQL when needed), and
per-group rows otherwise. Latency figures cover successful requests; see :mod:`.histogram` for the
precision of quantiles read from the buckets.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence

import pandas as pd

from sealinfer.runtime.telemetry import histogram
from sealinfer.runtime.telemetry.record import PHASES

DEFAULT_DEADLINES_MS: dict[str, float] = {"stat": 200.0, "routine": 2000.0, "batch": 60000.0}
MAX_POINTS = 10_000
_GROUPABLE = {"config", "model", "priority"}


def _where(since_minute: int | None) -> tuple[str, list[int]]:
    return ("WHERE minute >= ?", [since_minute]) if since_minute is not None else ("", [])


def _step(conn: sqlite3.Connection, since_minute: int | None, max_points: int, per_step: int = 1) -> int:
    """Minutes per point so that a series has at most ``max_points`` points (``per_step`` lines each)."""
    where, args = _where(since_minute)
    lo, hi = conn.execute(f"SELECT min(minute), max(minute) FROM rollup_minute {where}", args).fetchone()
    if lo is None:
        return 1
    return max(1, math.ceil((hi - lo + 1) * per_step / max_points))


def totals(conn: sqlite3.Connection, since_minute: int | None = None) -> dict[str, float]:
    """Counts over the window and the mean request rate across the minutes that saw traffic."""
    return totals_from(counts_by_priority(conn, since_minute))


def rate_series(conn: sqlite3.Connection, since_minute: int | None = None,
                max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Requests per second over time, split by outcome; ``time`` is the step's start (UTC)."""
    step = _step(conn, since_minute, max_points)
    where, args = _where(since_minute)
    df = pd.read_sql_query(
        f"SELECT (minute / {step}) * {step} AS minute, sum(ok) AS ok, sum(denied) AS denied, "
        f"sum(errors) AS errors FROM rollup_minute {where} GROUP BY 1 ORDER BY 1", conn, params=args,
    )
    for col in ("ok", "denied", "errors"):
        df[col] = df[col] / (step * 60.0)
    df["time"] = pd.to_datetime(df["minute"] * 60, unit="s", utc=True)
    return df


def histograms(conn: sqlite3.Connection, by: Sequence[str], since_minute: int | None = None
               ) -> dict[tuple[str, ...], dict[int, int]]:
    """Latency bucket counts per group (``by`` ⊆ config, model, priority), summed in SQL."""
    cols = [c for c in by if c in _GROUPABLE]
    if len(cols) != len(by):
        raise ValueError(f"can group latency only by {sorted(_GROUPABLE)}, got {list(by)}")
    where, args = _where(since_minute)
    keys = ", ".join(cols)
    sql = (f"SELECT {keys + ', ' if keys else ''}bucket, sum(n) FROM rollup_latency {where} "
           f"GROUP BY {keys + ', ' if keys else ''}bucket")
    out: dict[tuple[str, ...], dict[int, int]] = {}
    for row in conn.execute(sql, args):
        *group, bucket, n = row
        out.setdefault(tuple(group), {})[bucket] = n
    return out


Histograms = dict[tuple[str, ...], dict[int, int]]


def project(hists: Histograms, keep: Sequence[int]) -> Histograms:
    """Merge histogram groups onto a subset of their key positions (``()`` = one overall histogram)."""
    out: Histograms = {}
    for group, counts in hists.items():
        target = out.setdefault(tuple(group[i] for i in keep), {})
        for bucket, n in counts.items():
            target[bucket] = target.get(bucket, 0) + n
    return out


def quantile_table(hists: Histograms, by: Sequence[str], qs: Sequence[float] = (0.5, 0.95, 0.99)
                   ) -> pd.DataFrame:
    """p50/p95/p99 (ms) per group from fetched histograms."""
    rows = []
    for group, counts in sorted(hists.items()):
        values = histogram.quantiles(counts, qs)
        rows.append({**dict(zip(by, group, strict=True)), "n": sum(counts.values()),
                     **{f"p{round(q * 100):d}_ms": (v / 1000 if v is not None else None)
                        for q, v in zip(qs, values, strict=True)}})
    return pd.DataFrame(rows, columns=[*by, "n", *(f"p{round(q * 100):d}_ms" for q in qs)])


def latency_quantiles(conn: sqlite3.Connection, by: Sequence[str] = (), since_minute: int | None = None,
                      qs: Sequence[float] = (0.5, 0.95, 0.99)) -> pd.DataFrame:
    """p50/p95/p99 (ms) of successful requests per group."""
    return quantile_table(histograms(conn, by, since_minute), by, qs)


def counts_by_priority(conn: sqlite3.Connection, since_minute: int | None = None) -> pd.DataFrame:
    """Requests, outcomes and the first/last minute seen, per priority class (one pass over the rollup)."""
    where, args = _where(since_minute)
    return pd.read_sql_query(
        f"SELECT priority, sum(n) AS n, sum(ok) AS ok, sum(denied) AS denied, sum(errors) AS errors, "
        f"min(minute) AS first_minute, max(minute) AS last_minute FROM rollup_minute {where} "
        f"GROUP BY priority ORDER BY priority", conn, params=args,
    )


def totals_from(counts: pd.DataFrame) -> dict[str, float]:
    if counts.empty:
        return {"requests": 0, "ok": 0, "denied": 0, "errors": 0, "minutes": 0, "rate_per_s": 0.0,
                "first_minute": None, "last_minute": None}
    lo, hi = int(counts["first_minute"].min()), int(counts["last_minute"].max())
    n = int(counts["n"].sum())
    return {"requests": n, "ok": int(counts["ok"].sum()), "denied": int(counts["denied"].sum()),
            "errors": int(counts["errors"].sum()), "minutes": hi - lo + 1,
            "rate_per_s": n / ((hi - lo + 1) * 60), "first_minute": lo, "last_minute": hi}


def slo_attainment(conn: sqlite3.Connection, deadlines_ms: Mapping[str, float] | None = None,
                   since_minute: int | None = None) -> pd.DataFrame:
    """Per priority class: share of served requests (ok + errors) that finished within the deadline.

    Denials are not the service's failure and are left out; errors count as misses. Exact when the
    deadline is a bucket edge (the defaults are), interpolated otherwise (``exact`` says which).
    """
    return slo_table(counts_by_priority(conn, since_minute), histograms(conn, ["priority"], since_minute),
                     deadlines_ms)


def slo_table(counts: pd.DataFrame, hists_by_priority: Histograms,
              deadlines_ms: Mapping[str, float] | None = None) -> pd.DataFrame:
    deadlines = dict(DEFAULT_DEADLINES_MS if deadlines_ms is None else deadlines_ms)
    served = {r.priority: (int(r.ok), int(r.errors)) for r in counts.itertuples()}
    rows = []
    for priority in sorted(set(served) | set(deadlines)):
        ok, err = served.get(priority, (0, 0))
        deadline = deadlines.get(priority)
        hist = hists_by_priority.get((priority,), {})
        met = None
        if deadline is not None and ok:
            frac = histogram.fraction_at_most(hist, deadline * 1000)
            met = (frac or 0.0) * ok
        attained = (met / (ok + err)) if met is not None and (ok + err) else None
        rows.append({"priority": priority, "deadline_ms": deadline, "served": ok + err, "errors": err,
                     "within_deadline": met, "attainment": attained,
                     "exact": deadline is not None and deadline * 1000 in histogram.EDGES_US})
    return pd.DataFrame(rows, columns=["priority", "deadline_ms", "served", "errors", "within_deadline",
                                       "attainment", "exact"])


def config_model_sums(conn: sqlite3.Connection, since_minute: int | None = None) -> pd.DataFrame:
    """Rollup sums per (config, model): the one pass behind the phase breakdown and the overhead table."""
    where, args = _where(since_minute)
    phase_cols = ", ".join(f"sum({p}_sum) AS {p}_sum" for p in PHASES)
    return pd.read_sql_query(
        f"SELECT config, model, sum(ok) AS ok, sum(total_sum) AS total_sum, {phase_cols}, "
        f"max(param_bytes) AS param_bytes FROM rollup_minute {where} GROUP BY config, model "
        f"HAVING sum(ok) > 0", conn, params=args,
    )


def phase_table(sums: pd.DataFrame) -> pd.DataFrame:
    """Mean time per phase (ms) of successful requests, per configuration and model."""
    out = sums[["config", "model", "ok"]].copy()
    for p in PHASES:
        out[f"{p}_ms"] = sums[f"{p}_sum"] / sums["ok"] / 1000.0
    out["total_ms"] = sums["total_sum"] / sums["ok"] / 1000.0
    return out.sort_values(["model", "total_ms"]).reset_index(drop=True)


def overhead_table(sums: pd.DataFrame, baseline: str = "plain") -> pd.DataFrame:
    """Mean service time per (config, model) and its overhead in % over ``baseline`` for the same model.

    Service time is latency minus queueing: queueing measures load, not what a protection costs.
    """
    df = sums[["config", "model", "ok", "param_bytes"]].copy()
    df["mean_ms"] = sums["total_sum"] / sums["ok"] / 1000.0
    df["service_ms"] = (sums["total_sum"] - sums["queue_sum"]) / sums["ok"] / 1000.0
    base = df[df["config"] == baseline].set_index("model")["service_ms"]
    df["baseline_ms"] = df["model"].map(base)
    df["overhead_pct"] = (df["service_ms"] / df["baseline_ms"] - 1.0) * 100.0
    return df.sort_values(["model", "service_ms"]).reset_index(drop=True)


def phase_breakdown(conn: sqlite3.Connection, since_minute: int | None = None) -> pd.DataFrame:
    return phase_table(config_model_sums(conn, since_minute))


def overhead(conn: sqlite3.Connection, baseline: str = "plain", since_minute: int | None = None
             ) -> pd.DataFrame:
    return overhead_table(config_model_sums(conn, since_minute), baseline)


def ecdf_table(hists: Histograms, by: Sequence[str]) -> pd.DataFrame:
    """Empirical CDF per group, one point per non-empty bucket (its upper edge, in ms)."""
    rows = []
    for group, counts in sorted(hists.items()):
        total = sum(counts.values())
        seen = 0
        for bucket in sorted(counts):
            seen += counts[bucket]
            edge = histogram.upper_edge(bucket)
            rows.append({**dict(zip(by, group, strict=True)),
                         "latency_ms": (edge if math.isfinite(edge) else histogram.EDGES_US[-1]) / 1000,
                         "fraction": seen / total})
    return pd.DataFrame(rows, columns=[*by, "latency_ms", "fraction"])


def ecdf(conn: sqlite3.Connection, by: Sequence[str] = ("config",), since_minute: int | None = None
         ) -> pd.DataFrame:
    return ecdf_table(histograms(conn, by, since_minute), by)


def box_table(hists: Histograms, by: Sequence[str]) -> pd.DataFrame:
    """Five-number summaries (p5, p25, p50, p75, p95 in ms) per group, for precomputed box plots."""
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    rows = []
    for group, counts in sorted(hists.items()):
        values = [v / 1000 if v is not None else None for v in histogram.quantiles(counts, qs)]
        rows.append({**dict(zip(by, group, strict=True)), "n": sum(counts.values()),
                     **dict(zip(("p5", "p25", "p50", "p75", "p95"), values, strict=True))})
    return pd.DataFrame(rows, columns=[*by, "n", "p5", "p25", "p50", "p75", "p95"])


def box_stats(conn: sqlite3.Connection, by: Sequence[str] = ("config", "model"),
              since_minute: int | None = None) -> pd.DataFrame:
    return box_table(histograms(conn, by, since_minute), by)


def placements(conn: sqlite3.Connection, since_minute: int | None = None) -> pd.DataFrame:
    """Requests placed on each device, per model."""
    where, args = _where(since_minute)
    return pd.read_sql_query(
        f"SELECT device, model, sum(n) AS requests FROM rollup_minute {where} GROUP BY device, model "
        f"ORDER BY device, model", conn, params=args,
    )


def predicted_vs_measured(conn: sqlite3.Connection, since_minute: int | None = None,
                          max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Scheduler's predicted vs measured inference time (ms), averaged per time step, device and model."""
    where, args = _where(since_minute)
    n_groups = conn.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT device, model FROM rollup_minute {where})", args
    ).fetchone()[0]
    step = _step(conn, since_minute, max_points, per_step=max(1, n_groups))
    cond = ("AND" if where else "WHERE") + " predicted_n > 0"
    return pd.read_sql_query(
        f"SELECT (minute / {step}) * {step} AS minute, device, model, sum(predicted_n) AS requests, "
        f"sum(predicted_sum) / sum(predicted_n) / 1000.0 AS predicted_ms, "
        f"sum(predicted_inference_sum) / sum(predicted_n) / 1000.0 AS measured_ms "
        f"FROM rollup_minute {where} {cond} GROUP BY 1, device, model ORDER BY 1", conn, params=args,
    )


def utilization(conn: sqlite3.Connection, since_minute: int | None = None,
                max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Share of wall time each device spent in inference, per time step (1.0 = one worker always busy)."""
    where, args = _where(since_minute)
    n_dev = conn.execute(f"SELECT count(DISTINCT device) FROM rollup_minute {where}", args).fetchone()[0]
    step = _step(conn, since_minute, max_points, per_step=max(1, n_dev))
    df = pd.read_sql_query(
        f"SELECT (minute / {step}) * {step} AS minute, device, "
        f"sum(inference_sum) / ({step} * 60e6) AS utilization FROM rollup_minute {where} "
        f"GROUP BY 1, device ORDER BY 1", conn, params=args,
    )
    df["time"] = pd.to_datetime(df["minute"] * 60, unit="s", utc=True)
    return df


def models(conn: sqlite3.Connection) -> pd.DataFrame:
    """Loaded models: digest, signature, watermark and DP status (no weights, no data)."""
    return pd.read_sql_query(
        "SELECT name, version, digest, signer_key_id, signature_ok, watermark_status, dp_epsilon, "
        "param_bytes, loaded_at FROM models ORDER BY name, version", conn,
    )


def configurations(conn: sqlite3.Connection) -> pd.DataFrame:
    """Each security configuration with the feature flags recorded for it (one indexed lookup per config)."""
    configs = [r[0] for r in conn.execute("SELECT DISTINCT config FROM rollup_minute ORDER BY config")]
    rows = []
    for config in configs:
        row = conn.execute("SELECT features FROM requests WHERE config = ? ORDER BY config DESC, model DESC "
                           "LIMIT 1", [config]).fetchone()
        features = json.loads(row[0]) if row and row[0] else {}
        rows.append({"config": config, **{k: str(v) for k, v in sorted(features.items())}})
    return pd.DataFrame(rows)
