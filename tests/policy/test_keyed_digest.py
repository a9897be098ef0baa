"""Keyed digests of request tensors: what the audit record holds instead of the data."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from sealinfer.runtime.pipeline import TensorDigester, keyed_digest

KEY = bytes(range(32))


def reference(key: bytes, tensors: dict[str, np.ndarray]) -> str:
    """The documented layout, spelled out: for each name in order, 'name|dtype|shape|' then the bytes."""
    message = b"".join(
        f"{n}|{tensors[n].dtype.str}|{tensors[n].shape}|".encode() + np.ascontiguousarray(tensors[n]).tobytes()
        for n in sorted(tensors)
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def test_small_and_large_requests_digest_the_same_documented_bytes() -> None:
    small = {"x": np.arange(30, dtype=np.float32).reshape(1, 30), "a": np.array([1, 2], np.int64)}
    large = {"x": np.arange(48 * 1024, dtype=np.float32).reshape(48, 1024)[:, ::2]}  # non-contiguous, > 64 KiB
    for tensors in (small, large):
        assert keyed_digest(KEY, tensors) == reference(KEY, tensors)


def test_digest_changes_with_key_data_shape_and_dtype() -> None:
    x = np.zeros((2, 3), np.float32)
    base = keyed_digest(KEY, {"x": x})
    assert keyed_digest(bytes(32), {"x": x}) != base
    assert keyed_digest(KEY, {"x": x + 1}) != base
    assert keyed_digest(KEY, {"x": x.reshape(3, 2)}) != base
    assert keyed_digest(KEY, {"x": x.astype(np.int32)}) != base
    assert keyed_digest(KEY, {"y": x}) != base


def test_empty_and_object_tensors_digest_their_content_not_their_memory() -> None:
    empty = {"x": np.zeros((0, 3), np.float32)}
    assert keyed_digest(KEY, empty) == reference(KEY, empty)
    # string labels (e.g. a scikit-learn classifier's output): the same labels in other objects, the same digest
    labels = np.array(["benign", "malignant"], dtype=object)
    copy = np.array(["".join(["beni", "gn"]), "".join(["malig", "nant"])], dtype=object)
    assert labels[0] is not copy[0]
    assert keyed_digest(KEY, {"label": labels}) == keyed_digest(KEY, {"label": copy})
    assert keyed_digest(KEY, {"label": labels}) != keyed_digest(KEY, {"label": labels[::-1].copy()})


def test_one_digester_reused_across_dtypes_shapes_and_layouts_matches_the_documented_bytes() -> None:
    # The runtime keeps one digester per runtime and remembers headers per (name, shape): a request with
    # the same name and shape but another dtype (or byte order, or memory layout) must not reuse them.
    digester = TensorDigester(KEY)
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    requests = [
        {"x": base},
        {"x": base.astype(">f4")},  # same name, shape and kind, other byte order
        {"x": base.astype(np.int32)},
        {"x": base},
        {"x": np.asfortranarray(base)},  # the same values in column-major memory
        {"x": base.T.copy().T},
        {"x": base.astype(object)},
        {"x": np.zeros((3, 4), np.float64), "a": np.zeros(0, np.int8)},
        {"x": base},
    ]
    for tensors in requests:
        got = digester.digest(tensors)
        assert got == keyed_digest(KEY, tensors)  # a fresh digester: nothing remembered
        if not any(t.dtype.hasobject for t in tensors.values()):
            assert got == reference(KEY, tensors)


def test_tensors_numpy_exports_no_buffer_for_digest_their_bytes() -> None:
    # datetime64/timedelta64 have no buffer export: a request carrying one is refused, and its record
    # still needs the input's digest
    stamps = {"t": np.array(["2026-11-25", "2026-11-26"], dtype="datetime64[D]"),
              "d": np.array([[1, 2], [3, 4]], dtype="timedelta64[s]")[:, ::-1]}
    assert keyed_digest(KEY, stamps) == reference(KEY, stamps)


def test_names_of_mixed_types_are_ordered_as_text() -> None:
    x = np.zeros(2, np.float32)
    assert keyed_digest(KEY, {1: x, "input": x}) == keyed_digest(KEY, {"input": x, 1: x})  # type: ignore[dict-item]
