"""The stability terms of DESIGN section 3, as data both the LP and the exact check use.

Every node's residual is ``r = min(term_1, term_2, ...)``. A term is a linear
expression in the decision variables (``c`` of a weighted node, the node's input
residual ``r_in``, the SGD gradient scale ``g``) plus a linear expression in the
numbers (``a, b, alpha, omega, u`` of some node). Keeping the terms as data means the
hypograph rows of the LP (``r <= term``) and the exact forward recomputation
(``r = min(terms)``) come from one definition.

Adam (``lr = a + c``)::

    source (embedding)   r = lr
    other weighted node  r = min(lr - alpha, lr + r_in - u, (a + b) + r_in - omega)
    activation-only      r = r_in + a          (source: r = a)

SGD replaces ``lr`` by ``g + 2a + c`` (``2a + c`` at a sink), where
``g = min over weighted sinks s of min(a_s + b_s, 2 a_s + c_s)``.

``r_in`` is the min of the predecessors' ``r`` (``merge="min"``, added updates) or
their sum (``merge="sum"``, multiplied updates).
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

VarKey = tuple[str, int]  # ("c", node), ("rin", node) or ("g", 0)
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
                block[graph.index(name)] = validate.real_number(value, f"node {name!r}: {field}")
        elif given is not None:
            block = validate.real_array(given, f"{field} (in node order)")
            if block.shape != (n,):
                raise MaxPError(f"{field}: expected {n} values in node order, got shape {block.shape}")
        _check_range(graph, field, block)
        out[f * n : (f + 1) * n] = block
    if overrides:
        raise MaxPError(f"unknown number fields {sorted(overrides)}; expected {list(NUMBER_FIELDS)}")
    return out


def _check_range(graph: OpGraph, field: str, block: np.ndarray) -> None:
    """Raise naming the first node whose ``field`` is not finite or out of its range."""
    if field in ("a", "b"):
        bad = ~(np.abs(block) <= validate.EXPONENT_BOUND)
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


def node_terms(graph: OpGraph, i: int, optimizer: Optimizer) -> tuple[Term, ...]:
    """The arguments of the ``min`` that defines node ``i``'s residual ``r``."""
    node = graph.nodes[i]
    source = graph.is_source(i)
    if not node.has_weight:
        if source:
            return (Term({}, {("a", i): 1.0}, "a"),)
        return (Term({("rin", i): 1.0}, {("a", i): 1.0}, "r_in + a"),)
    lr = _learning_term(graph, i, optimizer)
    if source:
        return (lr,)
    return (
        Term(lr.variables, {**lr.params, ("alpha", i): -1.0}, f"{lr.text} - alpha"),
        Term(
            {**lr.variables, ("rin", i): 1.0},
            {**lr.params, ("u", i): -1.0},
            f"{lr.text} + r_in - u",
        ),
        Term({("rin", i): 1.0}, {("a", i): 1.0, ("b", i): 1.0, ("omega", i): -1.0}, "a + b + r_in - omega"),
    )


def gradient_terms(graph: OpGraph) -> tuple[tuple[int, Term], ...]:
    """SGD's gradient scale ``g`` is the min of these terms, over weighted sinks."""
    terms: list[tuple[int, Term]] = []
    for s in graph.sinks:
        if graph.nodes[s].has_weight:
            terms.append((s, Term({}, {("a", s): 1.0, ("b", s): 1.0}, "a + b")))
            terms.append((s, Term({("c", s): 1.0}, {("a", s): 2.0}, "2a + c")))
    if not terms:
        raise MaxPError(
            "SGD needs at least one weight-bearing sink (readout) to set the gradient "
            f"scale; the sinks {[graph.nodes[s].name for s in graph.sinks]} have no weight"
        )
    return tuple(terms)


class CompiledTerms:
    """Every term of a graph as arrays, for a fast exact recomputation of ``r``.

    A term's value is ``const + c_coef * c[node] + rin_coef * r_in + g_coef * g``, where
    ``const`` is a linear function of the packed numbers. Built once per graph.
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
        self.num_grad = len(grad)
        self.grad_owner = [s for s, _ in grad]
        # For each node in topological order: (node, preds, merge is min, its terms as
        # (index into const, c coefficient, r_in coefficient, g coefficient)).
        self.plan: list[tuple[int, tuple[int, ...], bool, tuple[tuple[int, float, float, float], ...]]] = []
        k = 0
        for i, ts in node_terms_in_order:
            terms = tuple(
                (k + j, self.c_coef[k + j], self.rin_coef[k + j], self.g_coef[k + j]) for j in range(len(ts))
            )
            self.plan.append((i, graph.pred_indices(i), graph.nodes[i].merge == "min", terms))
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
    for i, preds, merge_min, terms in ct.plan:
        r_in = 0.0
        if preds:
            r_in = min([r[p] for p in preds]) if merge_min else sum([r[p] for p in preds])
        ci = cs[i]
        r[i] = min([const[k] + cc * ci + rc * r_in + (gc * g if gc else 0.0) for k, cc, rc, gc in terms])
    return np.array(r), g
