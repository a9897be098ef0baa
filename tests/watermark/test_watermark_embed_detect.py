"""Round trip, receipts, commitments and fidelity on the three trained models."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest

from sealinfer import watermark as wm
from sealinfer.runtime.errors import WatermarkError
from sealinfer.tests.watermark.conftest import KEY, PAYLOAD
from sealinfer.watermark.errors import PayloadMismatchError, WatermarkNotFoundError

MODELS = ["mlp", "cnn", "transformer"]


@pytest.mark.parametrize("name", MODELS)
def test_watermark_payload_round_trip(marked, name):
    model, receipt = marked[name]
    det = wm.detect(model, KEY)
    assert det.detected and det.payload == PAYLOAD
    assert det.bit_error_rate < 0.05  # lattice pilots: only protected / rounding-nudged weights misread
    assert det.p_value <= 1e-9 and det.threshold_p == 1e-9
    assert receipt.payload_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert receipt.payload_length == len(PAYLOAD) and receipt.n_bits == 256
    assert set(receipt.survives_simulated) == {"fp16", "int8"}
    assert receipt.hidden_layers >= 2


@pytest.mark.parametrize("name", MODELS)
def test_watermark_fidelity_on_held_out_data(built, marked, name):
    b = built[name]
    report = wm.fidelity(b.model, marked[name][0], probe_inputs={"x": b.x_test})
    print(f"{name}: held-out max relative logit change {report.max_relative_change:.2e}, "
          f"top-1 agreement {report.top1_agreement:.4f} over {report.n_probes}")
    assert report.top1_agreement >= 0.999
    assert report.max_relative_change <= 1e-3


def test_watermark_embed_does_not_mutate_input(built):
    b = built["mlp"]
    before = b.model.SerializeToString()
    wm.embed(b.model, KEY, b"x")
    assert b.model.SerializeToString() == before


def test_watermark_marked_model_is_valid_onnx(marked):
    onnx.checker.check_model(marked["cnn"][0])


def test_watermark_generated_probes_meet_bound(built):
    b = built["mlp"]
    marked_model, receipt = wm.embed(b.model, KEY, PAYLOAD)  # probes from the input signature
    assert receipt.fidelity.probes == "generated"
    assert receipt.fidelity.max_relative_change <= 1e-3
    assert wm.fidelity(b.model, marked_model, probe_inputs={"x": b.x_test}).top1_agreement >= 0.999


def test_watermark_commitment_is_json_and_verifies(marked):
    model, receipt = marked["mlp"]
    commitment = json.loads(json.dumps(receipt.commitment()))
    assert set(commitment) == {"scheme", "payload_sha256", "threshold_p", "n_bits"}
    det = wm.verify_commitment(model, KEY, commitment)
    assert det.payload == PAYLOAD
    json.dumps(receipt.to_dict())  # whole receipt is JSON-safe too


def test_watermark_commitment_payload_mismatch(marked):
    model, receipt = marked["mlp"]
    forged = dict(receipt.commitment(), payload_sha256=hashlib.sha256(b"another site").hexdigest())
    with pytest.raises(PayloadMismatchError):
        wm.verify_commitment(model, KEY, forged)


def test_watermark_commitment_unmarked_model(built, marked):
    commitment = marked["mlp"][1].commitment()
    with pytest.raises(WatermarkNotFoundError) as err:
        wm.verify_commitment(built["mlp"].model, KEY, commitment)
    assert "p =" in str(err.value)


def test_watermark_commitment_wrong_scheme(marked):
    model, receipt = marked["mlp"]
    with pytest.raises(WatermarkError):
        wm.verify_commitment(model, KEY, dict(receipt.commitment(), scheme="other-v9"))


def test_watermark_short_payload_is_padded_and_recovered(built):
    b = built["cnn"]
    model, receipt = wm.embed(b.model, KEY, b"A", probe_inputs={"x": b.calibration})
    assert receipt.payload_length == 1
    assert wm.detect(model, KEY).payload == b"A"


def test_watermark_two_sites_get_distinguishable_copies(built):
    b = built["mlp"]
    site_a, _ = wm.embed(b.model, KEY, b"owner|site-A")
    site_b, _ = wm.embed(b.model, KEY, b"owner|site-B")
    assert wm.detect(site_a, KEY).payload == b"owner|site-A"
    assert wm.detect(site_b, KEY).payload == b"owner|site-B"
