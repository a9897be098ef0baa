"""Sealed models compiled for each shipped profile, with real certificates and watermarks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sealinfer.runtime import SealOptions, seal_model
from sealinfer.runtime.keys.keyring import Keyring
from sealinfer.runtime.policy.profile import PolicyProfile, load_profile, parse_profile, shipped_resource_text
from sealinfer.tests import models

PAYLOAD = b"st-mary/ward-7"


def certificate(model_path: Path, *, sigma: float = 1.3, q: float = 0.004, steps: int = 3750) -> dict:
    """A DP certificate for ``model_path`` (ε recomputed by the checker: 0.92 at δ=1e-5 by default)."""
    return {
        "accountant": "rdp",
        "delta": 1e-5,
        "dataset_size": 60000,
        "sampling": "poisson",
        "segments": [{"noise_multiplier": sigma, "sample_rate": q, "steps": steps}],
        "max_grad_norm": 1.0,
        "secure_mode": False,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
    }


ATTESTED_CPU = """\
# The operator's statement: this host's CPU is attested, on-prem hardware (the scheduler cannot know).
devices:
  - id: cpu0
    attested: true
    location: on_prem
"""


@dataclass
class Sealed:
    keyring: Keyring
    devices: Path
    hipaa: Path
    hipaa_non_phi: Path
    dev: Path
    unwatermarked: Path


def seal_for(
    keyring: Keyring,
    src: Path,
    out: Path,
    profile: str,
    *,
    phi: bool = True,
    mark: bool = True,
    cert: dict | None = None,
) -> Path:
    from sealinfer.runtime.compiler import seal_options_for_policy

    opts = SealOptions(
        name="sepsis-risk",
        version="4",
        phi=phi,
        watermark_payload=PAYLOAD if mark else None,
        watermark_max_relative_change=0.05,  # random weights: no trained margin to hide in
        dp_certificate=cert,
    )
    if profile != "none":
        if mark and cert is not None:
            opts = seal_options_for_policy(opts, profile)
        else:  # bypass the compile-time demands to produce artifacts the load-time checks must refuse
            from dataclasses import replace

            opts = replace(opts, policy_profile=profile, max_epsilon=load_profile(profile).privacy.max_epsilon)
    seal_model(src, out, keyring=keyring, options=opts)
    return out


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Sealed:
    tmp = tmp_path_factory.mktemp("secure")
    ring = Keyring.create(tmp / "kr", "pw", scrypt_n=2**10)
    src = models.save(models.mlp(30, 512, 64, seed=5), tmp / "sepsis.onnx")
    cert = certificate(src)
    (tmp / "devices.yaml").write_text(ATTESTED_CPU)
    return Sealed(
        keyring=ring,
        devices=tmp / "devices.yaml",
        hipaa=seal_for(ring, src, tmp / "hipaa.sealed", "hipaa", cert=cert),
        hipaa_non_phi=seal_for(ring, src, tmp / "non-phi.sealed", "hipaa", phi=False, cert=cert),
        dev=seal_for(ring, src, tmp / "dev.sealed", "dev", mark=False),
        unwatermarked=seal_for(ring, src, tmp / "nomark.sealed", "hipaa", mark=False, cert=cert),
    )


def hipaa_variant(**overrides: dict) -> PolicyProfile:
    """The shipped HIPAA profile with some sections changed (same id, so artifacts still match)."""
    raw = yaml.safe_load(shipped_resource_text("hipaa.yaml"))
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return parse_profile(yaml.safe_dump(raw), source="hipaa-variant.yaml")
