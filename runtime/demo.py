"""The end-to-end hospital demo behind ``sealinfer demo`` (README's first command).

A breast-cancer risk model is trained with DP-SGD on scikit-learn's bundled data, sealed for the
HIPAA profile (watermarked, DP claim checked, encrypted, signed), loaded by a service account,
used by a clinician, refused to a researcher, and every step is audited; then the audit chain is
verified, a compliance report is written (HTML + PDF), and the dashboard command is printed.
Everything lands in one work folder; nothing but the sealed artifact holds model weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

DEMO_PASSPHRASE = "sealinfer-demo-only"  # used only when SEALINFER_PASSPHRASE is unset
WATERMARK = b"st-mary/oncology-01"
DEVICES_YAML = """\
# Operator's statement (the scheduler cannot know it): this host's CPU is attested, on-prem hardware.
devices:
  - id: cpu0
    attested: true
    location: on_prem
"""


@dataclass
class DemoResult:
    workdir: Path
    artifact: Path
    audit_db: Path
    telemetry_db: Path
    report_html: Path
    report_pdf: Path
    accuracy: float
    epsilon: float
    denied_audit_seq: int


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    mean, std = x_tr.mean(0), x_tr.std(0)  # standardisation is the hospital's preprocessing step
    return ((x_tr - mean) / std).astype(np.float32), ((x_te - mean) / std).astype(np.float32), y_tr, y_te


def _model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 2))


def run_demo(workdir: Path, *, epsilon: float = 3.0, echo: Callable[[str], None] = print) -> DemoResult:
    from sealinfer.privacy import train_dp
    from sealinfer.runtime.audit.verify import verify_log
    from sealinfer.runtime.caller import Caller
    from sealinfer.runtime.compiler import SealOptions, seal_model, seal_options_for_policy
    from sealinfer.runtime.keys.keyring import Keyring
    from sealinfer.runtime.policy.authz import AccessDeniedError
    from sealinfer.runtime.reports.evidence import build_report
    from sealinfer.runtime.reports.html import render_html
    from sealinfer.runtime.reports.pdf import render_pdf
    from sealinfer.runtime.runtime import Runtime
    from sealinfer.runtime.verification import verify_artifact

    workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC) - timedelta(seconds=1)
    passphrase = os.environ.get("SEALINFER_PASSPHRASE") or DEMO_PASSPHRASE

    echo("\n[1/8] Keys")
    ring_dir = workdir / "keyring"
    if (ring_dir / "keyring.json").exists():
        ring = Keyring.open(ring_dir, passphrase)
        echo(f"  opened keyring {ring_dir}")
    else:
        ring = Keyring.create(ring_dir, passphrase)
        echo(f"  created keyring {ring_dir} (KEKs and signing keys encrypted under the passphrase, files 0600)")
    if passphrase == DEMO_PASSPHRASE:
        echo("  note: demo passphrase in use; set SEALINFER_PASSPHRASE for anything real")
    echo(f"  KEK {ring.default_kek_id()}  signer {ring.active_key_id('signing')}")

    echo(f"\n[2/8] Train a breast-cancer classifier with DP-SGD (target epsilon {epsilon}, delta 1e-5)")
    x_tr, x_te, y_tr, y_te = _data()
    trained = train_dp(_model(), x_tr, y_tr, target_epsilon=epsilon, delta=1e-5, epochs=20, batch_size=64, lr=0.03)
    model_path = workdir / "breast-cancer.onnx"
    model_path.write_bytes(trained.onnx_bytes)  # the hospital's own unsealed export, as train_dp gives it
    cert_path = workdir / "breast-cancer.dpcert.json"
    cert_path.write_text(trained.certificate.to_json())
    echo(f"  epsilon {trained.epsilon:.3f}; ONNX matches torch within {trained.max_abs_diff:.1e}")

    echo("\n[3/8] Seal for the HIPAA profile: DP check, watermark, encrypt, sign")
    artifact = workdir / "breast-cancer.sealed"
    options = seal_options_for_policy(
        SealOptions(
            name="breast-cancer-risk",
            version="1",
            phi=True,
            watermark_payload=WATERMARK,
            watermark_probe_inputs={"input": x_tr},  # fidelity is judged on real inputs, in memory
            dp_certificate=trained.certificate.to_dict(),
        ),
        "hipaa",
    )
    sealed = seal_model(model_path, artifact, keyring=ring, options=options)
    m = sealed.manifest
    echo(
        f"  {artifact.name}: epsilon {m['privacy']['epsilon']:.3f} (recomputed, limit {m['privacy']['max_epsilon']}), "
        f"watermark {m['watermark']['payload_sha256'][:12]}..., signer {m['signer_key_id']}"
    )
    check = verify_artifact(artifact, ring)
    echo(f"  verified: signature and all {check.segments} segments authenticate")

    echo("\n[4/8] Load under HIPAA as a service account (policy, placement, watermark verified on load)")
    devices = workdir / "devices.yaml"
    devices.write_text(DEVICES_YAML)
    audit_db, telemetry_db = workdir / "audit.db", workdir / "telemetry.db"
    rt = Runtime(ring, "hipaa", audit_db=audit_db, telemetry_db=telemetry_db, devices=devices)
    try:
        session = rt.load(artifact, caller=Caller("svc-oncology", "service", "treatment", tenant="oncology"))
        echo(f"  loaded {session.name} v{session.version} on {session.device}")

        echo("\n[5/8] A clinician runs predictions for treatment")
        clinician = Caller("dr.grey", "clinician", "treatment", tenant="oncology")
        logits = np.concatenate(
            [session.run({"input": x_te[i : i + 8]}, caller=clinician)["logits"] for i in range(0, len(x_te), 8)]
        )
        accuracy = float((logits.argmax(1) == y_te).mean())
        echo(f"  {len(x_te)} held-out patients, accuracy {accuracy:.3f} (outputs rounded by the HIPAA guard)")
        for i in range(3):
            label = "benign" if logits[i].argmax() == 1 else "malignant"
            echo(f"    patient {i}: logits [{logits[i][0]:.4f}, {logits[i][1]:.4f}] -> {label}")

        echo("\n[6/8] A researcher asks for PHI predictions: denied")
        denied_seq = -1
        try:
            session.run({"input": x_te[:1]}, caller=Caller("r.yang", "researcher", "research"))
        except AccessDeniedError as exc:
            denied_seq = int(getattr(exc, "audit_seq", -1))
            echo(f"  denied: {exc.message}")
            echo(f"  audit record: seq {denied_seq} in {audit_db}")
    finally:
        rt.close()

    echo("\n[7/8] Verify the audit chain")
    result = verify_log(audit_db, ring.trust_store())
    echo(
        f"  {'OK' if result.ok else 'FAILED'}: {result.records} records, head {result.head_hash[:16]}..., "
        f"{result.checkpoints} signed checkpoint(s)"
    )

    echo("\n[8/8] Compliance report (HIPAA 164.312)")
    keys = [k.to_dict() for k in ring.list_keys()]
    report = build_report(
        audit_db,
        telemetry_db=telemetry_db,
        start=started,
        end=datetime.now(UTC) + timedelta(seconds=1),
        trust_store=ring.trust_store(),
        keys=keys,
    )
    report_html = workdir / "report.html"
    report_html.write_text(render_html(report), encoding="utf-8")
    report_pdf = render_pdf(report, workdir / "report.pdf")
    echo(f"  {report_html}\n  {report_pdf}")

    echo("\nOpen the operations dashboard with:")
    echo(f"  sealinfer dashboard --telemetry-db {telemetry_db} --audit-db {audit_db}")
    echo("  then browse to http://127.0.0.1:8501")
    return DemoResult(
        workdir,
        artifact,
        audit_db,
        telemetry_db,
        report_html,
        report_pdf,
        accuracy,
        float(m["privacy"]["epsilon"]),
        denied_seq,
    )
