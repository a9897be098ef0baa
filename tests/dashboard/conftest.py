"""Fixture databases shared by the dashboard tests (built once per session, read-only afterwards)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from sealinfer.dashboard.fixtures import make_audit_db, make_telemetry_db

N_REQUESTS = 6_000
N_AUDIT = 300


@pytest.fixture(scope="session")
def telemetry_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_telemetry_db(tmp_path_factory.mktemp("telemetry") / "telemetry.db", N_REQUESTS, seed=3)


@pytest.fixture(scope="session")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audit_db(tmp_path_factory.mktemp("audit") / "audit.db", N_AUDIT, seed=5, checkpoint_every=100)


@pytest.fixture(scope="session")
def raw(telemetry_db: Path) -> dict[str, np.ndarray]:
    """The raw ``requests`` rows as arrays: the independent ground truth for figures on the pages."""
    conn = sqlite3.connect(telemetry_db)
    cols = ["config", "model", "priority", "device", "outcome", "total_us", "queue_us", "inference_us"]
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM requests").fetchall()
    conn.close()
    return {c: np.array([r[i] for r in rows]) for i, c in enumerate(cols)}
