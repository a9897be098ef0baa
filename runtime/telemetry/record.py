"""One request's telemetry: what ran, under which protections, and where the time went."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Latency phases in the order a request passes through them (DESIGN.md, "Stores").
PHASES: tuple[str, ...] = ("queue", "authorize", "validate", "inference", "guard", "record")
OUTCOMES: tuple[str, ...] = ("ok", "denied", "error")


@dataclass(slots=True)
class TelemetryRecord:
    """A request as the runtime saw it. Carries no inputs or outputs: only ids, digests and timings.

    Times are microseconds; ``ts`` is the request's arrival as Unix epoch seconds.
    """

    ts: float
    request_id: str
    model: str
    outcome: str = "ok"
    model_version: str = ""
    model_digest: str = ""
    config: str = "plain"
    features: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    tenant: str = "default"
    priority: str = "routine"
    error_code: str | None = None
    batch: int = 1
    queue_us: float = 0.0
    authorize_us: float = 0.0
    validate_us: float = 0.0
    inference_us: float = 0.0
    guard_us: float = 0.0
    record_us: float = 0.0
    total_us: float | None = None
    model_param_bytes: int = 0
    predicted_us: float | None = None
    features_json: str | None = None  # ``features`` already in canonical JSON (a session's are fixed)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.total_us is None:
            # The sum of phases is the service time when the caller did not time the whole request.
            self.total_us = (
                self.queue_us + self.authorize_us + self.validate_us
                + self.inference_us + self.guard_us + self.record_us
            )

    def as_row(self) -> tuple[Any, ...]:
        """The ``requests`` row in :data:`COLUMNS` order (features as canonical JSON)."""
        return (
            self.ts, self.request_id, self.model, self.model_version, self.model_digest, self.config,
            self.features_json or features_json(self.features), self.device, self.tenant,
            self.priority, self.outcome, self.error_code, self.batch, self.queue_us, self.authorize_us,
            self.validate_us, self.inference_us, self.guard_us, self.record_us, self.total_us,
            self.model_param_bytes, self.predicted_us,
        )


@dataclass(frozen=True, slots=True)
class SessionFields:
    """What every request of one session shares. The request thread hands over only its own values
    (:meth:`record`'s tuple); the writer builds the :class:`TelemetryRecord`, off the hot path."""

    model: str
    model_version: str
    model_digest: str
    config: str
    features: dict[str, Any]
    device: str
    model_param_bytes: int
    request_prefix: str  # request ids are "<prefix>-<n>"
    features_json: str | None = None

    def record(self, values: tuple[Any, ...]) -> TelemetryRecord:
        """``values`` = (ts, n, outcome, error_code, tenant, priority, batch, authorize_us, validate_us,
        inference_us, guard_us, record_us, total_us)."""
        (ts, n, outcome, error_code, tenant, priority, batch, authorize_us, validate_us, inference_us, guard_us,
         record_us, total_us) = values
        return TelemetryRecord(
            ts=ts, request_id=f"{self.request_prefix}-{n}", model=self.model, outcome=outcome,
            model_version=self.model_version, model_digest=self.model_digest, config=self.config,
            features=self.features, device=self.device, tenant=tenant, priority=priority, error_code=error_code,
            batch=batch, authorize_us=authorize_us, validate_us=validate_us, inference_us=inference_us,
            guard_us=guard_us, record_us=record_us, total_us=total_us, model_param_bytes=self.model_param_bytes,
            features_json=self.features_json,
        )


def features_json(features: dict[str, Any]) -> str:
    """The canonical JSON stored in the ``features`` column."""
    return json.dumps(features, sort_keys=True, separators=(",", ":"))


#: Column names of the ``requests`` table, in :meth:`TelemetryRecord.as_row` order.
COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "model", "model_version", "model_digest", "config", "features", "device",
    "tenant", "priority", "outcome", "error_code", "batch", "queue_us", "authorize_us", "validate_us",
    "inference_us", "guard_us", "record_us", "total_us", "model_param_bytes", "predicted_us",
)
