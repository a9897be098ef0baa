"""``sealinfer bench``: what each security layer costs, one rung at a time, on the same model.

The ladder reuses the production components (the sealed loader, the Cedar ``Authorizer``, the
``InputValidator``, the ``OutputGuard``, the ``AuditLog`` in both durabilities, keyed digests) so the
figures are those of the runtime, not of a mock-up. Each request becomes a telemetry row whose
``config`` names its rung, so the dashboard's overhead page charts the ladder directly.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

RUNGS = (
    "plain",
    "sealed",
    "sealed+authz",
    "sealed+authz+audit(process)",
    "sealed+authz+audit(power)",
    "sealed+authz+audit(process)+guards",
)


@dataclass
class RungResult:
    config: str
    latencies_us: list[float] = field(default_factory=list)
    load_s: float = 0.0

    def quantiles(self) -> tuple[float, float, float]:
        p50, p95, p99 = np.percentile(self.latencies_us, [50, 95, 99])
        return float(p50), float(p95), float(p99)


def _probe_inputs(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [
            batch if (i == 0 and not isinstance(d, int)) else (d if isinstance(d, int) and d > 0 else 1)
            for i, d in enumerate(inp.shape)
        ]
        dtype = np.float32 if "float" in inp.type else np.int64
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype) if dtype == np.float32 else np.zeros(shape, dtype)
    return feeds


def run_bench(
    model_path: Path,
    *,
    requests: int,
    telemetry_db: Path,
    batch: int = 1,
    watermark: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[RungResult], dict[str, Any]]:
    """Run every rung ``requests`` times; returns the results and notes (e.g. a skipped rung)."""
    import onnxruntime as ort

    from sealinfer.runtime.admission import verify_watermark
    from sealinfer.runtime.audit.log import AuditLog
    from sealinfer.runtime.audit.record import AuditEvent
    from sealinfer.runtime.audit.template import EventTemplate
    from sealinfer.runtime.caller import Caller
    from sealinfer.runtime.compiler import SealOptions, seal_model
    from sealinfer.runtime.errors import WatermarkError
    from sealinfer.runtime.keys.keyring import Keyring
    from sealinfer.runtime.loader import open_decrypted
    from sealinfer.runtime.pipeline import TensorDigester
    from sealinfer.runtime.policy.authz import Authorizer, ModelResource
    from sealinfer.runtime.policy.guards import OutputGuard
    from sealinfer.runtime.policy.profile import load_profile
    from sealinfer.runtime.policy.validation import InputValidator
    from sealinfer.runtime.runtime import Runtime
    from sealinfer.runtime.telemetry.record import TelemetryRecord
    from sealinfer.runtime.telemetry.store import TelemetryStore
    from sealinfer.runtime.tensorspec import TensorSpec

    notes: dict[str, Any] = {}
    profile = load_profile("hipaa")
    caller = Caller("dr.bench", "clinician", "treatment", tenant="bench")
    with tempfile.TemporaryDirectory(prefix="sealinfer-bench-") as tmp:
        work = Path(tmp)
        ring = Keyring.create(work / "kr", os.urandom(16).hex(), scrypt_n=2**14)
        sealed = work / "model.sealed"
        t = time.perf_counter()
        seal_model(model_path, sealed, keyring=ring, options=SealOptions(name=model_path.stem))
        notes["seal_s"] = time.perf_counter() - t
        marked = None
        if watermark:
            try:
                marked = work / "marked.sealed"
                seal_model(
                    model_path,
                    marked,
                    keyring=ring,
                    options=SealOptions(name=model_path.stem, watermark_payload=b"sealinfer-bench"),
                )
            except WatermarkError as exc:
                marked = None
                notes["watermark_skipped"] = str(exc)

        plain = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        feeds = _probe_inputs(plain, batch)
        t = time.perf_counter()
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        plain_load = time.perf_counter() - t
        rt = Runtime(ring)
        t = time.perf_counter()
        session = rt.load(sealed)
        sealed_load = time.perf_counter() - t
        manifest = session.manifest
        model = manifest["model"]
        resource = ModelResource(str(model["name"]), str(model["version"]), str(model["sha256"]), True)
        authz = Authorizer.from_profile(profile)
        specs = [TensorSpec.from_dict(s) for s in manifest["signature_io"]["inputs"]]
        validate = InputValidator(specs, profile.inputs)
        # Rounding only: the rate limit would throttle the benchmark's single caller.
        guard = OutputGuard(replace(profile.outputs, top_k=None, max_queries_per_minute=None))
        _, hkey = ring.secret("audit-hmac")
        digester = TensorDigester(hkey)  # what the runtime's pipeline uses, so the rungs cost the same
        template = EventTemplate(AuditEvent(actor=caller.user, role=caller.role, purpose=caller.purpose,
                                            action="infer", model_id=resource.name, model_version=resource.version,
                                            model_digest=resource.digest, policy_id=profile.id))
        logs = {d: AuditLog(work / f"audit-{d}.db", signer=ring.signer(), durability=d) for d in ("process", "power")}
        names = [o.name for o in plain.get_outputs()]

        def secured(audit: str | None, guarded: bool) -> Callable[[], dict[str, float]]:
            def call() -> dict[str, float]:
                t0 = time.perf_counter_ns()
                authz.authorize(caller, "infer", resource)
                t1 = time.perf_counter_ns()
                validate(feeds)
                t2 = time.perf_counter_ns()
                out = session._infer(feeds)  # the rung adds its own layers around the bare session
                t3 = time.perf_counter_ns()
                if guarded:
                    out = guard.transform(out)
                t4 = time.perf_counter_ns()
                if audit is not None:
                    logs[audit].append(template.render(
                        decision="allow", reasons=[], outcome="ok", error_code=None,
                        input_digest=digester.digest(feeds), output_digest=digester.digest(out),
                        latency_us=(t4 - t0) // 1000))
                t5 = time.perf_counter_ns()
                return {
                    "authorize_us": (t1 - t0) / 1e3,
                    "validate_us": (t2 - t1) / 1e3,
                    "inference_us": (t3 - t2) / 1e3,
                    "guard_us": (t4 - t3) / 1e3,
                    "record_us": (t5 - t4) / 1e3,
                }

            return call

        def bare(run: Callable[[], Any]) -> Callable[[], dict[str, float]]:
            def call() -> dict[str, float]:
                t0 = time.perf_counter_ns()
                run()
                return {"inference_us": (time.perf_counter_ns() - t0) / 1e3}

            return call

        ladder: dict[str, Callable[[], dict[str, float]]] = {
            "plain": bare(lambda: plain.run(names, feeds)),
            "sealed": bare(lambda: session._infer(feeds)),
            "sealed+authz": secured(None, False),
            "sealed+authz+audit(process)": secured("process", False),
            "sealed+authz+audit(power)": secured("power", False),
            "sealed+authz+audit(process)+guards": secured("process", True),
        }
        results = [RungResult(c) for c in ladder]
        results[0].load_s, results[1].load_s = plain_load, sealed_load
        store = TelemetryStore(telemetry_db)
        try:
            for fn in ladder.values():  # warm every rung before measuring any
                for _ in range(min(50, requests)):
                    fn()
            # Interleave rungs in blocks: drift hits every rung alike, while each block keeps
            # onnxruntime's thread pool warm (a rung that follows an fsync would otherwise pay for
            # waking it, and look slower than it is).
            block = 50
            done = 0
            while done < requests:
                n = min(block, requests - done)
                for res, fn in zip(results, ladder.values(), strict=True):
                    fn()  # one unmeasured call re-warms after the previous rung
                    for _ in range(n):
                        phases = fn()
                        total = sum(phases.values())
                        res.latencies_us.append(total)
                        store.record(
                            TelemetryRecord(
                                ts=time.time(),
                                request_id=uuid.uuid4().hex,
                                model=resource.name,
                                model_version=resource.version,
                                model_digest=resource.digest,
                                config=res.config,
                                features={"rung": res.config},
                                device="cpu0",
                                tenant="bench",
                                priority="routine",
                                batch=batch,
                                total_us=total,
                                model_param_bytes=int(model.get("param_bytes", 0)),
                                **phases,
                            )
                        )
                done += n
                if progress:
                    progress(done)
            if marked is not None:
                t = time.perf_counter()
                artifact, data_key = rt.open_artifact(marked)
                dec = open_decrypted(artifact, data_key)
                verify_watermark(profile, ring, artifact.manifest, dec, {})  # what a HIPAA load does
                dec.close()
                notes["watermark_verify_load_s"] = time.perf_counter() - t
        finally:
            store.close()
            for log in logs.values():
                log.close()
            session.close()
    notes["plain_load_s"], notes["sealed_load_s"] = plain_load, sealed_load
    return results, notes
