"""Input validation: every bad request kind is refused with a message that says how to fix it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sealinfer.runtime.errors import InputValidationError
from sealinfer.runtime.policy.profile import InputLimits, load_profile
from sealinfer.runtime.policy.validation import InputValidator, validate_inputs
from sealinfer.runtime.tensorspec import TensorSpec

SPECS = [
    TensorSpec("vitals", "float32", ("batch", 8)),
    TensorSpec("labs", "float32", ("batch", None, 3)),
    TensorSpec("site", "int64", ("batch",)),
]
LIMITS = InputLimits(max_tensor_bytes=1 << 20, max_batch=64, allow_nonfinite=False)


def good(batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "vitals": rng.standard_normal((batch, 8)).astype(np.float32),
        "labs": rng.standard_normal((batch, 5, 3)).astype(np.float32),
        "site": rng.integers(0, 9, size=batch).astype(np.int64),
    }


def reject(inputs, specs=SPECS, limits=LIMITS) -> str:
    with pytest.raises(InputValidationError) as info:
        validate_inputs(inputs, specs, limits)
    # the compiled validator must agree with the function
    with pytest.raises(InputValidationError) as again:
        InputValidator(specs, limits)(inputs)
    assert str(info.value) == str(again.value)
    return str(info.value)


def test_valid_request_passes_both_forms():
    validate_inputs(good(), SPECS, LIMITS)
    InputValidator(SPECS, LIMITS)(good(batch=1))
    validate_inputs(good(batch=0), SPECS, LIMITS)  # empty batch is well-formed


def test_shipped_profile_limits_are_usable():
    validate_inputs(good(), SPECS, load_profile("hipaa").inputs)


def test_missing_input_lists_what_is_expected():
    inputs = good()
    del inputs["labs"]
    msg = reject(inputs)
    assert "missing 'labs'" in msg
    assert "'vitals' (float32 [batch, 8])" in msg and "'labs' (float32 [batch, ?, 3])" in msg


def test_unexpected_input_suggests_the_close_name():
    inputs = good()
    inputs["vital"] = inputs.pop("vitals")
    msg = reject(inputs)
    assert "missing 'vitals'" in msg and "unexpected 'vital' (did you mean 'vitals'?)" in msg
    extra = good()
    extra["notes"] = np.zeros(1, np.float32)
    assert "unexpected 'notes'" in reject(extra)


def test_wrong_dtype_says_how_to_convert():
    inputs = good()
    inputs["vitals"] = inputs["vitals"].astype(np.float64)
    msg = reject(inputs)
    assert "dtype float64 but the model expects float32" in msg
    assert "vitals.astype(np.float32)" in msg


def test_non_ndarray_values_are_refused():
    inputs = good()
    inputs["vitals"] = inputs["vitals"].tolist()
    msg = reject(inputs)
    assert "is a list, not a numpy array" in msg and "np.asarray" in msg
    assert "dict of name" in reject([("vitals", 1)])  # type: ignore[arg-type]


def test_wrong_rank_suggests_adding_the_batch_axis():
    inputs = good()
    inputs["vitals"] = inputs["vitals"][0]
    msg = reject(inputs)
    assert "has 1 dimension(s)" in msg and "expects 2" in msg and "np.newaxis" in msg


def test_fixed_dimension_mismatch():
    inputs = good()
    inputs["vitals"] = np.zeros((4, 7), np.float32)
    msg = reject(inputs)
    assert "size 7 in dimension 1 but the model expects 8" in msg


def test_inconsistent_symbolic_dimension_across_inputs():
    inputs = good(batch=4)
    inputs["site"] = np.zeros(5, np.int64)
    msg = reject(inputs)
    assert "Dimension 'batch' is 4 in input 'vitals' but 5 in input 'site'" in msg


def test_unnamed_dynamic_dimension_is_free():
    inputs = good()
    inputs["labs"] = np.zeros((4, 11, 3), np.float32)
    validate_inputs(inputs, SPECS, LIMITS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_when_the_profile_forbids_them(bad):
    inputs = good()
    inputs["labs"][2, 1, 0] = bad
    msg = reject(inputs)
    assert "1 NaN or infinite value(s)" in msg and "'labs'" in msg
    validate_inputs(inputs, SPECS, InputLimits(LIMITS.max_tensor_bytes, LIMITS.max_batch, True))


@pytest.mark.parametrize("n", [30, 4096 * 64])  # the exact test for small tensors, the x.x screen for big ones
def test_non_finite_screen_is_exact(n: int):
    specs = [TensorSpec("x", "float32", ("n", 1))]
    limits = InputLimits(1 << 24, 1 << 20, False)
    x = np.full((n, 1), 3e38, np.float32)  # finite, but the screen overflows: the exact test must clear it
    with np.errstate(all="raise"):
        validate_inputs({"x": x}, specs, limits)
    for poison in ([np.nan], [np.inf], [-np.inf], [np.inf, -np.inf]):
        y = np.ones((n, 1), np.float32)
        y[: len(poison), 0] = poison
        with pytest.raises(InputValidationError, match="NaN or infinite"):
            validate_inputs({"x": y}, specs, limits)


def test_non_finite_screen_on_large_tensors_is_exact():
    specs = [TensorSpec("x", "float32", ("n", 64))]
    limits = InputLimits(1 << 24, 1 << 20, False)
    big = np.full((4096, 64), 3e30, np.float32)  # finite, but x.x overflows: must still pass
    with np.errstate(all="raise"):
        validate_inputs({"x": big}, specs, limits)
    big[4000, 63] = np.nan
    with pytest.raises(InputValidationError, match="1 NaN"):
        validate_inputs({"x": big}, specs, limits)
    f16 = [TensorSpec("h", "float16", ("n",))]
    with pytest.raises(InputValidationError, match="NaN"):
        validate_inputs({"h": np.array([1, np.inf], np.float16)}, f16, limits)
    validate_inputs({"h": np.array([60000, 60000], np.float16)}, f16, limits)  # sum would overflow


def test_tensor_over_the_byte_limit():
    limits = InputLimits(max_tensor_bytes=2000, max_batch=1 << 20, allow_nonfinite=False)
    msg = reject(good(batch=40), limits=limits)  # vitals 1,280 bytes fit; labs 40*5*3*4 = 2,400 do not
    assert "Input 'labs' is 2,400 bytes, over the policy limit of 2,000 bytes" in msg


def test_batch_over_the_limit():
    msg = reject(good(batch=65))
    assert "batch of 65 rows, over the policy limit of 64" in msg
    validate_inputs(good(batch=64), SPECS, LIMITS)


def test_fixed_first_dimension_is_not_a_batch():
    specs = [TensorSpec("image", "float32", (3, 8, 8))]
    validate_inputs({"image": np.zeros((3, 8, 8), np.float32)}, specs, InputLimits(1 << 20, 1, False))


def test_validator_is_thread_safe():
    validator = InputValidator(SPECS, LIMITS)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(300):
                inputs = good(batch=1 + (seed + i) % 8, seed=seed)
                if i % 3 == 0:
                    inputs["vitals"][0, 0] = np.nan
                    try:
                        validator(inputs)
                    except InputValidationError:
                        continue
                    raise AssertionError("NaN accepted")
                validator(inputs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
