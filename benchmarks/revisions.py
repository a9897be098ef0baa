"""Request-path overhead of this checkout against an earlier revision, paired call by call in one process.

    python benchmarks/revisions.py REV [--rounds 30]

``overhead.py`` compares sealinfer with plain onnxruntime; from one run to the next its figures move
by tens of µs with the shared machine's state, more than a change to the request path is worth. This
script takes the machine out of the comparison: it loads REV's code under another package name
(``sealinfer_rev``, from ``git archive``) next to this checkout's, loads model (b) of ``overhead.py``
under the same benchmark profile with each, and alternates call by call, on each version's own
onnxruntime session, plain ``InferenceSession.run`` and ``session.run``. Each version's overhead is
its p50 minus its own plain p50; their difference is what the change between REV and this checkout
did to the request path (within a few µs from run to run here; against itself, REV = HEAD with no
change, it measured +2.9 µs). Needs a git checkout.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from overhead import bench_profile_text  # noqa: E402

from sealinfer.tests import models  # noqa: E402

_PACKAGES = ("runtime", "policies", "privacy", "watermark", "dashboard", "tests")


def unpack(rev: str, into: Path) -> str:
    """REV's subpackages as package ``sealinfer_rev`` under ``into``; returns REV's short hash and subject."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, *_PACKAGES],
                          capture_output=True, check=True).stdout
    pkg = into / "sealinfer_rev"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(pkg, filter="data")
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        # every module path (imports, lazy-import tables, resource packages); names that only look like
        # one, such as the schema file "sealinfer.cedarschema", stay as they are
        text = re.sub(r"\bsealinfer\.(runtime|policies|privacy|watermark|dashboard|tests)\b", r"sealinfer_rev.\1", text)
        text = re.sub(r"\bfrom sealinfer import\b", "from sealinfer_rev import", text)
        path.write_text(text)
    return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev],
                          capture_output=True, text=True, check=True).stdout.strip()[:90]


def contestant(pkg: str, work: Path, model: Path, profile_text: str, feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
    """(runtime, plain call, sealinfer call) for the package ``pkg`` (``sealinfer`` or ``sealinfer_rev``)."""
    runtime: ModuleType = importlib.import_module(f"{pkg}.runtime")
    keyring: ModuleType = importlib.import_module(f"{pkg}.runtime.keys.keyring")
    profile: ModuleType = importlib.import_module(f"{pkg}.runtime.policy.profile")
    folder = work / f"{pkg}-run"
    folder.mkdir()
    ring = keyring.Keyring.create(folder / "kr", "bench", scrypt_n=2**14)
    sealed = folder / "model.sealed"
    runtime.seal_model(model, sealed, keyring=ring,
                       options=runtime.SealOptions(policy_profile="hipaa", phi=True))
    devices = folder / "devices.yaml"
    devices.write_text("devices:\n  - id: cpu0\n    attested: true\n")
    rt = runtime.Runtime(ring, profile.parse_profile(profile_text, source="hipaa (benchmark variant)"),
                         audit_db=folder / "audit.db", telemetry_db=folder / "telemetry.db", devices=devices)
    session = rt.load(sealed, caller=runtime.Caller("svc-bench", "service", "treatment"))
    doctor = runtime.Caller("dr.bench", "clinician", "treatment", tenant="ward7")
    names = session._output_names
    return rt, (lambda: session._session.run(names, feeds)), (lambda: session.run(feeds, caller=doctor)), session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the earlier revision (anything git understands)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of 200 paired calls per version")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sealinfer-revisions-") as tmp:
        work = Path(tmp)
        label = unpack(args.rev, work)
        sys.path.insert(0, str(work))
        model = models.save(models.deep_mlp(256, 2048, 4, 10), work / "deep.onnx")
        feeds = {"input": np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)}
        profile_text = bench_profile_text()
        versions = {name: contestant(pkg, work, model, profile_text, feeds)
                    for name, pkg in (("REV", "sealinfer_rev"), ("this checkout", "sealinfer"))}
        clock = time.perf_counter_ns
        samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in versions}
        for _, plain, secured, _ in versions.values():
            for _ in range(100):
                plain()
                secured()
        for n in range(args.rounds):
            order = list(versions.items()) if n % 2 == 0 else list(versions.items())[::-1]
            for name, (rt, plain, secured, _) in order:
                deadline = clock() + 10_000_000
                while clock() < deadline:
                    plain()
                    secured()
                plains, secureds = samples[name]
                for _ in range(200):
                    t0 = clock()
                    plain()
                    t1 = clock()
                    secured()
                    t2 = clock()
                    plains.append((t1 - t0) / 1e3)
                    secureds.append((t2 - t1) / 1e3)
                rt.audit_log.flush()
                rt.telemetry.flush()
        print(f"model (b), {args.rounds * 200} paired calls per version; REV = {label}")
        added = {}
        for name, (plains, secureds) in samples.items():
            p, s = float(np.median(plains)), float(np.median(secureds))
            added[name] = s - p
            print(f"  {name:14} plain p50 {p:8.1f} µs   session.run p50 {s:8.1f} µs   added {s - p:+7.1f} µs "
                  f"(ratio {s / p:.3f})")
        print(f"  this checkout against REV: {added['this checkout'] - added['REV']:+.1f} µs per request")
        for rt, _, _, session in versions.values():
            session.close()
            rt.close()


if __name__ == "__main__":
    main()
