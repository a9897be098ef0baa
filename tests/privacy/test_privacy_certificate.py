"""Certificate parsing: round trips, model binding, and every malformed field refused with CertificateError."""

from __future__ import annotations

import json

import pytest

from sealinfer.privacy import Certificate, CertificateError, Segment, sha256_hex


def cert_dict(**overrides):
    base = {
        "accountant": "rdp",
        "delta": 1e-5,
        "dataset_size": 60000,
        "sampling": "poisson",
        "segments": [{"noise_multiplier": 1.3, "sample_rate": 0.004, "steps": 3750}],
        "max_grad_norm": 1.0,
        "secure_mode": False,
        "model_sha256": sha256_hex(b"model"),
    }
    base.update(overrides)
    return base


def test_round_trip_through_json_text_and_dict():
    cert = Certificate.from_json(cert_dict(epsilon=0.93, metadata={"producer": "test"}))
    again = Certificate.from_json(cert.to_json())
    assert again == cert
    assert Certificate.from_json(json.loads(cert.to_json(indent=2))) == cert
    assert cert.segments == (Segment(1.3, 0.004, 3750),)
    assert cert.to_dict()["segments"] == [{"noise_multiplier": 1.3, "sample_rate": 0.004, "steps": 3750}]


def test_canonical_json_is_sorted_and_compact():
    text = Certificate.from_json(cert_dict()).to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_total_steps_and_history_follow_segments():
    cert = Certificate.from_json(cert_dict(segments=[
        {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 400},
        {"noise_multiplier": 2.0, "sample_rate": 0.02, "steps": 600},
    ]))
    assert cert.total_steps == 1000
    assert cert.history() == [(1.0, 0.01, 400), (2.0, 0.02, 600)]


def test_model_binding():
    cert = Certificate.from_json(cert_dict())
    assert cert.matches_model(b"model")
    assert not cert.matches_model(b"model2")
    rebound = cert.bound_to(b"other")
    assert rebound.matches_model(b"other") and rebound.model_sha256 == sha256_hex(b"other")


def test_dataclass_construction_is_validated():
    with pytest.raises(CertificateError, match="delta"):
        Certificate("rdp", 2.0, 10, "poisson", (Segment(1.0, 0.1, 10),), 1.0, False, sha256_hex(b""))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"delta": 0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"delta": "1e-5"}, "delta"),
        ({"dataset_size": 0}, "dataset_size"),
        ({"dataset_size": True}, "dataset_size"),
        ({"dataset_size": 10.5}, "dataset_size"),
        ({"accountant": ""}, "accountant"),
        ({"sampling": 3}, "sampling"),
        ({"segments": []}, "segments"),
        ({"segments": [{"noise_multiplier": 1.0, "sample_rate": 0.1}]}, "segments"),
        ({"segments": [{"noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 1}]}, "noise_multiplier"),
        ({"segments": [{"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1}]}, "sample_rate"),
        ({"segments": [{"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}]}, "sample_rate"),
        ({"segments": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}]}, "steps"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"secure_mode": "no"}, "secure_mode"),
        ({"model_sha256": "ABC"}, "model_sha256"),
        ({"model_sha256": "A" * 64}, "model_sha256"),
        ({"epsilon": -1}, "epsilon"),
        ({"version": 2}, "version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_malformed_fields_are_refused(overrides, field):
    with pytest.raises(CertificateError, match=field) as err:
        Certificate.from_json(cert_dict(**overrides))
    assert err.value.hint  # says what to do


def test_missing_field_is_named():
    data = cert_dict()
    del data["max_grad_norm"]
    with pytest.raises(CertificateError, match="max_grad_norm"):
        Certificate.from_json(data)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"delta": NaN}', b"\xff\xfe", "1" * (2 << 20)])
def test_unparsable_documents_are_refused(text):
    with pytest.raises(CertificateError):
        Certificate.from_json(text)


def test_nan_constants_are_refused():
    text = json.dumps(cert_dict()).replace("1e-05", "NaN")
    with pytest.raises(CertificateError, match="JSON"):
        Certificate.from_json(text)


def test_wrong_type_is_refused():
    with pytest.raises(CertificateError, match="JSON text"):
        Certificate.from_json(42)  # type: ignore[arg-type]
