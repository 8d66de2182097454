"""The stability terms of DESIGN section 3, as data both the LP and the exact check use.

Every node's residual is ``r = min(term_1, term_2, ...)``: its update is ``O(n^-r)``. A term
is a linear expression in the decision variables (``c`` of a weighted node, a node's
input residual ``r_in``, a predecessor's ``r``, the SGD gradient scale ``g``) plus a linear
expression in the numbers (``a, b, alpha, omega, u`` of some node). Keeping the terms as
data means the hypograph rows of the LP (``r <= term``) and the exact forward
recomputation (``r = min(terms)``) come from one definition.

Adam (``lr = a + c``)::

    source (embedding)   r = lr
    other weighted node  r = min(lr - alpha, lr + r_in - u, (a + b) + r_in - omega)
    activation-only      r = r_in + a          (source: r = a)

SGD replaces ``lr`` by ``g + 2a + c`` (``2a + c`` at a sink), where
``g = min over weighted sinks s of min(a_s + b_s, 2 a_s + c_s)``.

A zero initial weight (``b = inf``) has no ``W0 @ dz`` term: its ``omega`` term (and, at
a sink, SGD's ``a + b``) is left out.

Inputs that add (``merge="min"``) give ``r_in = min_p r_p``: the slowest-decaying update
dominates a sum.

Inputs that multiply (``merge="product"``). Write ``p_x`` for the exponent of a factor's
value at initialization: ``0`` for a factor of order one, ``inf`` for one that is exactly
zero (``zero_inputs``). The update of a product is::

    d(x y) = dx y0 + x0 dy + dx dy   =>   r_in = min(r_x + p_y, p_x + r_y, r_x + r_y)

and for ``k`` factors the min over every non-empty set ``S`` of factors that change,
``sum_{S} r + sum_{not S} p``. Sets whose unchanged factors include a zero one drop out,
so ``r_in`` is the min over the sets that contain every zero factor. With no zero factor
this is ``min_p r_p`` (all ``r >= 0``); with every factor zero it is ``sum_p r_p``, which is
what ``merge="sum"`` states. Assuming a factor of order one where it is in fact small
only lowers ``r_in``, so ``p = 0`` is the safe default.

A contraction (``contraction=True``, attention scores ``n^-a * x @ y^T`` summed over a
width-sized axis): each of the three terms of the product is a sum of ``n`` products
whose size grows like ``n^alignment``, as in a layer whose weight is ``y``::

    r = min(a + r_y - alpha,  a + r_x - omega,  a + r_x + r_y - u)

(``x0 @ dy``, ``dx @ y0``, ``dx @ dy``), leaving out a term whose unchanged factor is zero.
A single-input activation-only node (``r = r_in + a``) scales values and sums over nothing
that grows.

Every term is nondecreasing in every ``r``, ``r_in`` and ``g`` it contains, which is what
makes the hypograph relaxation of the LP exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.graph import OpGraph

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")

#: Names of the per-node numbers, in the order of the parameter vector.
NUMBER_FIELDS: tuple[str, ...] = ("a", "b", "alpha", "omega", "u")

VarKey = tuple[str, int]  # ("c", node), ("rin", node), ("r", node) or ("g", 0)
ParamKey = tuple[str, int]  # (field, node)


@dataclass(frozen=True)
class Term:
    """One argument of a node's ``min``: ``sum(vars) + sum(params)``."""

    variables: Mapping[VarKey, float]
    params: Mapping[ParamKey, float]
    text: str


def parse_optimizer(optimizer: str) -> Optimizer:
    """Validate an optimizer name."""
    name = optimizer.lower() if isinstance(optimizer, str) else optimizer
    if name not in OPTIMIZERS:
        raise MaxPError(f"unknown optimizer {optimizer!r}; expected 'adam' or 'sgd'")
    return name  # type: ignore[return-value]


def pack_numbers(graph: OpGraph, **overrides: object) -> np.ndarray:
    """The vector ``[a, b, alpha, omega, u]`` (each of length ``len(graph)``).

    Values come from the graph's nodes unless a keyword gives them, as a mapping from
    node name or a sequence in node order.
    """
    n = len(graph)
    out = np.empty(len(NUMBER_FIELDS) * n, dtype=np.float64)
    for f, field in enumerate(NUMBER_FIELDS):
        block = np.array([getattr(node, field) for node in graph.nodes], dtype=np.float64)
        given = overrides.pop(field, None)
        if isinstance(given, Mapping):
            for name, value in given.items():
                check = validate.init_exponent if field == "b" else validate.real_number
                block[graph.index(name)] = check(value, f"node {name!r}: {field}")
        elif given is not None:
            block = validate.real_array(given, f"{field} (in node order)")
            if block.shape != (n,):
                raise MaxPError(f"{field}: expected {n} values in node order, got shape {block.shape}")
        _check_range(graph, field, block)
        if field == "b":
            block = _without_zero_inits(graph, block)
        out[f * n : (f + 1) * n] = block
    if overrides:
        raise MaxPError(f"unknown number fields {sorted(overrides)}; expected {list(NUMBER_FIELDS)}")
    return out


def _without_zero_inits(graph: OpGraph, b: np.ndarray) -> np.ndarray:
    """``b`` with the ``inf`` of zero-initialized weights replaced by 0.

    No term contains the ``b`` of a zero initial weight; a finite placeholder keeps
    ``0 * inf`` out of the matrix products that turn numbers into right-hand sides.
    """
    zero_init = np.array([node.zero_init for node in graph.nodes])
    if not np.array_equal(b == np.inf, zero_init):
        k = int(np.argmax((b == np.inf) != zero_init))
        node = graph.nodes[k]
        raise MaxPError(
            f"node {node.name!r}: b = {float(b[k])!r} but the graph has b = {node.b!r}; whether a "
            "weight starts at zero (b = inf) is part of the graph, so build the graph with it"
        )
    return np.where(zero_init, 0.0, b)


def _check_range(graph: OpGraph, field: str, block: np.ndarray) -> None:
    """Raise naming the first node whose ``field`` is not finite or out of its range."""
    if field in ("a", "b"):
        bad = ~(np.abs(block) <= validate.EXPONENT_BOUND)
        if field == "b":
            bad &= ~((block == np.inf) & np.array([node.has_weight for node in graph.nodes]))
        valid = f"a finite exponent in [-{validate.EXPONENT_BOUND:g}, {validate.EXPONENT_BOUND:g}]"
    else:
        bad = ~((block >= 0.0) & (block <= 1.0))
        valid = "an alignment in [0, 1]"
    if bad.any():
        k = int(np.argmax(bad))
        raise MaxPError(
            f"node {graph.nodes[k].name!r}: {field} = {float(block[k])!r} is out of range; expected {valid}"
        )


def _learning_term(graph: OpGraph, i: int, optimizer: Optimizer) -> Term:
    """The part of a weighted node's terms that its learning rate enters: ``lr``."""
    if optimizer == "adam":
        return Term({("c", i): 1.0}, {("a", i): 1.0}, "a + c")
    if graph.is_sink(i):
        return Term({("c", i): 1.0}, {("a", i): 2.0}, "2a + c")
    return Term({("c", i): 1.0, ("g", 0): 1.0}, {("a", i): 2.0}, "g + 2a + c")


def _changing_sets(count: int, zero: set[int]) -> list[tuple[int, ...]]:
    """Non-empty sets of factor positions that change, holding every zero factor, smallest first."""
    sets = [
        tuple(k for k in range(count) if mask >> k & 1)
        for mask in range(1, 1 << count)
        if all(mask >> k & 1 for k in zero)
    ]
    return sorted(sets, key=lambda group: (len(group), group))


def input_sums(graph: OpGraph, i: int) -> tuple[tuple[int, ...], ...]:
    """Node ``i``'s ``r_in`` is the min over these tuples of the sum of their nodes' ``r``.

    Empty for a source and for a contraction, whose terms name their inputs directly.
    """
    node = graph.nodes[i]
    preds = graph.pred_indices(i)
    if not preds or node.contraction:
        return ()
    if len(preds) == 1 or node.merge == "min":
        return tuple((p,) for p in preds)
    if node.merge == "sum":
        return (preds,)
    zero = {k for k, name in enumerate(node.preds) if name in node.zero_inputs}
    return tuple(tuple(preds[k] for k in group) for group in _changing_sets(len(preds), zero))


def _contraction_terms(graph: OpGraph, i: int) -> tuple[Term, ...]:
    node = graph.nodes[i]
    preds = graph.pred_indices(i)
    slots = preds if len(preds) == 2 else preds * 2
    names = [graph.nodes[p].name for p in slots]
    zero = {k for k, name in enumerate(names) if name in node.zero_inputs}
    # Which factors change -> the alignment of that term: (x0 dy, dx y0, dx dy).
    fields = {(1,): "alpha", (0,): "omega", (0, 1): "u"}
    terms = []
    for group in _changing_sets(2, zero):
        variables: dict[VarKey, float] = {}
        for k in group:
            variables[("r", slots[k])] = variables.get(("r", slots[k]), 0.0) + 1.0
        field = fields[group]
        text = " + ".join(f"r[{names[k]}]" for k in group)
        terms.append(Term(variables, {("a", i): 1.0, (field, i): -1.0}, f"a + {text} - {field}"))
    return tuple(terms)


def node_terms(graph: OpGraph, i: int, optimizer: Optimizer) -> tuple[Term, ...]:
    """The arguments of the ``min`` that defines node ``i``'s residual ``r``."""
    node = graph.nodes[i]
    source = graph.is_source(i)
    if not node.has_weight:
        if node.contraction:
            return _contraction_terms(graph, i)
        if source:
            return (Term({}, {("a", i): 1.0}, "a"),)
        return (Term({("rin", i): 1.0}, {("a", i): 1.0}, "r_in + a"),)
    lr = _learning_term(graph, i, optimizer)
    if source:
        return (lr,)
    terms = [
        Term(lr.variables, {**lr.params, ("alpha", i): -1.0}, f"{lr.text} - alpha"),
        Term(
            {**lr.variables, ("rin", i): 1.0},
            {**lr.params, ("u", i): -1.0},
            f"{lr.text} + r_in - u",
        ),
    ]
    if not node.zero_init:
        init = {("a", i): 1.0, ("b", i): 1.0, ("omega", i): -1.0}
        terms.append(Term({("rin", i): 1.0}, init, "a + b + r_in - omega"))
    return tuple(terms)


def gradient_terms(graph: OpGraph) -> tuple[tuple[int, Term], ...]:
    """SGD's gradient scale ``g`` is the min of these terms, over weighted sinks."""
    terms: list[tuple[int, Term]] = []
    for s in graph.sinks:
        if graph.nodes[s].has_weight:
            if not graph.nodes[s].zero_init:
                terms.append((s, Term({}, {("a", s): 1.0, ("b", s): 1.0}, "a + b")))
            terms.append((s, Term({("c", s): 1.0}, {("a", s): 2.0}, "2a + c")))
    if terms and all(graph.nodes[s].zero_init for s, _ in terms):
        raise MaxPError(
            "SGD with every readout zero-initialized (b = inf): the gradient reaching earlier layers "
            "then scales with the readouts' own learning rate alone, so no c is largest and the LP has "
            f"no optimum; give one of {[graph.nodes[s].name for s, _ in terms]} a finite b, or use Adam"
        )
    if not terms:
        raise MaxPError(
            "SGD needs at least one weight-bearing sink (readout) to set the gradient "
            f"scale; the sinks {[graph.nodes[s].name for s in graph.sinks]} have no weight"
        )
    return tuple(terms)


class CompiledTerms:
    """Every term of a graph as arrays, for a fast exact recomputation of ``r``.

    A term's value is ``const + c_coef * c[node] + rin_coef * r_in + g_coef * g + sum of
    coef * r[pred]``, where ``const`` is a linear function of the packed numbers. Built
    once per graph.
    """

    def __init__(self, graph: OpGraph, optimizer: Optimizer) -> None:
        self.graph = graph
        self.optimizer = optimizer
        n = len(graph)
        node_terms_in_order = [(i, node_terms(graph, i, optimizer)) for i in graph.topological_order]
        grad = gradient_terms(graph) if optimizer == "sgd" else ()
        all_terms = [t for _, ts in node_terms_in_order for t in ts] + [t for _, t in grad]
        owners = [i for i, ts in node_terms_in_order for _ in ts] + [s for s, _ in grad]
        rows, cols, vals = [], [], []
        for k, t in enumerate(all_terms):
            for (f, j), coef in t.params.items():
                rows.append(k)
                cols.append(NUMBER_FIELDS.index(f) * n + j)
                vals.append(coef)
        self.const_matrix = sp.csr_matrix(
            (vals, (rows, cols)), shape=(len(all_terms), len(NUMBER_FIELDS) * n)
        )
        self.c_coef = [t.variables.get(("c", i), 0.0) for t, i in zip(all_terms, owners, strict=True)]
        self.rin_coef = [t.variables.get(("rin", i), 0.0) for t, i in zip(all_terms, owners, strict=True)]
        self.g_coef = [t.variables.get(("g", 0), 0.0) for t in all_terms]
        self.r_coef = [
            tuple((j, w) for (kind, j), w in t.variables.items() if kind == "r") for t in all_terms
        ]
        self.num_grad = len(grad)
        self.grad_owner = [s for s, _ in grad]
        # For each node in topological order: (node, the predecessor sets whose summed r give
        # r_in, its terms as (index into const, c, r_in, g and per-predecessor r coefficients)).
        self.plan: list[
            tuple[
                int,
                tuple[tuple[int, ...], ...],
                tuple[tuple[int, float, float, float, tuple[tuple[int, float], ...]], ...],
            ]
        ] = []
        k = 0
        for i, ts in node_terms_in_order:
            terms = tuple(
                (k + j, self.c_coef[k + j], self.rin_coef[k + j], self.g_coef[k + j], self.r_coef[k + j])
                for j in range(len(ts))
            )
            self.plan.append((i, input_sums(graph, i), terms))
            k += len(ts)
        self.grad_start = k


def exact_residuals(
    graph: OpGraph,
    optimizer: Optimizer,
    c: np.ndarray,
    numbers: np.ndarray,
    compiled: CompiledTerms | None = None,
) -> tuple[np.ndarray, float]:
    """Recompute every ``r`` as the exact ``min`` of its terms, given ``c`` per node.

    Args:
      graph: the op graph.
      optimizer: ``"adam"`` or ``"sgd"``.
      c: learning-rate exponents indexed by node (entries of activation-only nodes
        are ignored).
      numbers: the packed ``[a, b, alpha, omega, u]`` vector of :func:`pack_numbers`.
      compiled: the graph's :class:`CompiledTerms`, to skip compiling them again.

    Returns:
      ``(r, g)``: residuals indexed by node, and SGD's gradient scale (``nan`` for Adam).
    """
    ct = compiled if compiled is not None else CompiledTerms(graph, optimizer)
    const = (ct.const_matrix @ numbers).tolist()
    cs = np.asarray(c, dtype=np.float64).tolist()
    g = float("nan")
    if ct.num_grad:
        g = min(
            const[k] + ct.c_coef[k] * cs[ct.grad_owner[k - ct.grad_start]]
            for k in range(ct.grad_start, ct.grad_start + ct.num_grad)
        )
    r = [0.0] * len(graph)
    for i, sums, terms in ct.plan:
        r_in = min([sum([r[p] for p in group]) for group in sums]) if sums else 0.0
        ci = cs[i]
        r[i] = min(
            [
                const[k] + cc * ci + rc * r_in + (gc * g if gc else 0.0) + sum([w * r[j] for j, w in rs])
                for k, cc, rc, gc, rs in terms
            ]
        )
    return np.array(r), g
