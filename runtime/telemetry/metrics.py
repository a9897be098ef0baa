"""The telemetry figures as Prometheus metrics, for hospitals that already run Prometheus/Grafana.

Metrics live in their own ``CollectorRegistry`` unless one is passed, so several runtimes (or tests) in
one process do not collide on metric names. Labels carry model names, outcomes and classes only —
never request contents.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from threading import Thread
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import start_http_server as _prom_start_http_server

from sealinfer.runtime.errors import ConfigurationError
from sealinfer.runtime.telemetry.histogram import EDGES_US
from sealinfer.runtime.telemetry.record import PHASES, TelemetryRecord

# Every third edge between 100 µs and 100 s: Prometheus histograms cost one series per bucket.
_BUCKETS_S = tuple(e / 1e6 for e in EDGES_US if 100 <= e <= 1e8)[::3] + (60.0, 100.0)
_BUCKETS_S = tuple(sorted(set(_BUCKETS_S)))


class RuntimeMetrics:
    """Counters and latency histograms fed one :class:`TelemetryRecord` at a time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "sealinfer_requests", "Inference requests by model, outcome and priority class.",
            ["model", "outcome", "priority", "config"], registry=self.registry,
        )
        self.denials = Counter(
            "sealinfer_denials", "Requests refused by policy, by model and reason code.",
            ["model", "error_code"], registry=self.registry,
        )
        self.errors = Counter(
            "sealinfer_errors", "Requests that failed, by model and error code.",
            ["model", "error_code"], registry=self.registry,
        )
        self.latency = Histogram(
            "sealinfer_request_latency_seconds", "End-to-end latency of successful requests.",
            ["model", "priority"], buckets=_BUCKETS_S, registry=self.registry,
        )
        self.phase_latency = Histogram(
            "sealinfer_phase_latency_seconds", "Latency of each request phase (successful requests).",
            ["model", "phase"], buckets=_BUCKETS_S, registry=self.registry,
        )

    def observe(self, rec: TelemetryRecord) -> None:
        self.requests.labels(rec.model, rec.outcome, rec.priority, rec.config).inc()
        if rec.outcome == "denied":
            self.denials.labels(rec.model, rec.error_code or "denied").inc()
            return
        if rec.outcome == "error":
            self.errors.labels(rec.model, rec.error_code or "error").inc()
            return
        self.latency.labels(rec.model, rec.priority).observe((rec.total_us or 0.0) / 1e6)
        for phase in PHASES:
            self.phase_latency.labels(rec.model, phase).observe(getattr(rec, f"{phase}_us") / 1e6)


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: Any
    _thread: Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server(
    metrics: RuntimeMetrics, port: int = 9464, host: str = "127.0.0.1", *, allow_remote: bool = False
) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics``; loopback only unless ``allow_remote``.

    Port 0 picks a free port (read it back from ``.port``).
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ConfigurationError(
            f"Refusing to serve metrics on non-loopback address {host}.",
            hint="Scrape through a local agent, or pass allow_remote=True behind a firewall you control.",
        )
    try:
        server, thread = _prom_start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(f"Cannot serve metrics on {host}:{port}: {exc.strerror or exc}.",
                                 hint="Pick another port.") from exc
    return MetricsServer(host, server.server_address[1], server, thread)
