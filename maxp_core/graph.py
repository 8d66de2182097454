"""The op graph the LP is solved over: nodes, edges, validation, and a chain builder.

A node is a weight-bearing op (a matrix multiply with a learned weight) or an
activation-only op (such as attention's ``q @ k^T``) that has an output multiplier
``n^-a`` but no weight. Edges run from a node to the nodes that consume its output.
When a node has several predecessors their values either add (``merge="min"``: a
residual stream, the slowest-decaying update dominates) or multiply (``merge="product"``:
a gate, ``attn @ v``; the update of ``x * y`` is ``dx*y + x*dy + dx*dy``, so it is as large as
the larger factor update unless a factor is zero at initialization, see
:mod:`maxp_core.formulation`). ``merge="sum"`` adds the exponents; it is right only when
every factor is zero at initialization, and is kept for graphs that state exactly that.

A weighted node with ``b = math.inf`` has a zero initial weight. An activation-only node
with ``contraction=True`` multiplies two inputs summed over a width-sized axis
(``q @ k^T`` over the head dimension).

Examples:
  >>> g = chain(3)
  >>> [n.name for n in g.nodes]
  ['layer0', 'layer1', 'layer2']
  >>> [g.role(n.name).value for n in g.nodes]
  ['embedding', 'hidden', 'readout']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from maxp_core import validate
from maxp_core.errors import GraphError, MaxPError
from maxp_core.roles import Role, check_init_stability, role_from_position

Merge = Literal["min", "product", "sum"]
MERGES: tuple[str, ...] = ("min", "product", "sum")
#: Merges whose inputs multiply.
PRODUCT_MERGES: tuple[str, ...] = ("product", "sum")

#: Alignment presets ``(alpha, omega, u)``: worst case and random-like.
ALIGNMENT_PRESETS: dict[str, tuple[float, float, float]] = {
    "full": (1.0, 0.5, 1.0),
    "no": (0.5, 0.5, 0.5),
}
"""``(alpha, omega, u)`` of the named alignment presets: ``"full"`` (worst case) and ``"no"``."""


def alignment_preset(name: str) -> tuple[float, float, float]:
    """Return ``(alpha, omega, u)`` of the preset ``"full"`` or ``"no"``."""
    try:
        return ALIGNMENT_PRESETS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in ALIGNMENT_PRESETS)
        raise GraphError(f"unknown alignment preset {name!r}; expected one of {known}") from None


@dataclass(frozen=True)
class Node:
    """One op of the graph with its exponents and alignment numbers.

    Attributes:
      name: unique name (a layer name or parameter path).
      a: output-multiplier exponent; the op's output is scaled by ``n^-a``.
      b: initialization exponent (ignored for activation-only nodes).
      alpha: alignment of the ``z0 @ dW`` term.
      omega: alignment of the ``dz @ W0`` term.
      u: alignment of the ``dz @ dW`` term.
      has_weight: False for activation-only ops (no learning rate, no ``c``).
      preds: names of the nodes whose outputs feed this one.
      merge: how several predecessors combine: ``"min"`` (added), ``"product"``
        (multiplied) or ``"sum"`` (multiplied, every factor zero at initialization).
      role: optional declared role; checked against the node's place in the graph.
      zero_inputs: predecessors whose value, where this node multiplies it, is exactly
        zero at initialization (the output of a zero-initialized layer); only for
        multiplying nodes.
      contraction: an activation-only node ``n^-a * x @ y^T`` whose two inputs (``preds``
        in that order; one predecessor means ``x @ x^T``) are summed over an axis that
        grows with width, like attention scores. ``alpha``, ``omega`` and ``u`` are then
        the alignments of ``x0 @ dy``, ``dx @ y0`` and ``dx @ dy``, as for a layer whose
        weight is ``y``.
    """

    name: str
    a: float
    b: float = 0.5
    alpha: float = 1.0
    omega: float = 0.5
    u: float = 1.0
    has_weight: bool = True
    preds: tuple[str, ...] = ()
    merge: Merge = "min"
    role: Role | None = field(default=None)
    zero_inputs: tuple[str, ...] = ()
    contraction: bool = False

    @property
    def zero_init(self) -> bool:
        """Whether this is a weighted node whose initial weight is zero (``b = inf``)."""
        return self.has_weight and self.b == math.inf

    @property
    def multiplies(self) -> bool:
        """Whether this node multiplies its inputs (a product merge or a contraction)."""
        return self.contraction or (len(self.preds) > 1 and self.merge in PRODUCT_MERGES)

    def with_numbers(self, **numbers: float) -> Node:
        """A copy with some of ``a, b, alpha, omega, u`` replaced."""
        return replace(self, **numbers)  # type: ignore[arg-type]


class OpGraph:
    """A validated directed acyclic graph of :class:`Node`.

    Validation rejects an empty graph, duplicate or empty names, predecessors that
    name no node, self-loops and cycles, an unknown merge, non-finite numbers, a
    weight-bearing node with neither predecessors nor successors in a graph of
    several weighted nodes, a declared role that contradicts the node's place, and
    (a, b) that are unstable at initialization for that place.

    Args:
      nodes: the nodes, in any order.
      check_stability: check ``a + b`` of every weighted node against its role.
    """

    def __init__(self, nodes: Iterable[Node], *, check_stability: bool = True) -> None:
        if isinstance(nodes, str | bytes | Node) or not isinstance(nodes, Iterable):
            raise GraphError(f"OpGraph takes an iterable of Node, got {type(nodes).__name__} {nodes!r}")
        self.nodes: tuple[Node, ...] = tuple(nodes)
        if not self.nodes:
            raise GraphError("the graph is empty: add at least one node")
        for k, n in enumerate(self.nodes):
            if not isinstance(n, Node):
                raise GraphError(f"node {k} of the graph is a {type(n).__name__}, not a Node: {n!r}")
        self.check_stability = validate.boolean(check_stability, "check_stability")
        self._index = self._build_index()
        self._names = tuple(n.name for n in self.nodes)
        self._succs = self._build_successors()
        self.topological_order: tuple[int, ...] = self._topological_order()
        self.weighted: tuple[int, ...] = tuple(i for i, n in enumerate(self.nodes) if n.has_weight)
        """Indices of weight-bearing nodes, in node order."""
        self.sinks: tuple[int, ...] = tuple(i for i, s in enumerate(self._succs) if not s)
        """Indices of nodes no other node consumes."""
        self._check_numbers()
        self._check_products()
        self._check_isolated()
        self._check_roles(check_stability)

    # --- structure -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"OpGraph({len(self.nodes)} nodes, {len(self.weighted)} weighted)"

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in node order."""
        return self._names

    def index(self, name: str) -> int:
        """Position of the node called ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise GraphError(f"no node named {name!r} in the graph") from None

    def node(self, name: str) -> Node:
        """The node called ``name`` (a :class:`~maxp_core.GraphError` names an unknown one)."""
        return self.nodes[self.index(name)]

    def pred_indices(self, i: int) -> tuple[int, ...]:
        """Positions of node ``i``'s predecessors, in its ``preds`` order."""
        return tuple(self._index[p] for p in self.nodes[i].preds)

    def succ_indices(self, i: int) -> tuple[int, ...]:
        """Positions of the nodes that read node ``i``'s output."""
        return self._succs[i]

    def is_source(self, i: int) -> bool:
        """Whether node ``i`` reads no other node (it reads the input)."""
        return not self.nodes[i].preds

    def is_sink(self, i: int) -> bool:
        """Whether no node reads node ``i``'s output (it is an output of the model)."""
        return not self._succs[i]

    @property
    def feature_learning_nodes(self) -> tuple[int, ...]:
        """Every predecessor of a sink: the nodes whose ``r`` feature learning pins to 0."""
        return tuple(sorted({p for s in self.sinks for p in self.pred_indices(s)}))

    def role(self, name: str) -> Role:
        """The role of a weighted node by its place: source, interior or sink."""
        i = self.index(name)
        return role_from_position(is_source=self.is_source(i), is_sink=self.is_sink(i))

    def with_numbers(self, **per_node: Sequence[float] | dict[str, float]) -> OpGraph:
        """A copy of the graph with new ``a, b, alpha, omega, u`` for some nodes.

        Each keyword is a sequence in node order or a mapping from node name.
        """
        for key, values in per_node.items():
            if key not in ("a", "b", *validate.ALIGNMENT_FIELDS):
                raise GraphError(f"unknown number field {key!r}; expected a, b, alpha, omega or u")
            if isinstance(values, dict):
                unknown = sorted(set(values) - set(self._index))
                if unknown:
                    raise GraphError(f"{key} names {unknown}, which are not nodes of the graph")
            elif len(values) != len(self.nodes):
                raise GraphError(f"{key}: expected {len(self.nodes)} values in node order, got {len(values)}")
        updated = []
        for i, n in enumerate(self.nodes):
            changes: dict[str, float] = {}
            for key, values in per_node.items():
                if isinstance(values, dict):
                    if n.name in values:
                        changes[key] = values[n.name]
                else:
                    changes[key] = values[i]
            updated.append(n.with_numbers(**changes) if changes else n)
        return OpGraph(updated, check_stability=self.check_stability)

    # --- validation ----------------------------------------------------------------

    def _build_index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            if not isinstance(n.name, str) or not n.name:
                raise GraphError(f"node {i} has an empty or non-string name {n.name!r}")
            if n.name in index:
                raise GraphError(f"duplicate node name {n.name!r} (nodes {index[n.name]} and {i})")
            if n.merge not in MERGES:
                raise GraphError(
                    f"node {n.name!r}: unknown merge {n.merge!r}; expected one of {list(MERGES)}"
                )
            index[n.name] = i
        return index

    def _build_successors(self) -> tuple[tuple[int, ...], ...]:
        succs: list[list[int]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            if isinstance(n.preds, str) or not all(isinstance(p, str) for p in n.preds):
                raise GraphError(f"node {n.name!r}: preds must be a tuple of node names, got {n.preds!r}")
            if len(set(n.preds)) != len(n.preds):
                raise GraphError(f"node {n.name!r} lists a predecessor twice: {list(n.preds)}")
            for p in n.preds:
                if p == n.name:
                    raise GraphError(f"node {n.name!r} lists itself as a predecessor")
                if p not in self._index:
                    raise GraphError(
                        f"node {n.name!r} has predecessor {p!r}, which is not a node "
                        "of the graph (dangling edge)"
                    )
                succs[self._index[p]].append(i)
        return tuple(tuple(s) for s in succs)

    def _topological_order(self) -> tuple[int, ...]:
        # Kahn's algorithm with a heap: among ready nodes the lowest index goes first,
        # so the order is deterministic and keeps node order where it can.
        indegree = [len(n.preds) for n in self.nodes]
        ready = [i for i, d in enumerate(indegree) if d == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for s in self._succs[i]:
                indegree[s] -= 1
                if indegree[s] == 0:
                    heapq.heappush(ready, s)
        if len(order) != len(self.nodes):
            cyclic = [self.nodes[i].name for i, d in enumerate(indegree) if d > 0]
            raise GraphError(f"the graph has a cycle through nodes {cyclic}")
        return tuple(order)

    def _check_numbers(self) -> None:
        """Exponents finite and bounded (``b = inf`` allowed for weights), alignments in [0, 1]."""
        checks = {"a": validate.exponent, "b": validate.init_exponent}
        checks.update(dict.fromkeys(validate.ALIGNMENT_FIELDS, validate.alignment_value))
        for n in self.nodes:
            try:
                validate.boolean(n.has_weight, f"node {n.name!r}: has_weight")
                validate.boolean(n.contraction, f"node {n.name!r}: contraction")
                for key, check in checks.items():
                    if key == "b" and not n.has_weight:
                        check = validate.exponent
                    check(getattr(n, key), f"node {n.name!r}: {key}")
            except MaxPError as err:
                raise GraphError(str(err)) from None

    def _check_products(self) -> None:
        """``contraction`` only on activation-only nodes, ``zero_inputs`` only where inputs multiply."""
        for n in self.nodes:
            if n.contraction and (n.has_weight or len(n.preds) not in (1, 2)):
                raise GraphError(
                    f"node {n.name!r}: contraction=True needs an activation-only node with one or two "
                    f"predecessors (x @ y^T), got has_weight={n.has_weight} and preds {list(n.preds)}"
                )
            zero = n.zero_inputs
            if isinstance(zero, str) or not all(isinstance(p, str) for p in zero):
                raise GraphError(f"node {n.name!r}: zero_inputs must be a tuple of node names, got {zero!r}")
            if not zero:
                continue
            stray = sorted(set(zero) - set(n.preds))
            if stray:
                raise GraphError(
                    f"node {n.name!r}: zero_inputs names {stray}, which are not among its "
                    f"predecessors {list(n.preds)}"
                )
            if not n.multiplies:
                raise GraphError(
                    f"node {n.name!r}: zero_inputs only applies where inputs multiply (merge "
                    f"'product' with several predecessors, or contraction=True); it has merge "
                    f"{n.merge!r} and preds {list(n.preds)}"
                )

    def _check_isolated(self) -> None:
        if len(self.weighted) < 2:
            return
        for i in self.weighted:
            if self.is_source(i) and self.is_sink(i):
                raise GraphError(
                    f"weighted node {self.nodes[i].name!r} has neither predecessors nor "
                    "successors; connect it to the graph or remove it"
                )

    def _check_roles(self, check_stability: bool) -> None:
        if len(self.weighted) < 2:
            return  # a single weighted node has no width-scaling role to check
        for i in self.weighted:
            n = self.nodes[i]
            role = role_from_position(is_source=self.is_source(i), is_sink=self.is_sink(i))
            if n.role is not None and Role.parse(n.role, layer=n.name) is not role:
                raise GraphError(
                    f"node {n.name!r} is declared {Role.parse(n.role).value!r} but sits "
                    f"in the graph as {role.value!r} (source: embedding, sink: readout, "
                    "else hidden)"
                )
            if check_stability and not n.zero_init:
                check_init_stability(n.name, role, n.a, n.b)


def chain(
    num_layers: int,
    *,
    a: Sequence[float] | None = None,
    b: Sequence[float] | None = None,
    alignment: str | tuple[float, float, float] | Sequence[tuple[float, float, float]] = "full",
    names: Sequence[str] | None = None,
) -> OpGraph:
    """Build a chain of ``num_layers`` weighted layers: embedding, hidden..., readout.

    Args:
      num_layers: number of weighted layers, at least 2.
      a: output-multiplier exponents per layer; default muP's.
      b: initialization exponents per layer; default muP's.
      alignment: a preset name, one ``(alpha, omega, u)`` for every layer, or one
        triple per layer.
      names: layer names; default ``layer0, layer1, ...``.

    Returns:
      The validated :class:`OpGraph`.
    """
    num_layers = layer_count(num_layers)
    if a is None:
        a = [-0.5] + [0.0] * (num_layers - 2) + [0.5]
    if b is None:
        b = [0.5] * num_layers
    if names is None:
        names = [f"layer{i}" for i in range(num_layers)]
    triples: list[tuple[float, ...]]
    if isinstance(alignment, str):
        triples = [alignment_preset(alignment)] * num_layers
    elif not isinstance(alignment, Sequence):
        raise GraphError(f"alignment must be a preset name or (alpha, omega, u) triples, got {alignment!r}")
    elif len(alignment) == 3 and not any(isinstance(x, Sequence) for x in alignment):
        triples = [validate.alignment_triple(alignment, "chain alignment")] * num_layers
    else:
        triples = [
            validate.alignment_triple(t, f"chain alignment of layer {k}") for k, t in enumerate(alignment)
        ]
    for label, seq in (("a", a), ("b", b), ("alignment", triples), ("names", names)):
        if isinstance(seq, str) or not isinstance(seq, Sequence | np.ndarray):
            raise GraphError(f"chain: {label} must be a sequence of {num_layers} values, got {seq!r}")
        if len(seq) != num_layers:
            raise GraphError(f"chain of {num_layers} layers got {len(seq)} values for {label}")
    nodes = [
        Node(
            name=names[i],
            a=validate.exponent(a[i], f"chain: a of layer {i}"),
            b=validate.exponent(b[i], f"chain: b of layer {i}"),
            alpha=float(triples[i][0]),
            omega=float(triples[i][1]),
            u=float(triples[i][2]),
            preds=(names[i - 1],) if i else (),
        )
        for i in range(num_layers)
    ]
    return OpGraph(nodes)


def layer_count(num_layers: object) -> int:
    """A chain's number of weighted layers: an integer of at least 2."""
    try:
        return validate.integer(num_layers, "a chain's number of layers", 2)
    except MaxPError:
        raise GraphError(
            f"a chain needs at least 2 layers (embedding and readout), as an integer; got {num_layers!r}"
        ) from None


def graph_by_roles(
    names: Sequence[str],
    roles: Sequence[Role | str],
    exponents: Sequence[tuple[float, float]],
    has_weight: Sequence[bool] | None = None,
    trace_hint: str = "give the forward pass and a sample input",
) -> OpGraph:
    """The graph of layers known only by their order and roles (no traced data flow).

    Embeddings are sources feeding the first hidden layer; hidden layers form a chain
    in order; each readout reads the last hidden layer before it (or every embedding
    when none precedes it) and is a sink. Both adapters use it when no sample input
    is given to trace the real graph. Hidden layers without a readout are refused: the
    readout is then most likely a second use of an embedding table (tied), which only the
    traced graph shows (``trace_hint`` says how to trace it).

    Examples:
      >>> g = graph_by_roles(["tok", "pos", "h", "out"], ["embedding", "embedding", "hidden", "readout"],
      ...                    [(-0.5, 0.5), (-0.5, 0.5), (0.0, 0.5), (0.5, 0.5)])
      >>> [(n.name, n.preds) for n in g.nodes]
      [('tok', ()), ('pos', ()), ('h', ('tok', 'pos')), ('out', ('h',))]
    """
    weights = [True] * len(names) if has_weight is None else list(has_weight)
    parsed = [Role.parse(r, layer=n) for n, r in zip(names, roles, strict=True)]
    weighted_roles = {r for r, w in zip(parsed, weights, strict=True) if w}
    if Role.HIDDEN in weighted_roles and Role.READOUT not in weighted_roles:
        last = names[max(i for i, r in enumerate(parsed) if r is Role.HIDDEN)]
        raise GraphError(
            f"no layer is a readout, so the last hidden layer {last!r} "
            "would be the network's output. If the readout reuses an embedding table (tied, as "
            f"flax's embed.attend or GPT-2's lm_head), only the traced graph shows it: {trace_hint}. "
            "Otherwise give the readout a rule"
        )
    embeddings = tuple(n for n, r in zip(names, parsed, strict=True) if r is Role.EMBEDDING)
    nodes: list[Node] = []
    last_hidden: str | None = None
    for name, role, (a, b), weighted in zip(names, parsed, exponents, weights, strict=True):
        if role is Role.EMBEDDING:
            preds: tuple[str, ...] = ()
        else:
            preds = (last_hidden,) if last_hidden is not None else embeddings
        nodes.append(
            Node(name=name, a=a, b=b, has_weight=weighted, preds=preds, role=role if weighted else None)
        )
        if role is Role.HIDDEN:
            last_hidden = name
    return OpGraph(nodes)


def flattened_inputs(
    graph: OpGraph, sizes: Mapping[str, tuple[int, int]]
) -> list[tuple[str, int, int, list[str]]]:
    """Layers whose input size is a multiple ``k > 1`` of the outputs of the layers feeding them.

    A dense layer after flattening an ``(H, W, C)`` feature map contracts ``H * W * C``
    inputs, but only ``C`` grows with the width: taking ``n = H * W * C`` would scale its
    learning rate by a constant ``(H * W)^-c`` nobody asked for. A concatenation of the
    feeding layers (``k`` equal to their number) is not a flatten.

    Args:
      graph: the op graph.
      sizes: ``(input size, output size)`` of each weighted layer to consider, by node name.

    Returns:
      ``(layer, input size, feeding output size, feeding layers)`` for each such layer.

    Examples:
      >>> g = OpGraph([Node("conv", a=-0.5, b=0.5, role="embedding"),
      ...              Node("head", a=0.5, b=0.5, preds=("conv",), role="readout")])
      >>> flattened_inputs(g, {"conv": (27, 8), "head": (512, 10)})
      [('head', 512, 8, ['conv'])]
    """
    found = []
    for name, (in_dim, _) in sizes.items():
        feeding = _feeding_layers(graph, name, sizes)
        outs = {sizes[f][1] for f in feeding}
        if len(outs) != 1:
            continue
        out = outs.pop()
        if out < in_dim and in_dim % out == 0 and in_dim != len(feeding) * out:
            found.append((name, in_dim, out, sorted(feeding)))
    return found


def _feeding_layers(graph: OpGraph, name: str, layers: Mapping[str, object]) -> list[str]:
    """The layers (of ``layers``) whose outputs reach ``name`` through parameter-free merges."""
    found: list[str] = []
    stack = list(graph.node(name).preds)
    while stack:
        node = graph.node(stack.pop())
        if node.name in layers:
            found.append(node.name)
        elif node.has_weight or node.contraction:
            return []  # an op of its own output shape: nothing to compare
        else:
            stack += node.preds
    return found
