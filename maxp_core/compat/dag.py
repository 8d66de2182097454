"""The published graph classes ``MergeType``, ``DagNode`` and ``OpGraph``, and conversions.

The published maxP describes a network as a dict of :class:`DagNode` (one per
parametrized op, plus synthetic merge nodes where outputs of different ops are added or
multiplied) held by an :class:`OpGraph`. This project's LP works on
:class:`maxp_core.graph.OpGraph` (a different class of the same name):
:func:`to_core` and :func:`from_core` convert between the two.

Mapping (published -> core):

* a weighted node -> a weighted :class:`maxp_core.graph.Node`; an activation-only node
  (``has_weight=False``, a bare-callable layer or a synthetic merge) -> a parameter-free
  node, ``r = r_in + a``;
* ``MergeType.MIN`` (added inputs: residual streams) -> ``merge="min"``;
* ``MergeType.SUM`` (elementwise products: gates) -> ``merge="product"``. On purpose this
  is not the published rule ``r_in = r_1 + r_2``: the update of ``x * y`` is
  ``dx y0 + x0 dy + dx dy``, as large as the larger factor update when both factors are of
  order one at initialization, so ``r_in = min(r_1, r_2)``. Adding the exponents is right
  only for factors that start at zero; list those in :attr:`DagNode.zero_inputs` (all of
  them gives the published sum exactly);
* ``alpha``, ``omega``, ``u``, ``a`` and ``b`` are carried as they are; ``layer_type`` and
  ``width_dim`` play no part in the LP (roles follow the topology, as in the published
  solver) and are not carried.

Two trailing fields extend the published :class:`DagNode` (defaults keep the published
meaning): ``zero_inputs`` (see above) and ``contraction``, an activation-only node
``n^-a x @ y^T`` summed over a width-sized axis, such as attention scores, which the core
treats as a layer whose weight is ``y``. The published graph has no such notion: its
nearest is the bare-callable ``q @ k^T`` layer (activation-only, ``layer_type="readout"``,
``MergeType.MIN`` over its inputs), which is how :func:`from_core` writes a core contraction,
with ``contraction=True`` so that :func:`to_core` gives back the same LP.

Examples:
  >>> g = OpGraph({
  ...     "emb": DagNode("emb", -0.5, 0.5, "embedding", True, 64, successors=["h", "_add_0"]),
  ...     "h": DagNode("h", 0.0, 0.5, "hidden", True, 64, predecessors=["emb"], successors=["_add_0"]),
  ...     "_add_0": DagNode("_add_0", 0.0, 0.0, "merge", False, 0, predecessors=["emb", "h"],
  ...                       successors=["head"]),
  ...     "head": DagNode("head", 0.5, 0.5, "readout", True, 64, predecessors=["_add_0"]),
  ... })
  >>> [n.name for n in g.topological_order()]
  ['emb', 'h', '_add_0', 'head']
  >>> to_core(g).node("_add_0").merge
  'min'
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from maxp_core import graph as core
from maxp_core.errors import GraphError
from maxp_core.roles import Role

__all__ = ["DagNode", "MergeType", "OpGraph", "from_core", "to_core"]

#: ``layer_type`` of the published synthetic merge nodes.
MERGE_LAYER_TYPE = "merge"
#: ``layer_type`` given to a core contraction: the published ``q @ k^T`` layer's.
CONTRACTION_LAYER_TYPE = "readout"


class MergeType(Enum):
    """How several inputs of a node combine.

    ``MIN``: they are added (a residual stream), the slowest-decaying update dominates.
    ``SUM``: they are multiplied elementwise (a gate); see the module docstring for how
    :func:`to_core` reads it.
    """

    MIN = "min"
    SUM = "sum"


@dataclass
class DagNode:
    """One op of the published graph, with its exponents and alignment numbers.

    Attributes:
      name: the node's name (a module path, or ``_add_k``/``_mul_k`` for a merge).
      a: output-multiplier exponent.
      b: initialization exponent (``math.inf``: the weight starts at zero).
      layer_type: ``"embedding"``, ``"hidden"``, ``"readout"`` or ``"merge"``; informative only.
      has_weight: whether the op has a learned weight (and so a ``c``).
      width_dim: the width ``n`` of the op (0 for merges); informative only.
      predecessors: names of the nodes feeding this one.
      successors: names of the nodes this one feeds.
      merge_type: how several predecessors combine.
      alpha: alignment of ``z0 @ dW``.
      omega: alignment of ``dz @ W0``.
      u: alignment of ``dz @ dW``.
      zero_inputs: (extension) predecessors whose value is exactly zero at initialization
        where this node multiplies them.
      contraction: (extension) an activation-only ``n^-a x @ y^T`` over a width-sized axis.
    """

    name: str
    a: float
    b: float
    layer_type: str
    has_weight: bool
    width_dim: int
    predecessors: list[str] = field(default_factory=list)
    successors: list[str] = field(default_factory=list)
    merge_type: MergeType = MergeType.MIN
    alpha: float = 1.0
    omega: float = 0.5
    u: float = 1.0
    zero_inputs: list[str] = field(default_factory=list)
    contraction: bool = False


class OpGraph:
    """The published graph: :class:`DagNode` by name, edges stored both ways.

    Args:
      nodes: the nodes by name (``None``: an empty graph).
    """

    def __init__(self, nodes: dict[str, DagNode] | None = None) -> None:
        self.nodes: dict[str, DagNode] = nodes or {}

    def __repr__(self) -> str:
        weighted = sum(node.has_weight for node in self.nodes.values())
        return f"OpGraph({len(self.nodes)} nodes, {weighted} weighted)"

    def topological_order(self) -> list[DagNode]:
        """The nodes in an order where every node follows its predecessors.

        Follows ``successors``; among nodes that are ready at once the name that sorts
        first goes first, as in the published graph.

        Raises:
          GraphError: a successor that is no node, or a cycle (message starts
            ``"Graph contains a cycle"`` and names the nodes on it).
        """
        self._check_names(self.nodes)
        indegree = dict.fromkeys(self.nodes, 0)
        for name, node in self.nodes.items():
            for succ in node.successors:
                if succ not in indegree:
                    raise GraphError(
                        f"Successor '{succ}' of '{name}' not in graph; nodes: {list(self.nodes)}"
                    )
                indegree[succ] += 1
        ready = [name for name, degree in indegree.items() if degree == 0]
        heapq.heapify(ready)
        order: list[DagNode] = []
        while ready:
            node = self.nodes[heapq.heappop(ready)]
            order.append(node)
            for succ in node.successors:
                indegree[succ] -= 1
                if indegree[succ] == 0:
                    heapq.heappush(ready, succ)
        if len(order) != len(self.nodes):
            cyclic = [name for name, degree in indegree.items() if degree > 0]
            raise GraphError(f"Graph contains a cycle through nodes {cyclic}; remove an edge between them")
        return order

    def sources(self) -> list[DagNode]:
        """Nodes without predecessors, in dict order."""
        return [node for node in self.nodes.values() if not node.predecessors]

    def sinks(self) -> list[DagNode]:
        """Nodes without successors, in dict order."""
        return [node for node in self.nodes.values() if not node.successors]

    def validate(self) -> None:
        """Check the graph: edges agree both ways, no cycle, at least one source and one sink.

        Raises:
          GraphError: (a ``ValueError``) with the published message phrases: ``"Successor
            'x' of 'y' not in graph"``, ``"Predecessor ..."``, ``"Inconsistent edge: 'x' ->
            'y'"``, ``"Graph contains a cycle"``, ``"Graph has no source nodes (no
            predecessors)"`` (an empty graph too), ``"Graph has no sink nodes (no successors)"``.
        """
        self._check_edges()
        self.topological_order()
        if not self.sources():
            raise GraphError(
                "Graph has no source nodes (no predecessors): a graph needs at least one node, "
                "and one that reads only the model's input"
            )
        if not self.sinks():
            raise GraphError("Graph has no sink nodes (no successors): some node must give the output")

    @staticmethod
    def _check_names(nodes: Mapping[str, object]) -> None:
        for key, node in nodes.items():
            if not isinstance(node, DagNode):
                raise GraphError(f"node {key!r} is a {type(node).__name__}, not a DagNode")
            if node.name != key:
                raise GraphError(f"the node stored under {key!r} is named {node.name!r}; use its name as key")

    def _check_edges(self) -> None:
        self._check_names(self.nodes)
        for name, node in self.nodes.items():
            for succ in node.successors:
                if succ not in self.nodes:
                    raise GraphError(
                        f"Successor '{succ}' of '{name}' not in graph; nodes: {list(self.nodes)}"
                    )
                if name not in self.nodes[succ].predecessors:
                    raise GraphError(
                        f"Inconsistent edge: '{name}' -> '{succ}': '{succ}' is a successor of '{name}' "
                        f"but does not list it among its predecessors {self.nodes[succ].predecessors}"
                    )
            for pred in node.predecessors:
                if pred not in self.nodes:
                    raise GraphError(
                        f"Predecessor '{pred}' of '{name}' not in graph; nodes: {list(self.nodes)}"
                    )
                if name not in self.nodes[pred].successors:
                    raise GraphError(
                        f"Inconsistent edge: '{pred}' -> '{name}': '{pred}' is a predecessor of '{name}' "
                        f"but does not list it among its successors {self.nodes[pred].successors}"
                    )


def to_core(graph: OpGraph) -> core.OpGraph:
    """The LP graph of a published graph (see the module docstring for the mapping).

    Nodes keep their names and come in :meth:`OpGraph.topological_order`.

    Raises:
      GraphError: the published graph is malformed (:meth:`OpGraph.validate`), or the core
        refuses it (for instance an alignment outside [0, 1]).
      StabilityError: a weighted node's ``a + b`` is not stable at initialization for its
        place (source 0, interior 0.5, sink at least 0.5).

    Examples:
      >>> g = OpGraph({
      ...     "emb": DagNode("emb", -0.5, 0.5, "embedding", True, 8, successors=["out"]),
      ...     "out": DagNode("out", 0.5, 0.5, "readout", True, 8, predecessors=["emb"]),
      ... })
      >>> to_core(g)
      OpGraph(2 nodes, 2 weighted)
    """
    if not isinstance(graph, OpGraph):
        raise GraphError(
            f"to_core takes a maxp_core.compat.dag.OpGraph, got {type(graph).__name__}; "
            "a maxp_core.OpGraph is already the LP's graph"
        )
    graph.validate()
    return core.OpGraph([_core_node(node) for node in graph.topological_order()])


def _core_node(node: DagNode) -> core.Node:
    try:
        merge_type = MergeType(node.merge_type)
    except ValueError:
        raise GraphError(
            f"node {node.name!r}: merge_type must be MergeType.MIN or MergeType.SUM, got {node.merge_type!r}"
        ) from None
    multiplied = merge_type is MergeType.SUM and len(node.predecessors) > 1
    return core.Node(
        name=node.name,
        a=node.a,
        b=node.b,
        alpha=node.alpha,
        omega=node.omega,
        u=node.u,
        has_weight=node.has_weight,
        preds=tuple(node.predecessors),
        merge="product" if multiplied or node.contraction else "min",
        zero_inputs=tuple(node.zero_inputs),
        contraction=node.contraction,
    )


def from_core(
    graph: core.OpGraph,
    *,
    width_dims: Mapping[str, int] | None = None,
    layer_types: Mapping[str, str] | None = None,
) -> OpGraph:
    """The published graph of an LP graph (see the module docstring for the mapping).

    A node's ``layer_type`` is taken from ``layer_types``, else: a weighted node's declared
    role or, without one, its role by place; a merge of several inputs ``"merge"``; a
    contraction ``"readout"`` (the published attention-scores layer's); any other
    activation-only node its role by place. ``merge="sum"`` (every factor zero at
    initialization) becomes ``MergeType.SUM`` with every predecessor in ``zero_inputs``,
    which :func:`to_core` turns into the equivalent ``"product"`` node.

    Args:
      graph: the LP graph.
      width_dims: ``width_dim`` by node name (default 0: the LP graph has no widths).
      layer_types: ``layer_type`` by node name, overriding the rule above.

    Returns:
      The published-style :class:`OpGraph`, nodes in the LP graph's node order.

    Examples:
      >>> from maxp_core import chain
      >>> g = from_core(chain(3))
      >>> [(n.name, n.layer_type, n.predecessors, n.successors) for n in g.nodes.values()]
      [('layer0', 'embedding', [], ['layer1']), ('layer1', 'hidden', ['layer0'], ['layer2']), \
('layer2', 'readout', ['layer1'], [])]
    """
    if not isinstance(graph, core.OpGraph):
        raise GraphError(f"from_core takes a maxp_core.OpGraph, got {type(graph).__name__}")
    widths = dict(width_dims or {})
    types = dict(layer_types or {})
    unknown = sorted((set(widths) | set(types)) - set(graph.names))
    if unknown:
        raise GraphError(f"width_dims or layer_types name {unknown}, which are not nodes of the graph")
    nodes: dict[str, DagNode] = {}
    for i, node in enumerate(graph.nodes):
        several = len(node.preds) > 1
        multiplied = several and node.merge in core.PRODUCT_MERGES and not node.contraction
        nodes[node.name] = DagNode(
            name=node.name,
            a=node.a,
            b=node.b,
            layer_type=types.get(node.name) or _layer_type(graph, i),
            has_weight=node.has_weight,
            width_dim=widths.get(node.name, 0),
            predecessors=list(node.preds),
            successors=[graph.nodes[s].name for s in graph.succ_indices(i)],
            merge_type=MergeType.SUM if multiplied else MergeType.MIN,
            alpha=node.alpha,
            omega=node.omega,
            u=node.u,
            zero_inputs=list(node.preds if node.merge == "sum" and several else node.zero_inputs),
            contraction=node.contraction,
        )
    return OpGraph(nodes)


def _layer_type(graph: core.OpGraph, i: int) -> str:
    node = graph.nodes[i]
    if node.has_weight and node.role is not None:
        return Role.parse(node.role, layer=node.name).value
    if node.contraction:
        return CONTRACTION_LAYER_TYPE
    if not node.has_weight and len(node.preds) > 1:
        return MERGE_LAYER_TYPE
    return graph.role(node.name).value
