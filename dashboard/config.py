"""What the dashboard reads, passed from ``sealinfer dashboard`` to the Streamlit process by environment.

Environment (not script arguments) because Streamlit re-executes page scripts on every interaction and
``AppTest`` has no argv; the values are paths and flags, never secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sealinfer.runtime.telemetry.queries import DEFAULT_DEADLINES_MS

ENV_TELEMETRY = "SEALINFER_TELEMETRY_DB"
ENV_AUDIT = "SEALINFER_AUDIT_DB"
ENV_PRIVACY = "SEALINFER_PRIVACY_DB"
ENV_PROFILE = "SEALINFER_DASHBOARD_PROFILE"
ENV_REFRESH = "SEALINFER_DASHBOARD_REFRESH_S"
ENV_AUTH = "SEALINFER_DASHBOARD_AUTH"


@dataclass(frozen=True)
class DashboardConfig:
    telemetry_db: Path | None = None
    audit_db: Path | None = None
    privacy_db: Path | None = None
    profile: str | None = "hipaa"
    refresh_s: float = 30.0
    auth_required: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DashboardConfig:
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            value = env.get(name, "").strip()
            return Path(value) if value else None

        try:
            refresh = float(env.get(ENV_REFRESH, "30"))
        except ValueError:
            refresh = 30.0
        return cls(path(ENV_TELEMETRY), path(ENV_AUDIT), path(ENV_PRIVACY),
                   env.get(ENV_PROFILE, "hipaa") or None, max(refresh, 0.0), env.get(ENV_AUTH) == "1")

    def to_env(self) -> dict[str, str]:
        return {
            ENV_TELEMETRY: str(self.telemetry_db or ""), ENV_AUDIT: str(self.audit_db or ""),
            ENV_PRIVACY: str(self.privacy_db or ""), ENV_PROFILE: self.profile or "",
            ENV_REFRESH: str(self.refresh_s), ENV_AUTH: "1" if self.auth_required else "0",
        }


def deadlines(profile: str | None) -> tuple[dict[str, float], str]:
    """Deadline per priority class (ms) and where they came from (the profile, or the defaults)."""
    if profile:
        try:
            from sealinfer.runtime.policy.profile import load_profile
        except ImportError:
            return dict(DEFAULT_DEADLINES_MS), "defaults (policy profiles not available)"
        try:
            raw = load_profile(profile).raw
            classes = raw.get("priority_classes") or {}
            found = {name: float(spec["deadline_ms"]) for name, spec in classes.items()}
            if found:
                return found, f"policy profile {profile!r}"
        except Exception as exc:  # a broken profile must not take the dashboard down
            return dict(DEFAULT_DEADLINES_MS), f"defaults (profile {profile!r} unusable: {exc})"
    return dict(DEFAULT_DEADLINES_MS), "defaults"
