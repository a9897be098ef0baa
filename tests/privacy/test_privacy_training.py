"""train_dp: the certificate passes, the ONNX is the unwrapped model and matches torch, bad inputs are refused."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sealinfer.privacy import PrivacyParameterError, check_certificate, sha256_hex, train_dp
from sealinfer.tests.privacy.conftest import DP_DELTA, DP_TARGET_EPSILON, small_mlp


def test_certificate_passes_at_the_target(dp_model, cancer):
    cert = dp_model.certificate
    verdict = check_certificate(cert, DP_TARGET_EPSILON, model_bytes=dp_model.onnx_bytes)
    assert verdict.passed, verdict.reasons
    assert verdict.epsilon == pytest.approx(dp_model.epsilon)
    assert 0.9 * DP_TARGET_EPSILON < dp_model.epsilon <= DP_TARGET_EPSILON
    assert cert.accountant == "rdp" and cert.sampling == "poisson" and cert.delta == DP_DELTA
    assert cert.dataset_size == len(cancer.X_train)
    assert cert.model_sha256 == sha256_hex(dp_model.onnx_bytes)
    seg = cert.segments[0]
    batches = math.ceil(len(cancer.X_train) / 64)
    assert seg.sample_rate == pytest.approx(1 / batches)  # Opacus's Poisson rate
    assert seg.noise_multiplier == pytest.approx(dp_model.noise_multiplier)
    assert cert.total_steps == 15 * batches


def test_certificate_fails_a_stricter_policy(dp_model):
    assert not check_certificate(dp_model.certificate, DP_TARGET_EPSILON / 2).passed


def test_onnx_matches_torch_on_held_out_data(dp_model, cancer):
    sess = ort.InferenceSession(dp_model.onnx_bytes, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: cancer.X_test})[0]
    with torch.no_grad():
        expected = dp_model.torch_model(torch.from_numpy(cancer.X_test)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # and batch size is dynamic
    assert sess.run(None, {name: cancer.X_test[:1]})[0].shape == (1, 2)


def test_onnx_is_the_unwrapped_module(dp_model):
    model = onnx.load_from_string(dp_model.onnx_bytes)
    onnx.checker.check_model(model)
    names = [i.name for i in model.graph.initializer] + [n.name for n in model.graph.node]
    assert names and not any("_module" in n for n in names)
    assert b"_module." not in dp_model.onnx_bytes
    assert not hasattr(dp_model.torch_model, "_module")
    assert all(not hasattr(p, "grad_sample") for p in dp_model.torch_model.parameters())


def test_model_learns_something(dp_model, cancer):
    with torch.no_grad():
        pred = dp_model.torch_model(torch.from_numpy(cancer.X_test)).argmax(1).numpy()
    majority = max(np.mean(cancer.y_test), 1 - np.mean(cancer.y_test))
    assert np.mean(pred == cancer.y_test) > majority + 0.1


def test_callers_model_is_untouched(cancer):
    model = small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_dp(model, cancer.X_train[:100], cancer.y_train[:100], target_epsilon=5.0, delta=1e-3, epochs=1,
             batch_size=20, torch_threads=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )


def test_batchnorm_is_rejected_when_fixing_is_off(cancer):
    with pytest.raises(PrivacyParameterError, match="BatchNorm"):
        train_dp(_bn_model(), cancer.X_train, cancer.y_train, target_epsilon=5.0, delta=1e-4, epochs=1,
                 batch_size=64, fix_modules=False)


def test_batchnorm_is_replaced_by_default(cancer):
    result = train_dp(_bn_model(), cancer.X_train[:200], cancer.y_train[:200], target_epsilon=5.0, delta=1e-3,
                      epochs=1, batch_size=50, torch_threads=1)
    assert result.replaced_modules and any("BatchNorm" in m for m in result.replaced_modules)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in result.torch_model.modules())
    assert check_certificate(result.certificate, 5.0, model_bytes=result.onnx_bytes).passed


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"delta": 0.1}, "delta"),
        ({"target_epsilon": 0}, "target_epsilon"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"accountant": "gdp"}, "accountant"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_parameters_are_refused(cancer, kwargs, fragment):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "epochs": 1, "batch_size": 64} | kwargs
    with pytest.raises(PrivacyParameterError, match=fragment):
        train_dp(small_mlp(), cancer.X_train, cancer.y_train, **args)


def test_bad_data_is_refused(cancer):
    X = cancer.X_train.copy()
    X[0, 0] = np.nan
    with pytest.raises(PrivacyParameterError, match="finite"):
        train_dp(small_mlp(), X, cancer.y_train, target_epsilon=1.0, delta=1e-5, epochs=1, batch_size=64)
    with pytest.raises(PrivacyParameterError, match="labels"):
        train_dp(small_mlp(), cancer.X_train, cancer.y_train[:-1], target_epsilon=1.0, delta=1e-5, epochs=1,
                 batch_size=64)


def test_a_model_that_does_not_fit_the_data_is_refused_before_training(cancer):
    """Without the check these were torch's RuntimeError, an IndexError from the loss, an AttributeError."""
    from sealinfer.privacy import train_baseline

    args = {"target_epsilon": 1.0, "delta": 1e-5, "epochs": 1, "batch_size": 64}
    with pytest.raises(PrivacyParameterError, match="does not accept X_train's rows") as info:
        train_dp(small_mlp(), cancer.X_train[:, :7], cancer.y_train, **args)  # the model takes 30 features
    assert info.value.hint
    with pytest.raises(PrivacyParameterError, match="labels up to 6, but the model outputs 2"):
        train_dp(small_mlp(), cancer.X_train, cancer.y_train + 5, **args)
    with pytest.raises(PrivacyParameterError, match="torch.nn.Module"):
        train_dp("not a model", cancer.X_train, cancer.y_train, **args)
    with pytest.raises(PrivacyParameterError, match="does not accept X_train's rows"):
        train_baseline(small_mlp(), cancer.X_train[:, :7], cancer.y_train, epochs=1, batch_size=64)
