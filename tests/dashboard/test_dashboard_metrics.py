"""Prometheus metrics: the telemetry figures exposed for scraping."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from sealinfer.runtime.errors import ConfigurationError
from sealinfer.runtime.telemetry.metrics import RuntimeMetrics, start_http_server
from sealinfer.runtime.telemetry.record import TelemetryRecord
from sealinfer.runtime.telemetry.store import TelemetryStore


def _records() -> list[TelemetryRecord]:
    out = [TelemetryRecord(ts=1.0, request_id=f"a{i}", model="sepsis", priority="stat", inference_us=1500.0,
                           queue_us=500.0) for i in range(5)]
    out += [TelemetryRecord(ts=2.0, request_id=f"d{i}", model="sepsis", priority="stat", outcome="denied",
                            error_code="denied") for i in range(2)]
    out.append(TelemetryRecord(ts=3.0, request_id="e", model="cxr", outcome="error", error_code="input_invalid"))
    return out


def test_observe_counts_and_latency() -> None:
    m = RuntimeMetrics()
    for rec in _records():
        m.observe(rec)
    get = m.registry.get_sample_value
    assert get("sealinfer_requests_total",
               {"model": "sepsis", "outcome": "ok", "priority": "stat", "config": "plain"}) == 5
    assert get("sealinfer_denials_total", {"model": "sepsis", "error_code": "denied"}) == 2
    assert get("sealinfer_errors_total", {"model": "cxr", "error_code": "input_invalid"}) == 1
    assert get("sealinfer_request_latency_seconds_count", {"model": "sepsis", "priority": "stat"}) == 5
    assert get("sealinfer_request_latency_seconds_sum", {"model": "sepsis", "priority": "stat"}) == \
        pytest.approx(5 * 0.002)
    assert get("sealinfer_phase_latency_seconds_sum", {"model": "sepsis", "phase": "queue"}) == \
        pytest.approx(5 * 0.0005)


def test_store_feeds_metrics_and_http_endpoint_serves_them(tmp_path: Path) -> None:
    m = RuntimeMetrics()
    with TelemetryStore(tmp_path / "t.db", metrics=m) as store:
        store.record_many(_records())
    server = start_http_server(m, port=0)
    try:
        assert server.host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    finally:
        server.close()
    assert 'sealinfer_requests_total{config="plain",model="sepsis",outcome="ok",priority="stat"} 5.0' in body
    assert 'sealinfer_denials_total{error_code="denied",model="sepsis"} 2.0' in body


def test_metrics_server_refuses_non_loopback() -> None:
    with pytest.raises(ConfigurationError, match="non-loopback"):
        start_http_server(RuntimeMetrics(), port=0, host="0.0.0.0")
