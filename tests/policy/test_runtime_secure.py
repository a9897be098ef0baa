"""The secure runtime end to end: profiles, Cedar decisions, validation, guards, audit and telemetry."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from sealinfer.runtime import Caller, Runtime
from sealinfer.runtime.audit.verify import verify_log
from sealinfer.runtime.errors import (
    AuthorizationError,
    CertificateError,
    ConfigurationError,
    InputValidationError,
    RateLimitError,
    UnknownPrincipalError,
    WatermarkError,
)
from sealinfer.runtime.pipeline import keyed_digest
from sealinfer.tests.policy.secure_fixtures import Sealed, certificate, hipaa_variant, seal_for

SERVICE = Caller("svc-ward7", "service", "treatment", tenant="ward7")
CLINICIAN = Caller("dr.grey", "clinician", "treatment", tenant="ward7")
RESEARCHER = Caller("r.yang", "researcher", "research", tenant="research")
X = np.random.default_rng(0).standard_normal((4, 30)).astype(np.float32)


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def rt(tmp_path: Path, sealed: Sealed):
    runtime = Runtime(
        sealed.keyring,
        "hipaa",
        audit_db=tmp_path / "audit.db",
        telemetry_db=tmp_path / "tel.db",
        devices=sealed.devices,
    )
    yield runtime
    runtime.close()


def test_hipaa_clinician_treatment_is_served_guarded_audited_and_timed(tmp_path: Path, rt: Runtime, sealed: Sealed):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    outputs = session.run({"input": X}, caller=CLINICIAN)
    probs = outputs["probabilities"]
    assert np.array_equal(probs, np.round(probs, 4))  # HIPAA rounds outputs to 4 decimals
    rt.close()
    events = rows(
        tmp_path / "audit.db",
        "SELECT action, actor, decision, outcome, json_extract(body, '$.input_digest'), "
        "json_extract(body, '$.output_digest') FROM audit_events ORDER BY seq",
    )
    assert [e[:4] for e in events] == [("load", "svc-ward7", "allow", "ok"), ("infer", "dr.grey", "allow", "ok")]
    # keyed digests of what was asked and answered, never the data
    _, key = sealed.keyring.secret("audit-hmac")
    assert events[1][4] == keyed_digest(key, {"input": X})
    assert events[1][5] == keyed_digest(key, outputs)
    raw = (tmp_path / "audit.db").read_bytes() + (tmp_path / "tel.db").read_bytes()
    assert X.tobytes()[:32] not in raw and probs.tobytes()[:32] not in raw
    assert verify_log(tmp_path / "audit.db", sealed.keyring.trust_store()).ok
    tel = rows(
        tmp_path / "tel.db",
        "SELECT config, outcome, authorize_us, validate_us, inference_us, record_us, total_us FROM requests",
    )
    assert len(tel) == 1 and tel[0][0].startswith("sealed+authz+audit(process)") and tel[0][1] == "ok"
    assert all(v >= 0 for v in tel[0][2:]) and tel[0][6] >= tel[0][4]
    load_details = rows(tmp_path / "audit.db", "SELECT body FROM audit_events WHERE seq = 1")[0][0]
    assert "verified" in str(load_details)  # watermark verified on load under HIPAA


def test_researcher_asking_for_phi_predictions_is_denied_and_audited(tmp_path: Path, rt: Runtime, sealed: Sealed):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    with pytest.raises(AuthorizationError, match="researcher 'r.yang' may not run") as info:
        session.run({"input": X}, caller=RESEARCHER)
    seq = info.value.audit_seq
    rt.audit_log.flush()  # acknowledged records reach audit.db in batches; readers of the file flush first
    assert rows(tmp_path / "audit.db", f"SELECT actor, decision, outcome FROM audit_events WHERE seq = {seq}") == [
        ("r.yang", "deny", "denied")
    ]
    # the session keeps serving others
    assert session.run({"input": X}, caller=CLINICIAN)["probabilities"].shape == (4, 64)
    # researchers may use non-PHI models for research
    non_phi = rt.load(sealed.hipaa_non_phi, caller=SERVICE)
    assert non_phi.run({"input": X}, caller=RESEARCHER)["probabilities"].shape == (4, 64)


def test_load_denials_are_audited(tmp_path: Path, rt: Runtime, sealed: Sealed):
    with pytest.raises(AuthorizationError, match="may not load"):
        rt.load(sealed.hipaa, caller=RESEARCHER)
    with pytest.raises(ConfigurationError, match="compiled for policy profile 'dev'"):
        rt.load(sealed.dev, caller=SERVICE)
    with pytest.raises(WatermarkError, match="requires a watermarked model"):
        rt.load(sealed.unwatermarked, caller=SERVICE)
    with pytest.raises(ConfigurationError, match="needs a caller"):
        rt.load(sealed.hipaa)
    rt.close()
    outcomes = rows(tmp_path / "audit.db", "SELECT action, decision, error_code FROM audit_events ORDER BY seq")
    assert outcomes == [
        ("load", "deny", "denied"),
        ("load", "deny", "configuration"),
        ("load", "deny", "watermark_error"),
    ]


def test_epsilon_above_the_profile_limit_is_refused(tmp_path: Path, sealed: Sealed):
    strict = hipaa_variant(privacy={"max_epsilon": 0.5})
    with Runtime(sealed.keyring, strict, audit_db=tmp_path / "a.db", devices=sealed.devices) as rt:
        with pytest.raises(CertificateError, match="exceeds profile 'hipaa'"):
            rt.load(sealed.hipaa, caller=SERVICE)


def test_dp_certificate_over_the_limit_cannot_even_be_sealed(tmp_path: Path, sealed: Sealed):
    from sealinfer.tests import models

    src = models.save(models.mlp(30, 512, 64, seed=5), tmp_path / "m.onnx")
    loose = certificate(src, sigma=0.6, q=0.05, steps=5000)  # ε far above 8
    with pytest.raises(CertificateError):
        seal_for(sealed.keyring, src, tmp_path / "x.sealed", "hipaa", cert=loose)
    assert not (tmp_path / "x.sealed").exists()


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"wrong": X}, "input"),
        ({"input": X.astype(np.float64)}, "float32"),
        ({"input": X[0]}, "dimension"),
        ({"input": np.ones((4, 29), np.float32)}, "30"),
        ({"input": np.full((4, 30), np.nan, np.float32)}, "NaN|finite"),
        ({"input": np.ones((5000, 30), np.float32)}, "batch"),
        (None, "must be a dict"),
    ],
    ids=["name", "dtype", "rank", "shape", "nan", "oversize", "not-a-dict"],
)
def test_bad_inputs_are_typed_errors_and_audited(tmp_path: Path, rt: Runtime, sealed: Sealed, inputs, match):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    with pytest.raises(InputValidationError, match=match) as info:
        session.run(inputs, caller=CLINICIAN)
    assert info.value.hint
    seq = info.value.audit_seq
    rt.audit_log.flush()  # acknowledged records reach audit.db in batches; readers of the file flush first
    assert rows(tmp_path / "audit.db", f"SELECT outcome, error_code FROM audit_events WHERE seq = {seq}") == [
        ("error", "input_invalid")
    ]
    assert session.run({"input": X}, caller=CLINICIAN)["probabilities"].shape == (4, 64)


def test_query_rate_limit_against_model_extraction(tmp_path: Path, sealed: Sealed):
    limited = hipaa_variant(outputs={"max_queries_per_minute": 3})
    with Runtime(sealed.keyring, limited, audit_db=tmp_path / "a.db", telemetry_db=tmp_path / "t.db",
                 devices=sealed.devices) as rt:
        session = rt.load(sealed.hipaa, caller=SERVICE)
        for _ in range(3):
            session.run({"input": X}, caller=CLINICIAN)
        with pytest.raises(RateLimitError) as info:
            session.run({"input": X}, caller=CLINICIAN)
        session.run({"input": X}, caller=Caller("dr.bailey", "clinician", "treatment"))  # others unaffected
        rt.audit_log.flush()
        _, key = sealed.keyring.secret("audit-hmac")
        assert rows(tmp_path / "a.db", "SELECT outcome, error_code, json_extract(body, '$.input_digest'), "
                    f"json_extract(body, '$.output_digest') FROM audit_events WHERE seq = {info.value.audit_seq}") == [
            ("denied", "rate_limited", keyed_digest(key, {"input": X}), None)
        ]
        assert rt.telemetry is not None
        rt.telemetry.flush()
        phases = rows(rt.telemetry.path, "SELECT authorize_us, validate_us, inference_us, guard_us, record_us, "
                      "total_us FROM requests WHERE outcome = 'denied'")
        assert len(phases) == 1 and all(v >= 0 for v in phases[0])
        assert sum(phases[0][:5]) <= phases[0][5] + 1  # the phases add up to no more than the whole


def test_break_glass_is_allowed_to_clinicians_and_flagged(tmp_path: Path, rt: Runtime, sealed: Sealed):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    emergency = Caller("dr.grey", "clinician", "operations", break_glass=True)
    assert session.run({"input": X}, caller=emergency)["probabilities"].shape == (4, 64)
    with pytest.raises(AuthorizationError):
        session.run({"input": X}, caller=Caller("ops.kim", "ops", "operations", break_glass=True))
    rt.close()
    flagged = rows(tmp_path / "audit.db", "SELECT actor, decision FROM audit_events WHERE break_glass = 1 ORDER BY seq")
    assert flagged == [("dr.grey", "allow"), ("ops.kim", "deny")]


def test_unknown_principals_and_missing_callers(rt: Runtime, sealed: Sealed):
    with pytest.raises(UnknownPrincipalError, match="Unknown role"):
        Caller("x", "janitor", "treatment")
    session = rt.load(sealed.hipaa, caller=SERVICE)
    with pytest.raises(UnknownPrincipalError, match="needs a caller"):
        session.run({"input": X})
    with pytest.raises(UnknownPrincipalError, match="caller must be a Caller, got str"):
        session.run({"input": X}, caller="dr.house")  # type: ignore[arg-type]


def test_cache_invalidated_when_the_policy_version_changes(rt: Runtime, sealed: Sealed):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    authz = rt._ctx.authorizer
    session.run({"input": X}, caller=CLINICIAN)
    evaluated = authz.cache_info().misses
    for _ in range(3):
        session.run({"input": X}, caller=CLINICIAN)
    assert authz.cache_info().misses == evaluated  # a repeated request is a dictionary lookup, not Cedar
    text = rt.profile.cedar_policies_text().replace(
        'principal.role == "clinician" && context.purpose == "treatment"', "false"
    )
    authz.reload(text, policy_version="hipaa@test-revoked-clinicians")
    with pytest.raises(AuthorizationError):
        session.run({"input": X}, caller=CLINICIAN)


def test_dev_profile_serves_unwatermarked_models(tmp_path: Path, sealed: Sealed):
    with Runtime(sealed.keyring, "dev", audit_db=tmp_path / "a.db", devices=sealed.devices) as rt:
        out = rt.load(sealed.dev, caller=SERVICE).run({"input": X}, caller=CLINICIAN)
    assert out["probabilities"].shape == (4, 64)


def test_eight_threads_times_2000_calls_lose_no_audit_or_telemetry_row(tmp_path: Path, sealed: Sealed):
    profile = hipaa_variant(outputs={"max_queries_per_minute": None})
    rt = Runtime(
        sealed.keyring,
        profile,
        audit_db=tmp_path / "audit.db",
        telemetry_db=tmp_path / "tel.db",
        devices=sealed.devices,
    )
    session = rt.load(sealed.hipaa, caller=SERVICE)
    done = [0] * 8
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        caller = Caller(f"dr.{i}", "clinician", "treatment", tenant=f"t{i % 2}")
        x = np.random.default_rng(i).standard_normal((1, 30)).astype(np.float32)
        try:
            for _ in range(2000):
                session.run({"input": x}, caller=caller)
                done[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rt.close()
    assert not errors and sum(done) == 16000
    assert rows(tmp_path / "audit.db", "SELECT count(*) FROM audit_events WHERE action = 'infer'") == [(16000,)]
    assert rows(tmp_path / "tel.db", "SELECT count(*) FROM requests") == [(16000,)]
    assert verify_log(tmp_path / "audit.db", sealed.keyring.trust_store()).ok


def test_phi_is_refused_without_an_attested_device_and_the_placement_is_audited(tmp_path: Path, sealed: Sealed):
    from sealinfer.runtime.errors import PlacementError

    with Runtime(sealed.keyring, "hipaa", audit_db=tmp_path / "a.db") as rt:  # discovered devices only
        with pytest.raises(PlacementError, match="attested"):
            rt.load(sealed.hipaa, caller=SERVICE)
        session = rt.load(sealed.hipaa_non_phi, caller=SERVICE)  # non-PHI may run on the plain CPU
        assert session.device == "cpu0"
    placed = rows(
        tmp_path / "a.db",
        "SELECT error_code, device, json_extract(body, '$.details.placement.rejected') FROM audit_events ORDER BY seq",
    )
    assert placed[0][0] == "no_compliant_device" and placed[1][1] == "cpu0"
    with Runtime(sealed.keyring, "hipaa", audit_db=tmp_path / "b.db", devices=sealed.devices) as rt:
        assert rt.load(sealed.hipaa, caller=SERVICE).device == "cpu0"
    explanation = rows(
        tmp_path / "b.db", "SELECT json_extract(body, '$.details.placement.chosen.device') FROM audit_events"
    )
    assert explanation == [("cpu0",)]


def test_runtime_publishes_prometheus_metrics(tmp_path: Path, sealed: Sealed):
    import urllib.request

    from sealinfer.runtime.telemetry.metrics import RuntimeMetrics, start_http_server

    metrics = RuntimeMetrics()
    with Runtime(
        sealed.keyring,
        "hipaa",
        audit_db=tmp_path / "a.db",
        telemetry_db=tmp_path / "t.db",
        devices=sealed.devices,
        metrics=metrics,
    ) as rt:
        session = rt.load(sealed.hipaa, caller=SERVICE)
        for _ in range(3):
            session.run({"input": X}, caller=CLINICIAN)
        with pytest.raises(AuthorizationError):
            session.run({"input": X}, caller=RESEARCHER)
        rt.telemetry.flush()
    server = start_http_server(metrics, port=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert 'outcome="ok"' in body and 'outcome="denied"' in body
    assert "sepsis-risk" in body and "patient" not in body


def test_submit_queues_by_priority_and_enforces_tenant_quotas(tmp_path: Path, sealed: Sealed):
    from sealinfer.runtime.errors import QuotaExceededError

    profile = hipaa_variant(tenants={"ward7": {"rate_per_s": 0.001, "burst": 3}})
    with Runtime(sealed.keyring, profile, audit_db=tmp_path / "a.db", devices=sealed.devices) as rt:
        session = rt.load(sealed.hipaa, caller=SERVICE)
        expected = session.run({"input": X}, caller=CLINICIAN)["probabilities"]
        futures = [session.submit({"input": X}, caller=CLINICIAN, priority=p) for p in ("batch", "stat", "routine")]
        for fut in futures:
            assert np.array_equal(fut.result(timeout=30)["probabilities"], expected)
        with pytest.raises(QuotaExceededError) as info:
            session.submit({"input": X}, caller=CLINICIAN, priority="stat")
        other = session.submit({"input": X}, caller=Caller("dr.b", "clinician", "treatment", tenant="icu"))
        assert other.result(timeout=30)["probabilities"].shape == (4, 64)
    seq = info.value.audit_seq
    assert rows(tmp_path / "a.db", f"SELECT decision, error_code FROM audit_events WHERE seq = {seq}") == [
        ("deny", "quota_exceeded")
    ]


def test_an_onnxruntime_failure_inside_the_graph_is_a_typed_error_and_audited(tmp_path: Path, sealed: Sealed):
    """Inputs that pass the signature but break a node (dims the signature leaves symbolic) fail closed."""
    from sealinfer.runtime.errors import ModelError
    from sealinfer.tests import models

    src = models.save(models.loose_matmul(), tmp_path / "m.onnx")
    artifact = seal_for(sealed.keyring, src, tmp_path / "m.sealed", "dev", mark=False)
    with Runtime(sealed.keyring, "dev", audit_db=tmp_path / "a.db", devices=sealed.devices) as rt:
        session = rt.load(artifact, caller=SERVICE)
        with pytest.raises(ModelError, match="onnxruntime failed") as info:
            session.run({"input": np.ones((1, 5), np.float32)}, caller=CLINICIAN)  # M=5 against W[3, 2]
        assert info.value.hint
        rt.audit_log.flush()
        assert rows(tmp_path / "a.db", f"SELECT outcome, error_code FROM audit_events WHERE seq = "
                    f"{info.value.audit_seq}") == [("error", "model_invalid")]
        assert session.run({"input": np.ones((2, 3), np.float32)}, caller=CLINICIAN)["output"].shape == (2, 2)


def test_a_closed_runtime_refuses_loads_and_its_sessions_refuse_requests(tmp_path: Path, sealed: Sealed):
    from sealinfer.runtime.errors import RuntimeClosedError

    rt = Runtime(sealed.keyring, "hipaa", audit_db=tmp_path / "audit.db", devices=sealed.devices)
    session = rt.load(sealed.hipaa, caller=SERVICE)
    assert session.run({"input": X}, caller=CLINICIAN)["probabilities"].shape == (4, 64)
    rt.close()
    with pytest.raises(RuntimeClosedError, match="closed") as info:
        session.run({"input": X}, caller=CLINICIAN)
    assert "new Runtime" in info.value.hint
    with pytest.raises(RuntimeClosedError):
        session.submit({"input": X}, caller=CLINICIAN)
    with pytest.raises(RuntimeClosedError):
        rt.load(sealed.hipaa, caller=SERVICE)
    assert verify_log(tmp_path / "audit.db").ok  # the log closed cleanly: load + one request, signed


def test_an_unknown_priority_class_or_a_missing_caller_is_refused(tmp_path: Path, rt: Runtime, sealed: Sealed):
    from sealinfer.runtime.errors import ConfigurationError

    session = rt.load(sealed.hipaa, caller=SERVICE)
    with pytest.raises(ConfigurationError, match="Unknown priority class 'vip'") as info:
        session.run({"input": X}, caller=CLINICIAN, priority="vip")  # it would label telemetry and reports
    assert "stat" in info.value.hint
    rt.audit_log.flush()
    assert rows(tmp_path / "audit.db", f"SELECT outcome, error_code FROM audit_events WHERE seq = "
                f"{info.value.audit_seq}") == [("error", "configuration")]
    with pytest.raises(ConfigurationError, match=r"Unknown priority class \['stat'\]") as info:
        session.run({"input": X}, caller=CLINICIAN, priority=["stat"])  # type: ignore[arg-type]  # unhashable
    assert info.value.audit_seq > 0
    with pytest.raises(UnknownPrincipalError):
        session.submit({"input": X}, caller=None)  # type: ignore[arg-type]
    assert session.run({"input": X}, caller=CLINICIAN, priority="stat")["probabilities"].shape == (4, 64)


@pytest.mark.parametrize(("fields", "problem"), [
    pytest.param((123, "clinician", "treatment"), "user id", id="user not a string"),
    pytest.param(("x" * 513, "clinician", "treatment"), "user id", id="user too long"),
    pytest.param(("dr.grey", ["clinician"], "treatment"), "Unknown role", id="role unhashable"),
    pytest.param(("dr.grey", "clinician", None), "Unknown purpose", id="purpose missing"),
    pytest.param(("dr.grey", "clinician", "treatment", 7), "tenant", id="tenant not a string"),
    pytest.param(("dr.grey", "clinician", "treatment", " "), "tenant", id="tenant blank"),
    pytest.param(("dr.grey", "clinician", "treatment", "w" * 513), "tenant", id="tenant too long"),
    pytest.param(("dr.grey", "clinician", "treatment", None, "yes"), "break_glass", id="break_glass not a bool"),
])
def test_a_caller_the_audit_log_could_not_record_is_refused_when_made(fields: tuple, problem: str):
    # made this way, it would pass authorization and then fail as an audit record nobody could write
    with pytest.raises(UnknownPrincipalError, match=problem):
        Caller(*fields)


def test_a_refused_request_records_the_batch_a_served_one_would(tmp_path: Path, sealed: Sealed):
    """Telemetry's batch is the first axis of the signature's first input, whatever order the caller's dict has."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["weights"], ["total"]), helper.make_node("Add", ["x", "total"], ["y"])],
        "two-inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    src = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    artifact = seal_for(sealed.keyring, src, tmp_path / "two.sealed", "dev", mark=False)
    x = np.ones((4, 3), np.float32)
    weights = np.ones(7, np.float32)
    with Runtime(sealed.keyring, "dev", audit_db=tmp_path / "a.db", telemetry_db=tmp_path / "t.db",
                 devices=sealed.devices) as rt:
        session = rt.load(artifact, caller=SERVICE)
        assert session.run({"weights": weights, "x": x}, caller=CLINICIAN)["y"].shape == (4, 3)
        with pytest.raises(InputValidationError, match="weights"):  # refused for its second input
            session.run({"weights": weights.astype(np.float64), "x": x}, caller=CLINICIAN)
        with pytest.raises(InputValidationError):  # its first input missing: the others still give a size
            session.run({"weights": weights}, caller=CLINICIAN)


        class NotAnArray:  # its shape is no array's: the caller still gets the validator's typed error
            shape = "four"

        with pytest.raises(InputValidationError, match="'x'"):
            session.run({"x": NotAnArray(), "weights": weights}, caller=CLINICIAN)
        assert rt.telemetry is not None
        rt.telemetry.flush()
        assert rows(rt.telemetry.path, "SELECT outcome, batch FROM requests ORDER BY rowid") == [
            ("ok", 4), ("error", 4), ("error", 7), ("error", 7)
        ]


@pytest.mark.parametrize("inputs", [
    pytest.param({1: X, "input": X}, id="a name that is no string"),
    pytest.param({"input": np.array(["2026-11-25"] * 30, dtype="datetime64[D]").reshape(1, 30)}, id="datetime64"),
    pytest.param({"input": np.zeros((1, 30), dtype="timedelta64[s]")}, id="timedelta64"),
])
def test_inputs_the_digester_once_tripped_on_are_refused_typed_and_audited(
    tmp_path: Path, rt: Runtime, sealed: Sealed, inputs: dict
):
    session = rt.load(sealed.hipaa, caller=SERVICE)
    with pytest.raises(InputValidationError) as info:
        session.run(inputs, caller=CLINICIAN)
    rt.audit_log.flush()
    [(outcome, digest)] = rows(tmp_path / "audit.db", "SELECT outcome, json_extract(body, '$.input_digest') "
                               f"FROM audit_events WHERE seq = {info.value.audit_seq}")
    assert outcome == "error" and len(digest) == 64
    assert session.run({"input": X}, caller=CLINICIAN)["probabilities"].shape == (4, 64)
