"""Check an inference request against the model's signature and the profile's input limits.

This runs on every call, so it is written for speed: the signature is compiled once into plain
tuples (cached per signature), checks are ordered cheapest-first (type, dtype, size, rank, dims),
and the NaN/Inf scan only touches float tensors, screening float32/float64 with one BLAS dot
product (non-finite whenever an element is) before falling back to the exact element test.
Messages say what is wrong and how to fix it, in terms a clinician's engineer can act on.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any

import numpy as np

from sealinfer.runtime.errors import InputValidationError
from sealinfer.runtime.policy.profile import InputLimits
from sealinfer.runtime.tensorspec import Dim, TensorSpec

# Below this many elements isfinite().all() is as fast as the dot-product screen.
_BLAS_SCREEN_MIN = 16384


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[Dim, ...]
    # (axis, size) for fixed dims, (axis, symbol) for named dims; None dims are unchecked.
    fixed: tuple[tuple[int, int], ...]
    symbolic: tuple[tuple[int, str], ...]
    batch_axis_dynamic: bool  # the first axis is dynamic: treat it as the batch
    check_finite: bool  # float or complex dtype
    blas_finite: bool  # float32/float64: the fast dot-product screen applies


class InputValidator:
    """A model signature compiled for repeated validation; build once per session."""

    __slots__ = ("_limits", "_names", "_specs", "_spec_list", "check")

    def __init__(
        self,
        specs: list[TensorSpec] | tuple[TensorSpec, ...],
        limits: InputLimits,
        *,
        screened: frozenset[str] = frozenset(),
    ) -> None:
        """``screened``: inputs whose NaN/Inf scan the caller runs itself (a compiled graph guard's screen);
        it then calls :meth:`require_finite` for each whose screen raised the alarm."""
        self._spec_list = tuple(specs)
        self._specs = tuple(replace(c, check_finite=False) if c.name in screened else c
                            for c in _compile(self._spec_list))
        self._names = frozenset(s.name for s in self._specs)
        self._limits = limits
        # ``self(inputs)``, one Python call shorter (the request path counts them: see pipeline.py); bound
        # by position, since a partial with keywords copies them into a new dict on every call
        self.check: Callable[[Mapping[str, Any]], None] = partial(
            _validate, self._specs, self._names, self._spec_list, limits)

    def __call__(self, inputs: Mapping[str, Any]) -> None:
        self.check(inputs)

    def require_finite(self, name: str, x: np.ndarray) -> None:
        """The exact NaN/Inf test of input ``name`` (already validated otherwise), as the validator words it."""
        if not self._limits.allow_nonfinite and x.size and not np.isfinite(x).all():
            raise _nonfinite_error(name, x)


def validate_inputs(inputs: Mapping[str, Any], specs: list[TensorSpec], limits: InputLimits) -> None:
    """Raise ``InputValidationError`` unless ``inputs`` match ``specs`` within ``limits``.

    Checked: exact input names; numpy ndarrays only; dtype; size in bytes (``max_tensor_bytes``);
    rank; fixed dims; symbolic dims agree across all inputs; the first axis, when dynamic, is the
    batch and must not exceed ``max_batch``; no NaN/Inf in float inputs unless ``allow_nonfinite``.
    """
    key = tuple(specs)
    compiled, names = _compile_cached(key)
    _validate(compiled, names, key, limits, inputs)


@lru_cache(maxsize=256)
def _compile_cached(specs: tuple[TensorSpec, ...]) -> tuple[tuple[_Compiled, ...], frozenset[str]]:
    compiled = _compile(specs)
    return compiled, frozenset(s.name for s in compiled)


def _compile(specs: tuple[TensorSpec, ...]) -> tuple[_Compiled, ...]:
    out = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        fixed = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, int) and d >= 0)
        symbolic = tuple((i, d) for i, d in enumerate(spec.shape) if isinstance(d, str))
        batch_dynamic = bool(spec.shape) and not (isinstance(spec.shape[0], int) and spec.shape[0] >= 0)
        out.append(
            _Compiled(
                spec.name,
                dtype,
                tuple(spec.shape),
                fixed,
                symbolic,
                batch_dynamic,
                dtype.kind in "fc",
                dtype in (np.float32, np.float64),
            )
        )
    return tuple(out)


def _validate(
    specs: tuple[_Compiled, ...],
    names: frozenset[str],
    spec_list: tuple[TensorSpec, ...],
    limits: InputLimits,
    inputs: Mapping[str, Any],
) -> None:
    if type(inputs) is not dict and not isinstance(inputs, Mapping):  # the ABC check only for others
        raise InputValidationError(
            f"Inputs must be a dict of name -> numpy array, got {type(inputs).__name__}.",
            hint=f"Pass {{{', '.join(repr(s.name) + ': array' for s in spec_list)}}}.",
        )
    if len(inputs) != len(specs):
        raise _names_error(inputs, names, spec_list)
    symbols: dict[str, tuple[int, str]] | None = None
    max_bytes = limits.max_tensor_bytes
    for spec in specs:
        x = inputs.get(spec.name)
        if x is None:
            raise _names_error(inputs, names, spec_list)
        if type(x) is not np.ndarray and not isinstance(x, np.ndarray):
            raise _type_error(spec, x)
        if x.dtype is not spec.dtype and x.dtype != spec.dtype:  # numpy shares builtin dtypes: mostly identical
            raise _dtype_error(spec, x)
        if x.nbytes > max_bytes:
            raise InputValidationError(
                f"Input {spec.name!r} is {x.nbytes:,} bytes, over the policy limit of {max_bytes:,} bytes.",
                hint="Split the request into smaller batches.",
            )
        shape = x.shape
        if len(shape) != len(spec.shape):
            raise _rank_error(spec, x)
        for axis, size in spec.fixed:
            if shape[axis] != size:
                raise InputValidationError(
                    f"Input {spec.name!r} has size {shape[axis]} in dimension {axis} but the model expects "
                    f"{size} (expected shape {_fmt_shape(spec.shape)}, got {tuple(shape)}).",
                    hint=f"Pass an array of shape {_fmt_shape(spec.shape)}.",
                )
        if spec.symbolic:
            if symbols is None:
                symbols = {}
            for axis, sym in spec.symbolic:
                seen = symbols.get(sym)
                if seen is None:
                    symbols[sym] = (shape[axis], spec.name)
                elif seen[0] != shape[axis]:
                    raise InputValidationError(
                        f"Dimension {sym!r} is {seen[0]} in input {seen[1]!r} but {shape[axis]} in input "
                        f"{spec.name!r} (axis {axis}).",
                        hint=f"All inputs must agree on the size of {sym!r}, e.g. the same number of rows.",
                    )
        if spec.batch_axis_dynamic and shape[0] > limits.max_batch:
            raise InputValidationError(
                f"Input {spec.name!r} has a batch of {shape[0]:,} rows, over the policy limit of "
                f"{limits.max_batch:,}.",
                hint=f"Split the request into batches of at most {limits.max_batch:,} rows.",
            )
        if spec.check_finite and not limits.allow_nonfinite and x.size:
            if spec.blas_finite and x.size >= _BLAS_SCREEN_MIN:
                # BLAS screen for big tensors: x.x is non-finite whenever any element is NaN/Inf and
                # needs no temporary array. Overflow of finite values gives a false alarm, which the
                # exact test clears; errstate keeps that case from warning. (Small tensors take the
                # exact test at once: entering errstate costs more than isfinite on a few values.)
                flat = x.reshape(-1)
                with np.errstate(over="ignore", invalid="ignore"):
                    screen = math.isfinite(float(np.dot(flat, flat)))
                finite = screen or bool(np.isfinite(x).all())
            else:
                finite = bool(np.isfinite(x).all())
            if not finite:
                raise _nonfinite_error(spec.name, x)


def _nonfinite_error(name: str, x: np.ndarray) -> InputValidationError:
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    return InputValidationError(
        f"Input {name!r} contains {bad:,} NaN or infinite value(s) out of {x.size:,}; the "
        "policy profile forbids non-finite inputs.",
        hint="Impute or drop missing values (e.g. np.nan_to_num or your pipeline's imputer) before inference.",
    )


def _fmt_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _describe(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{s.name!r} ({s.dtype} {_fmt_shape(tuple(s.shape))})" for s in specs)


def _names_error(inputs: Mapping[str, Any], names: frozenset[str], specs: tuple[TensorSpec, ...]) -> Exception:
    given = [str(k) for k in inputs]
    missing = sorted(n for n in names if n not in inputs or inputs[n] is None)
    unexpected = sorted(n for n in given if n not in names)
    parts = []
    if missing:
        parts.append("missing " + ", ".join(repr(n) for n in missing))
    if unexpected:
        hints = []
        for n in unexpected:
            close = difflib.get_close_matches(n, list(names), n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        parts.append("unexpected " + ", ".join(hints))
    return InputValidationError(
        f"The request's inputs do not match the model: {'; '.join(parts) or 'wrong names'}.",
        hint=f"The model expects exactly: {_describe(specs)}.",
    )


def _type_error(spec: _Compiled, x: object) -> Exception:
    return InputValidationError(
        f"Input {spec.name!r} is a {type(x).__name__}, not a numpy array.",
        hint=f"Wrap it: np.asarray(value, dtype=np.{spec.dtype.name}).",
    )


def _dtype_error(spec: _Compiled, x: np.ndarray) -> Exception:
    return InputValidationError(
        f"Input {spec.name!r} has dtype {x.dtype.name} but the model expects {spec.dtype.name}.",
        hint=f"Convert it: {spec.name}.astype(np.{spec.dtype.name}).",
    )


def _rank_error(spec: _Compiled, x: np.ndarray) -> Exception:
    want = len(spec.shape)
    hint = f"Pass an array of shape {_fmt_shape(spec.shape)}."
    if x.ndim == want - 1:
        hint += " For a single example add the batch axis: x[np.newaxis, ...] (or x.reshape(1, -1))."
    return InputValidationError(
        f"Input {spec.name!r} has {x.ndim} dimension(s) (shape {tuple(x.shape)}) but the model expects "
        f"{want}: {_fmt_shape(spec.shape)}.",
        hint=hint,
    )


__all__ = ["InputLimits", "InputValidator", "validate_inputs"]
