"""Output rounding and the NaN/Inf screen of float inputs, compiled into the model's graph at load.

Both run on every request. As numpy calls between onnxruntime runs they cost a few µs on warm
caches but tens of µs each right after a model has streamed its weights through the caches: every
call walks numpy's dispatch code again from memory. Compiled into the graph they are a few more
nodes of the run that is under way: ``Mul(10**d) -> Round -> Div(10**d)`` per float output and
``ReduceSumSquare`` per float input, fetched next to the model's own outputs.

The rounding is bit-identical to :class:`~sealinfer.runtime.policy.guards.OutputGuard`'s numpy
rounding (the same three IEEE operations in the output's dtype, round-half-to-even); a test holds the
two to that. The screen is the one the validator already uses for big tensors: a sum of squares is
non-finite whenever an element is, and the rare false alarm (finite values whose squares overflow)
is cleared by the exact test, so the refusal and its message are the validator's own. The model's
original outputs stay in the graph, unrounded, for runs outside the pipeline.

What is not compiled stays in Python: top-k (numpy and onnxruntime break ties differently), outputs
that are not float32/float64 tensors, opsets before 11 (no ``Round``) and other float input dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sealinfer.runtime.policy.profile import InputLimits, OutputGuards

PREFIX = "sealinfer::"  # names this module adds; never a model's own output

_ROUNDABLE = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
_SCREENABLE = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}
_FLOATS = frozenset(
    getattr(TensorProto, n)
    for n in ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ",
              "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
    if hasattr(TensorProto, n)
)


@dataclass(frozen=True, slots=True)
class GraphGuards:
    """What a compiled graph returns: ``fetches`` = the model's outputs (rounded or not), then screens."""

    outputs: tuple[str, ...]  # the model's output names, in fetch order
    fetches: tuple[str, ...]  # the names to ask onnxruntime for
    rounded: bool  # the fetched outputs are already rounded as the profile asks
    screened: tuple[str, ...]  # inputs whose sum of squares follows the outputs in ``fetches``

    @property
    def description(self) -> str:
        parts = ["rounding" if self.rounded else "", f"NaN/Inf screen of {len(self.screened)} input(s)"
                 if self.screened else ""]
        return "in-graph " + " and ".join(p for p in parts if p)


def compile_guards(
    model: onnx.ModelProto,
    output_names: Sequence[str],
    input_dtypes: Mapping[str, str],
    outputs_cfg: OutputGuards,
    limits: InputLimits,
) -> tuple[onnx.ModelProto, GraphGuards] | None:
    """``model`` extended with the guards the profile asks for and the graph allows; None if none apply.

    ``input_dtypes`` maps the inputs the validator checks to their numpy dtype names. ``model`` itself
    is not changed.
    """
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not opset:
        return None
    taken = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    taken.update(t.name for t in graph.initializer)
    taken.update(o for n in graph.node for o in n.output)
    if any(name.startswith(PREFIX) for name in taken):
        return None  # a model that already uses our names (e.g. sealed from a compiled graph): leave it
    declared = {o.name: o for o in graph.output}
    if len(declared) != len(graph.output) or set(output_names) != set(declared):
        return None

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outs: list[onnx.ValueInfoProto] = []
    fetches = list(output_names)
    rounded = _can_round(outputs_cfg, opset, [declared[n] for n in output_names])
    if rounded:
        decimals = outputs_cfg.round_decimals
        assert decimals is not None
        for i, name in enumerate(output_names):
            elem = declared[name].type.tensor_type.elem_type
            if elem not in _ROUNDABLE:
                continue  # integers, booleans, strings: the numpy guard passes them through too
            guarded = f"{PREFIX}rounded/{name}"
            if decimals == 0:  # numpy's round(0) is rint alone
                nodes.append(helper.make_node("Round", [name], [guarded], name=f"{PREFIX}round/{name}"))
            else:
                scale = f"{PREFIX}scale/{name}"
                with np.errstate(over="ignore"):  # numpy overflows 10**d to inf the same way
                    inits.append(numpy_helper.from_array(np.array(10.0**decimals, dtype=_ROUNDABLE[elem]), scale))
                nodes += [
                    helper.make_node("Mul", [name, scale], [f"{PREFIX}scaled/{name}"], name=f"{PREFIX}mul/{name}"),
                    helper.make_node("Round", [f"{PREFIX}scaled/{name}"], [f"{PREFIX}rint/{name}"],
                                     name=f"{PREFIX}round/{name}"),
                    helper.make_node("Div", [f"{PREFIX}rint/{name}", scale], [guarded], name=f"{PREFIX}div/{name}"),
                ]
            outs.append(helper.make_tensor_value_info(guarded, elem, None))
            fetches[i] = guarded

    screened: list[str] = []
    if not limits.allow_nonfinite:
        graph_inputs = {v.name for v in graph.input} - {t.name for t in graph.initializer}
        for name, dtype in input_dtypes.items():
            elem = _SCREENABLE.get(dtype)
            if elem is None or name not in graph_inputs:
                continue
            screen = f"{PREFIX}screen/{name}"
            nodes.append(helper.make_node("ReduceSumSquare", [name], [screen], keepdims=0,
                                          name=f"{PREFIX}screen/{name}"))
            outs.append(helper.make_tensor_value_info(screen, elem, []))
            screened.append(name)
            fetches.append(screen)

    if not rounded and not screened:
        return None
    compiled = onnx.ModelProto()
    compiled.CopyFrom(model)
    compiled.graph.node.extend(nodes)
    compiled.graph.initializer.extend(inits)
    compiled.graph.output.extend(outs)
    return compiled, GraphGuards(tuple(output_names), tuple(fetches), rounded, tuple(screened))


def _can_round(cfg: OutputGuards, opset: int, outputs: list[onnx.ValueInfoProto]) -> bool:
    """Rounding compiles only when it is the whole output transform and every output takes it or skips it."""
    if cfg.round_decimals is None or cfg.top_k is not None or opset < 11:
        return False
    for out in outputs:
        if not out.type.HasField("tensor_type"):
            return False  # a sequence or map (e.g. ZipMap): the numpy guard refuses it, loudly
        elem = out.type.tensor_type.elem_type
        if elem == TensorProto.UNDEFINED or (elem in _FLOATS and elem not in _ROUNDABLE):
            return False  # float16 and friends (or unknown): numpy's own arithmetic decides, so numpy rounds
    return True


__all__ = ["PREFIX", "GraphGuards", "compile_guards"]
