"""A key-independent canonical form of the weights that function-preserving edits cannot change.

For every hidden layer — a weight op A whose output reaches, through a ReLU-type activation (Relu,
LeakyRelu) and channel-wise ops (bias Add, Cast, MaxPool, Flatten, (De)QuantizeLinear), the data
input of exactly one weight op B — the hidden units can be permuted, and each unit's incoming weights
scaled by c > 0 with its outgoing weights scaled by 1/c, without changing the function. The canonical
form undoes both:

* scale: each unit's incoming row of A is divided by its max-abs value (and B's matching column
  multiplied by it). Max-abs, not the L2 norm, because magnitude pruning never removes a row's
  largest weight, so the canonical form of a pruned model is the pruned canonical form;
* order: units are sorted by the ratio of the second-largest to the largest magnitude among their
  incoming weights. It is invariant to both edits, depends on this layer only (so rescaling the *next*
  layer's units cannot move it — an outgoing-weight statistic would be), and pruning keeps it because
  it is made of each row's two largest weights.

Layers are processed in graph order, so a tensor that is B of one layer and A of the next gets both.
``to_canonical`` / ``from_canonical`` are exact inverses up to float rounding (a few ulps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from sealinfer.watermark.graph import FLOAT_OPS, INT_OPS, WeightRef, _Graph, pairing_graph

ACTIVATIONS = {"Relu", "LeakyRelu"}
CHANNELWISE = {"Cast", "Identity", "Dropout", "MaxPool", "DynamicQuantizeLinear", "QuantizeLinear",
               "DequantizeLinear", "Add", "Mul", "Flatten"}


@dataclass
class Pair:
    a: int  # weight index of the producing layer
    b: int  # weight index of the consuming layer
    block: int  # B input columns per hidden unit (>1 after Flatten of a conv feature map)


@dataclass
class Transform:
    pairs: list[Pair]
    row: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # t -> (order, scale)
    col: dict[int, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)  # t -> (order, scale, block)


def find_pairs(model: onnx.ModelProto, refs: list[WeightRef]) -> list[Pair]:
    gr = pairing_graph(model)
    by_node = {r.node: r for r in refs}
    pairs: list[Pair] = []
    used_b: set[int] = set()
    for ref in refs:
        node = model.graph.node[ref.node]
        name = node.output[0]
        seen_act = False
        flatten = False
        target = None
        for _ in range(16):  # bounded walk along a single-consumer chain
            cons = gr.consumers.get(name, [])
            if name in gr.graph_outputs or len(cons) != 1:
                break
            idx, nxt = cons[0]
            if nxt.op_type in FLOAT_OPS or nxt.op_type in INT_OPS:
                if nxt.input[0] == name and seen_act and idx in by_node:
                    target = by_node[idx]
                break
            if nxt.op_type in ACTIVATIONS:
                seen_act = True
            elif nxt.op_type not in CHANNELWISE:
                break
            if nxt.op_type in ("Add", "Mul") and not _other_is_constantish(gr, nxt, name):
                break
            flatten = flatten or nxt.op_type == "Flatten"
            name = nxt.output[0]
        if target is None or target.index in used_b or target.index <= ref.index:
            continue
        h = ref.shape[0]
        cols = target.shape[1]
        if len(target.shape) > 2 and cols == h:
            block = 1
        elif len(target.shape) == 2 and cols == h:
            block = 1
        elif len(target.shape) == 2 and flatten and cols % h == 0:
            block = cols // h
        else:
            continue
        used_b.add(target.index)
        pairs.append(Pair(ref.index, target.index, block))
    return pairs


def _other_is_constantish(gr: _Graph, node: onnx.NodeProto, through: str) -> bool:
    others = [i for i in node.input if i != through]
    if len(others) != 1:
        return False
    name = others[0]
    if name in gr.inits:
        return True
    prod = gr.producer.get(name)
    # Reshape/Unsqueeze of a bias, or the product of two quantization scales.
    return prod is not None and prod.op_type in ("Reshape", "Unsqueeze", "Identity", "Cast", "Mul", "Constant")


def _second_to_first(rows: np.ndarray) -> np.ndarray:
    """Second-largest over largest magnitude per (max-normalized) row; 0 for rows with < 2 values."""
    if rows.shape[1] < 2:
        return np.zeros(rows.shape[0], dtype=np.float32)
    top2 = -np.partition(-np.abs(rows), 1, axis=1)[:, :2]
    return top2[:, 1] / np.maximum(top2[:, 0], np.finfo(np.float32).tiny)


def _unit_view(arr: np.ndarray, h: int, block: int) -> np.ndarray:
    """B as [out, h, rest] so hidden unit i is ``view[:, i, :]``."""
    return arr.reshape(arr.shape[0], h, -1) if block == 1 else arr.reshape(arr.shape[0], h, block)


def to_canonical(arrays: list[np.ndarray], pairs: list[Pair]) -> tuple[list[np.ndarray], Transform]:
    canon = [a.copy() for a in arrays]
    tf = Transform(pairs)
    for p in pairs:
        a = canon[p.a]
        h = a.shape[0]
        rows = a.reshape(h, -1)
        u = np.max(np.abs(rows), axis=1).astype(np.float32)
        u[u == 0] = 1.0
        rows = rows / u[:, None]
        bview = _unit_view(canon[p.b], h, p.block) * u[None, :, None]
        order = np.argsort(-_second_to_first(rows), kind="stable")
        canon[p.a] = np.ascontiguousarray(rows[order]).reshape(a.shape)
        canon[p.b] = np.ascontiguousarray(bview[:, order, :]).reshape(canon[p.b].shape)
        tf.row[p.a] = (order, u)
        tf.col[p.b] = (order, u, p.block)
    return canon, tf


def from_canonical(canon: list[np.ndarray], tf: Transform) -> list[np.ndarray]:
    raw = [c.copy() for c in canon]
    for t, (order, u, block) in tf.col.items():
        h = order.size
        v = _unit_view(raw[t], h, block)
        out = np.empty_like(v)
        out[:, order, :] = v
        out /= u[None, :, None]
        raw[t] = out.reshape(raw[t].shape)
    for t, (order, u) in tf.row.items():
        h = order.size
        rows = raw[t].reshape(h, -1)
        out = np.empty_like(rows)
        out[order] = rows
        out *= u[:, None]
        raw[t] = out.reshape(raw[t].shape)
    return raw


@dataclass
class RowSubset:
    """The first ``raw_rows.size`` canonical rows of one tensor, mapped to raw coordinates.

    Canonical ``C[i, k, :] = R[raw_rows[i], col_perm[k], :] * col_scale[k] / row_scale[i]`` (``R`` viewed
    as ``[rows, units, rest]``); without a column transform the units stay in place with scale 1.
    """

    raw_rows: np.ndarray
    row_scale: np.ndarray  # float32, one per subset row
    col_perm: np.ndarray | None
    col_scale: np.ndarray | None  # float32, in canonical unit order
    shape: tuple[int, ...]  # full tensor shape
    row_transformed: bool

    @property
    def cols(self) -> int:
        return int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1

    def flat_index(self) -> np.ndarray:
        return (self.raw_rows[:, None].astype(np.int64) * self.cols + np.arange(self.cols)).reshape(-1)

    def extract(self, raw: np.ndarray) -> np.ndarray:
        x = raw.reshape(self.shape[0], -1)[self.raw_rows]
        if self.col_perm is not None and self.col_scale is not None:
            x3 = x.reshape(x.shape[0], self.col_perm.size, -1)[:, self.col_perm, :]
            x = (x3 * self.col_scale[None, :, None]).reshape(x.shape[0], -1)
        return (x / self.row_scale[:, None]).astype(np.float32)

    def write(self, raw: np.ndarray, canon: np.ndarray) -> None:
        """Store canonical subset values back into ``raw`` (in place)."""
        x = canon.reshape(self.raw_rows.size, -1) * self.row_scale[:, None]
        if self.col_perm is not None and self.col_scale is not None:
            x3 = x.reshape(x.shape[0], self.col_perm.size, -1) / self.col_scale[None, :, None]
            out = np.empty_like(x3)
            out[:, self.col_perm, :] = x3
            x = out.reshape(x.shape[0], -1)
        raw.reshape(self.shape[0], -1)[self.raw_rows] = x.astype(np.float32)


def row_subsets(arrays: list[np.ndarray], pairs: list[Pair], max_elements: int
                ) -> tuple[list[RowSubset], list[np.ndarray]]:
    """The canonical form's first rows of every tensor (at most ``max_elements`` values each), without
    materializing the whole canonical form, and the raw weights that define it (never to be changed).

    Equivalent to slicing ``to_canonical``: the unit scales and order need one read of each tensor
    (row max-abs and second max-abs of the column-scaled magnitudes); everything else touches only
    the subset. Large models thereby canonicalize in a few passes instead of several copies.
    """
    row_of = {p.a: p for p in pairs}
    col_of = {p.b: p for p in pairs}
    unit: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # A index -> (order, u by raw unit)
    subsets: list[RowSubset] = []
    protect: list[np.ndarray] = []
    for t, a in enumerate(arrays):
        rows = a.shape[0]
        mask = np.zeros(a.shape, dtype=bool)
        # The tensor's largest magnitude sets its INT8 scale: changing it would re-round every weight.
        mask.reshape(-1)[int(np.argmax(np.abs(a.reshape(-1))))] = True
        col_perm = col_scale = None
        cs_raw = None
        if t in col_of:
            order_a, u_a = unit[col_of[t].a]
            col_perm, cs_raw = order_a, u_a
            col_scale = u_a[order_a].astype(np.float32)
        if t in row_of:
            x = np.abs(a.reshape(rows, -1))
            if cs_raw is not None:
                x = (x.reshape(rows, cs_raw.size, -1) * cs_raw[None, :, None]).reshape(rows, -1)
            i1 = np.argmax(x, axis=1)
            ar = np.arange(rows)
            u = x[ar, i1].astype(np.float32)
            mask.reshape(rows, -1)[ar, i1] = True
            if x.shape[1] >= 2:
                x[ar, i1] = -1.0
                i2 = np.argmax(x, axis=1)
                # The second-largest sets the order: protect it too, so marking cannot reorder units.
                mask.reshape(rows, -1)[ar, i2] = True
                ratio = x[ar, i2] / np.maximum(u, np.finfo(np.float32).tiny)
            else:
                ratio = np.zeros(rows, dtype=np.float32)
            del x
            u[u == 0] = 1.0
            order = np.argsort(-ratio, kind="stable")
            unit[t] = (order, u)
            r = min(rows, max(1, max_elements // max(a.size // rows, 1)))
            raw_rows, row_scale = order[:r], u[order[:r]]
        else:
            r = min(rows, max(1, max_elements // max(a.size // rows, 1)))
            raw_rows, row_scale = np.arange(r), np.ones(r, dtype=np.float32)
            # The subset's largest value sets the lattice scale of an un-normalized tensor: protect it.
            x = np.abs(a.reshape(rows, -1)[:r])
            if cs_raw is not None:
                x = (x.reshape(r, cs_raw.size, -1) * cs_raw[None, :, None]).reshape(r, -1)
            mask.reshape(-1)[int(np.argmax(x))] = True
        sub = RowSubset(raw_rows, row_scale, col_perm, col_scale, tuple(a.shape), t in row_of)
        subsets.append(sub)
        protect.append(mask)
    return subsets, protect


def subset_protected(sub: RowSubset, canon: np.ndarray, raw_protect: np.ndarray | None = None) -> np.ndarray:
    """Subset elements that define the canonical form (row maxima, the subset's max) or that ``raw_protect``
    marks in raw coordinates: never modified."""
    absc = np.abs(canon.reshape(canon.shape[0], -1))
    m = np.zeros(absc.shape, dtype=bool)
    if raw_protect is not None:
        x = raw_protect.reshape(sub.shape[0], -1)[sub.raw_rows]
        if sub.col_perm is not None:
            x = x.reshape(x.shape[0], sub.col_perm.size, -1)[:, sub.col_perm, :].reshape(x.shape[0], -1)
        m |= x
    m.reshape(-1)[int(np.argmax(absc))] = True
    if sub.row_transformed:
        m[np.arange(absc.shape[0]), np.argmax(absc, axis=1)] = True
    return m
