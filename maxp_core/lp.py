"""The maxP linear program: build once per graph, re-solve with new numbers.

The LP chooses a learning-rate exponent ``c`` for every weight-bearing node so that
``sum(c)`` is as small as possible (learning rates as large as possible) while every
node stays stable, ``r >= 0``. Each ``r = min(term, ...)`` of
:mod:`maxp_core.formulation` enters as its hypograph, ``r <= term`` for every term.
Every term is nondecreasing in the variables it shares with other nodes (``r_in`` and
SGD's ``g``), so any feasible point with slack can raise ``r`` to the ``min`` and stay
feasible: the relaxation has the same optimal ``sum(c)`` as the exact mixed-integer
form. Reported ``r`` are recomputed as the exact ``min`` from the chosen ``c``.

Feature learning (``r == 0`` before every sink) keeps the relaxation exact where each
such node can lower its own ``c`` until a term binds; a parameter-free one, or a source
whose ``c`` is pinned, has its single term made an equality (and so on up to the first
node with a free ``c``). One case stays out of reach: a *pinned* ``c`` on an interior node
before a sink, where the exact problem may need a slack the LP does not see (the node's
``r``, or SGD's gradient scale ``g``, below its min). There the chosen
``c`` is checked exactly and :meth:`StabilityLP.solve` raises :class:`InfeasibleError`
saying so, rather than return rates whose exact ``r`` breaks feature learning.

**Unique answer (the tie rule).** The optimal ``c`` is often a whole face of the polytope
(raising one layer's ``c`` can let a later layer's ``c`` fall by the same amount), and
different solvers land on different points of it. A second LP over the optimal face
(``sum(c) <= optimum``) picks one, by ``tie_rule``:

* ``"preset"`` (default): the point nearest a reference, ``min sum_k w_k |c_k - ref_k|``,
  each ``|.|`` an extra column ``t_k`` with rows ``t_k >= c_k - ref_k`` and
  ``t_k >= ref_k - c_k`` whose bounds carry ``ref`` (a new reference costs no rebuild).
  ``ref`` is :attr:`StabilityLP.reference_c`: given, or the ``c`` of the first solve with
  the graph's own numbers (every alignment set to ``reference_alignment`` when given),
  picked by ``"later"``. The adapters pass their preset as ``reference_alignment``, so
  overrides and re-solves with measured alignments stay as near the preset's ``c`` as
  the optimum allows. Where that point breaks feature learning exactly (a pinned ``c``
  before a sink, above: the face holds points the exact problem does not), the
  ``"later"`` point is returned instead when it does not.
* ``"later"``: ``min sum_k w_k c_k``: on a tie, earlier nodes take the larger ``c`` and
  later nodes the larger learning rate.

``w_k = sqrt(p_k)``, where ``p_k`` is the k-th prime and ``k`` the node's position among
weighted nodes in topological order. The constraint matrix, anchored rows included, is
integral, so every edge of the second LP's optimal set has a rational direction along
which its objective is constant; the square roots of distinct primes are linearly
independent over the rationals, so no ``c`` (``"later"``) or no ``t`` (``"preset"``) moves
along it, and as ``t_k = |c_k - ref_k|`` at the optimum, neither does ``c``. So the answer
is unique, and HiGHS and CLARABEL agree on it to solver precision.

Why ``"preset"`` is the default (``python -m benchmarks.tie_rule`` and
``python -m benchmarks.tie_rule_outcomes``): in a GPT block whose ``v`` starts at zero and
whose ``o`` measures ``(alpha, omega, u) = (0, 0.5, 1)`` the face is ``c_v + c_o = 2,
c_v in [1, 2]``. ``"later"`` takes ``c_v = 2, c_o = 0``: a coordinate check (widths 64-512)
shows the updates of ``v`` and ``o`` vanishing with width (slopes -1.10, -1.14), and 200 steps
at width 256 on characters end 0.10-0.12 higher in held-out loss at ``lr_prefactor``
0.03-0.1; ``"preset"`` keeps the preset's ``c_v = c_o = 1`` (slopes -0.08, -0.06). With
alignments measured in training the two rules train alike, ``"later"`` a little ahead on
that GPT (held-out loss lower in 4 of 6 seed pairs over ``lr_prefactor`` 0.01-0.1, by
0.007-0.026, within 0.0004 in the other 2): dynamic maxP on the digits MLP
(widths 64-512, rates 0.01-1, 10 seeds) ends lower with ``"preset"`` in 110 of 196 paired
runs in PyTorch and 106 of 193 in JAX (median loss ratio 1.005 and 1.004, sign test p 0.10
and 0.19), and on the 2-block character GPT (widths 64 and 128, 2 seeds) in 10 of 12 and 6
of 12; at each rule's best rate no digits width separates them over 10 seeds (the GPT in
PyTorch at width 128: ``"preset"`` lower on both seeds, by 0.004). On 223 feasible random instances
re-solved with random alignments the rules differ in 89 (``|dc|`` up to 0.63); ``"later"``
lands farther from the preset's ``c`` in 72 and never nearer. A re-solve takes about 5%
longer.

**Speed.** The constraint matrix depends on the graph only; the numbers ``a, b,
alpha, omega, u`` move right-hand sides, pinned ``c`` move bounds. ``solver="highs"``
keeps one HiGHS model per stage and only changes its bounds, so each stage
warm-starts from its own last basis. ``solver="clarabel"`` and
``solver="cvxpy-highs"`` solve the same problem through cvxpy, built once with
parameters (DPP). A new reference of ``"preset"`` moves the anchored rows' bounds only.

Examples:
  >>> from maxp_core.graph import chain
  >>> lp = StabilityLP(chain(4, alignment="full"), optimizer="adam")
  >>> sol = lp.solve()
  >>> [round(v, 6) for v in sol.c.values()]
  [0.5, 1.0, 1.0, 0.5]
  >>> sol = lp.solve(alpha=[1.0, 0.7, 0.7, 0.7], u=[1.0, 0.7, 0.7, 0.7])
  >>> [round(v, 6) for v in sol.c.values()]
  [0.5, 0.7, 0.7, 0.2]
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from maxp_core import validate
from maxp_core.base_width import BaseWidth, width_ratios
from maxp_core.errors import InfeasibleError, MaxPError, SolverError
from maxp_core.formulation import (
    NUMBER_FIELDS,
    CompiledTerms,
    Optimizer,
    exact_residuals,
    gradient_terms,
    input_sums,
    node_terms,
    pack_numbers,
    parse_optimizer,
)
from maxp_core.graph import OpGraph
from maxp_core.roles import check_init_stability

SOLVERS: tuple[str, ...] = ("highs", "clarabel", "cvxpy-highs")
"""The solvers :class:`StabilityLP` takes: ``"highs"`` (the default), ``"clarabel"``, ``"cvxpy-highs"``."""
#: Rules that pick one point of the optimal face (see the module docstring).
TIE_RULES: tuple[str, ...] = ("preset", "later")
#: The rule used when none is given, by :class:`StabilityLP` and both adapters.
DEFAULT_TIE_RULE = "preset"

#: Slack allowed on ``sum(c) <= optimum`` in the second stage, relative to ``1 + |optimum|``.
FACE_TOLERANCE = 1e-9
#: Largest violation of a constraint, or of ``r == 0`` under feature learning, accepted.
FEASIBILITY_TOLERANCE = 1e-6

_CLARABEL_SETTINGS = {
    "tol_gap_abs": 1e-11,
    "tol_gap_rel": 1e-11,
    "tol_feas": 1e-11,
    "tol_ktratio": 1e-9,
    "max_iter": 500,
}


@dataclass(frozen=True)
class Solution:
    """The answer of one solve.

    Attributes:
      status: ``"optimal"``.
      objective: ``sum(c)`` over weighted nodes.
      c: learning-rate exponent per weighted node, in node order.
      r: exact residual per node, in node order.
      solver: which solver produced it (``"none"`` when the LP was skipped).
      g: SGD's gradient scale (``None`` for Adam).
      note: why the LP was skipped, if it was.
    """

    status: str
    objective: float
    c: dict[str, float]
    r: dict[str, float]
    solver: str
    g: float | None = None
    note: str | None = None

    def learning_rates(
        self, lr_prefactor: float, widths: Mapping[str, float], base_width: BaseWidth = None
    ) -> dict[str, float]:
        """Each weighted node's learning rate ``lr_prefactor * (n / n_base)^-c``.

        Args:
          lr_prefactor: the rate every layer runs at when its width equals its base width.
          widths: each weighted node's width ``n``.
          base_width: see :func:`maxp_core.base_width.width_ratios` (``None``: ``n^-c``).

        Examples:
          >>> from maxp_core import StabilityLP, chain
          >>> sol = StabilityLP(chain(3, alignment="full"), "adam").solve()
          >>> sol.learning_rates(3e-3, dict.fromkeys(sol.c, 256), base_width=256)
          {'layer0': 0.003, 'layer1': 0.003, 'layer2': 0.003}
          >>> sol.learning_rates(3e-3, dict.fromkeys(sol.c, 1024), base_width=256)["layer1"]
          0.00075
        """
        missing = [name for name in self.c if name not in widths]
        if missing:
            raise MaxPError(f"learning_rates needs the width of every weighted node; missing {missing}")
        lr_prefactor = validate.positive_number(lr_prefactor, "lr_prefactor")
        ratios = width_ratios({name: widths[name] for name in self.c}, base_width)
        return {name: lr_prefactor * ratios[name] ** -c for name, c in self.c.items()}

    def to_json(self) -> dict[str, Any]:
        """The dict printed by ``python -m maxp_core solve``."""
        out: dict[str, Any] = {
            "status": self.status,
            "objective": self.objective,
            "c": self.c,
            "r": self.r,
            "solver": self.solver,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class _Structure:
    """Columns, rows and bounds of the LP for one graph; numbers enter later."""

    c_col: dict[int, int]
    r_col: np.ndarray
    g_col: int | None
    num_cols: int
    a_matrix: sp.csc_matrix  # rows x cols
    rhs_matrix: sp.csr_matrix  # rows x len(numbers): rhs = rhs_matrix @ numbers
    row_labels: list[str]
    tie_weights: np.ndarray  # per column: the second stage's cost
    lower: np.ndarray
    upper: np.ndarray
    fixed_cols: np.ndarray  # columns whose lower and upper bounds are equal at every solve
    bound_labels: dict[tuple[int, str], str] = field(default_factory=dict)


def _build_structure(
    graph: OpGraph, optimizer: Optimizer, feature_learning: bool, pinned: Sequence[int]
) -> _Structure:
    n = len(graph)
    weighted = graph.weighted
    c_col = {node: k for k, node in enumerate(weighted)}
    r_col = np.arange(len(weighted), len(weighted) + n)
    next_col = len(weighted) + n
    sums = [input_sums(graph, i) for i in range(n)]
    rin_col: dict[int, int] = {}
    for i in range(n):
        if len(sums[i]) > 1:
            rin_col[i] = next_col
            next_col += 1
    g_col = None
    if optimizer == "sgd":
        g_col, next_col = next_col, next_col + 1

    def r_in(i: int) -> dict[int, float]:
        if i in rin_col:
            return {rin_col[i]: 1.0}
        return _summed(r_col, sums[i][0])

    def expand(variables: Mapping[tuple[str, int], float], i: int) -> dict[int, float]:
        cols: dict[int, float] = {}
        for (kind, j), coef in variables.items():
            if kind == "c":
                parts = {c_col[j]: 1.0}
            elif kind == "rin":
                parts = r_in(j)
            elif kind == "r":
                parts = {int(r_col[j]): 1.0}
            else:
                assert g_col is not None, "a g term in an Adam LP"
                parts = {g_col: 1.0}
            for col, w in parts.items():
                cols[col] = cols.get(col, 0.0) + coef * w
        return cols

    rows_a: list[dict[int, float]] = []
    rows_p: list[dict[int, float]] = []
    labels: list[str] = []

    def add_row(
        lhs_var: int, term_vars: dict[int, float], params: Mapping[tuple[str, int], float], label: str
    ) -> None:
        row = {lhs_var: 1.0}
        for col, coef in term_vars.items():
            row[col] = row.get(col, 0.0) - coef
        rows_a.append(row)
        rows_p.append({NUMBER_FIELDS.index(f) * n + j: coef for (f, j), coef in params.items()})
        labels.append(label)

    for i, node in enumerate(graph.nodes):
        for term in node_terms(graph, i, optimizer):
            add_row(int(r_col[i]), expand(term.variables, i), term.params, f"{node.name}: r <= {term.text}")
        if i in rin_col:
            for group in sums[i]:
                text = " + ".join(f"r[{graph.nodes[p].name}]" for p in group)
                add_row(rin_col[i], _summed(r_col, group), {}, f"{node.name}: r_in <= {text}")
    if g_col is not None:
        for s, term in gradient_terms(graph):
            add_row(g_col, expand(term.variables, s), term.params, f"{graph.nodes[s].name}: g <= {term.text}")
    if feature_learning:
        for i in _exact_under_feature_learning(graph, optimizer, pinned):
            (term,) = node_terms(graph, i, optimizer)
            row = {col: coef for col, coef in expand(term.variables, i).items()}
            row[int(r_col[i])] = row.get(int(r_col[i]), 0.0) - 1.0
            rows_a.append(row)
            rows_p.append({NUMBER_FIELDS.index(f) * n + j: -coef for (f, j), coef in term.params.items()})
            labels.append(f"{graph.nodes[i].name}: r >= {term.text} (feature learning)")

    a_matrix = _sparse(rows_a, next_col).tocsc()
    rhs_matrix = _sparse(rows_p, len(NUMBER_FIELDS) * n).tocsr()

    lower = np.full(next_col, -math.inf)
    upper = np.full(next_col, math.inf)
    bound_labels: dict[tuple[int, str], str] = {}
    for i, node in enumerate(graph.nodes):
        lower[r_col[i]] = 0.0
        bound_labels[(int(r_col[i]), "lower")] = f"{node.name}: r >= 0 (stability)"
    if feature_learning:
        for i in graph.feature_learning_nodes:
            upper[r_col[i]] = 0.0
            bound_labels[(int(r_col[i]), "upper")] = f"{graph.nodes[i].name}: r == 0 (feature learning)"
    for i in pinned:
        bound_labels[(c_col[i], "lower")] = bound_labels[(c_col[i], "upper")] = (
            f"{graph.nodes[i].name}: c pinned"
        )
    fixed = [c_col[i] for i in pinned]
    if feature_learning:
        fixed += [int(r_col[i]) for i in graph.feature_learning_nodes]
    tie_weights = np.zeros(next_col)
    order = [i for i in graph.topological_order if graph.nodes[i].has_weight]
    for i, p in zip(order, _primes(len(order)), strict=True):
        tie_weights[c_col[i]] = math.sqrt(p)
    return _Structure(
        c_col,
        r_col,
        g_col,
        next_col,
        a_matrix,
        rhs_matrix,
        labels,
        tie_weights,
        lower,
        upper,
        np.array(sorted(set(fixed)), dtype=np.int64),
        bound_labels,
    )


def _exact_under_feature_learning(graph: OpGraph, optimizer: Optimizer, pinned: Sequence[int]) -> list[int]:
    """Nodes without a free ``c`` whose ``r`` must equal their single term under feature learning.

    A node with a free ``c`` makes its hypograph row tight by lowering ``c``; a predecessor
    of a sink that is parameter-free, or whose ``c`` is pinned (a source: its one term is
    its learning rate), has none, so the LP could leave slack under its ``r == 0`` and
    report a point where the exact ``r`` is positive. Its term is made an equality, and so
    is that of each such node it reads alone, up to the first node with a free ``c``.
    Both hold in every exact solution, so the optimum does not change.
    """
    fixed_c = set(pinned)
    exact: list[int] = []
    for i in graph.feature_learning_nodes:
        node = i
        while (not graph.nodes[node].has_weight or node in fixed_c) and node not in exact:
            terms = node_terms(graph, node, optimizer)
            if len(terms) != 1:
                break
            exact.append(node)
            preds = graph.pred_indices(node)
            if len(preds) != 1:
                break
            node = preds[0]
    return exact


def _summed(r_col: np.ndarray, group: Sequence[int]) -> dict[int, float]:
    """The columns of ``sum(r[p] for p in group)``."""
    cols: dict[int, float] = {}
    for p in group:
        cols[int(r_col[p])] = cols.get(int(r_col[p]), 0.0) + 1.0
    return cols


def _primes(count: int) -> list[int]:
    """The first ``count`` primes."""
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def _sparse(rows: list[dict[int, float]], num_cols: int) -> sp.coo_matrix:
    data, ri, ci = [], [], []
    for k, row in enumerate(rows):
        for col, value in row.items():
            if value != 0.0:
                ri.append(k)
                ci.append(col)
                data.append(value)
    return sp.coo_matrix((data, (ri, ci)), shape=(len(rows), num_cols))


class StabilityLP:
    """The maxP LP of one op graph, built once and re-solved with new numbers.

    Args:
      graph: the op graph (its nodes' numbers are the defaults of :meth:`solve`).
      optimizer: ``"adam"`` or ``"sgd"``.
      feature_learning: require ``r == 0`` for every predecessor of a sink.
      pinned: names of nodes whose ``c`` is fixed; values come from ``c_fixed``
        here or in :meth:`solve`.
      c_fixed: default pinned values, by node name (its keys are pinned too).
      solver: ``"highs"`` (default, a kept HiGHS model), ``"clarabel"`` or
        ``"cvxpy-highs"`` (both through cvxpy).
      tie_rule: how one ``c`` is picked where several are optimal: ``"preset"`` (default,
        the optimal ``c`` nearest the reference, :attr:`reference_c`) or ``"later"`` (later
        layers take the larger learning rates). See the module docstring.
      reference_c: the reference of ``tie_rule="preset"``, by node name, for every weighted
        node that is not pinned. Default: the ``c`` of the first solve with the graph's own
        numbers (every alignment set to ``reference_alignment`` when given), picked by the
        ``"later"`` rule.
      reference_alignment: ``(alpha, omega, u)``, the preset whose solution anchors the
        ``"preset"`` rule when the graph's numbers carry overrides (the adapters pass their
        preset, so an override moves ``c`` from the preset's answer, not from its own).
        Without it or ``reference_c``, the first solve anchors at its own answer: a graph
        carrying measured alignments, solved once, gets the ``"later"`` point under either rule.
    """

    def __init__(
        self,
        graph: OpGraph,
        optimizer: str = "adam",
        *,
        feature_learning: bool = False,
        pinned: Sequence[str] = (),
        c_fixed: Mapping[str, float] | None = None,
        solver: str = "highs",
        tie_rule: str = DEFAULT_TIE_RULE,
        reference_c: Mapping[str, float] | None = None,
        reference_alignment: Sequence[float] | None = None,
    ) -> None:
        if not isinstance(graph, OpGraph):
            raise MaxPError(
                f"StabilityLP needs an OpGraph (maxp_core.OpGraph or maxp_core.chain), "
                f"got {type(graph).__name__} {graph!r}"[:300]
            )
        self.graph = graph
        self.optimizer: Optimizer = parse_optimizer(optimizer)
        self.feature_learning = validate.boolean(feature_learning, "feature_learning")
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise MaxPError(f"unknown solver {solver!r}; expected one of {list(SOLVERS)}")
        self.solver = solver
        if c_fixed is not None and not isinstance(c_fixed, Mapping):
            raise MaxPError(f"c_fixed must be a mapping {{node name: c}}, got {c_fixed!r}")
        self.c_fixed: dict[str, float] = _pin_values(c_fixed or {})
        if isinstance(pinned, str) or not all(isinstance(name, str) for name in pinned):
            raise MaxPError(f"pinned must be a sequence of node names, got {pinned!r}")
        names = list(dict.fromkeys([*pinned, *self.c_fixed]))
        for name in names:
            if not graph.node(name).has_weight:
                raise MaxPError(f"node {name!r} has no weight, so its c cannot be pinned")
        self.pinned: tuple[str, ...] = tuple(names)
        self._pinned_idx = [graph.index(name) for name in names]
        self._skip_note = _skip_reason(graph)
        self._structure: _Structure | None = None
        if self._skip_note is None:
            if self.optimizer == "sgd":
                gradient_terms(graph)  # fail early without a weighted sink
            self._structure = _build_structure(graph, self.optimizer, self.feature_learning, self._pinned_idx)
            self._pin_cols = np.array([self._structure.c_col[i] for i in self._pinned_idx], dtype=np.int64)
            self._c_cols = np.array([self._structure.c_col[i] for i in graph.weighted], dtype=np.int64)
            self._weighted_idx = np.array(graph.weighted, dtype=np.int64)
        self._backend: _Backend | None = None
        self._compiled: CompiledTerms | None = None
        self.tie_rule: str = validate.choice(tie_rule, "tie_rule", TIE_RULES)
        self._reference: dict[str, float] | None = None
        self._reference_vector: np.ndarray | None = None  # weighted order; NaN for a pinned node left out
        # The pinned c a default reference was taken under; None for a given reference.
        self._reference_pins: np.ndarray | None = None
        self._reference_numbers = pack_numbers(graph)
        if reference_alignment is not None:
            triple = validate.alignment_triple(reference_alignment, "reference_alignment")
            fields = ("alpha", "omega", "u")
            per_node = {key: [value] * len(graph) for key, value in zip(fields, triple, strict=True)}
            self._reference_numbers = pack_numbers(graph, **per_node)
        if reference_c is not None:
            self.reference_c = reference_c

    @property
    def reference_c(self) -> dict[str, float] | None:
        """The anchor of ``tie_rule="preset"`` by node name; ``None`` until the first solve
        sets it (or with ``tie_rule="later"``).

        Assigning a new mapping re-anchors the next solves without rebuilding the LP;
        assigning ``None`` goes back to the default (the first solve with the graph's own
        numbers, taken again at the next solve).
        """
        return None if self._reference is None else dict(self._reference)

    @reference_c.setter
    def reference_c(self, reference_c: Mapping[str, float] | None) -> None:
        self._reference_pins = None
        if reference_c is None:
            self._reference, self._reference_vector = None, None
            return
        if self.tie_rule != "preset":
            raise MaxPError(
                f"reference_c is the anchor of tie_rule='preset'; this LP was built with "
                f"tie_rule={self.tie_rule!r}, which takes no reference"
            )
        if not isinstance(reference_c, Mapping):
            raise MaxPError(f"reference_c must be a mapping {{node name: c}}, got {reference_c!r}"[:300])
        reference: dict[str, float] = {}
        for name, value in reference_c.items():
            if not isinstance(name, str):
                raise MaxPError(f"reference_c keys must be node names, got {name!r}")
            if not self.graph.node(name).has_weight:
                raise MaxPError(f"reference_c names {name!r}, which has no weight and so no c")
            reference[name] = validate.exponent(value, f"reference_c[{name!r}]")
        weighted_names = [self.graph.nodes[i].name for i in self.graph.weighted]
        missing = [name for name in weighted_names if name not in reference and name not in self.pinned]
        if missing:
            raise MaxPError(
                f"reference_c has no value for weighted nodes {missing}; it needs every weighted "
                "node that is not pinned"
            )
        self._reference = {name: reference[name] for name in weighted_names if name in reference}
        self._reference_vector = np.array([reference.get(name, math.nan) for name in weighted_names])

    # --- public --------------------------------------------------------------------

    def solve(
        self,
        *,
        c_fixed: Mapping[str, float] | None = None,
        **numbers: Mapping[str, float] | Sequence[float] | np.ndarray,
    ) -> Solution:
        """Solve with the graph's numbers, some replaced by keywords.

        Args:
          c_fixed: values of pinned ``c`` (only for nodes pinned at construction).
          **numbers: any of ``a, b, alpha, omega, u``, each a mapping from node name or
            a sequence in node order.

        Returns:
          The unique :class:`Solution`.

        Raises:
          InfeasibleError: no ``c`` keeps every node stable; names the constraints.
          SolverError: the solver failed.
        """
        packed = pack_numbers(self.graph, **numbers)
        if ("a" in numbers or "b" in numbers) and self.graph.check_stability:
            self._check_init_stability(packed)
        if c_fixed is not None and not isinstance(c_fixed, Mapping):
            raise MaxPError(f"c_fixed must be a mapping {{node name: c}}, got {c_fixed!r}")
        pins = dict(self.c_fixed)
        for name, value in _pin_values(c_fixed or {}).items():
            if name not in self.pinned:
                raise MaxPError(f"c_fixed names {name!r}, which was not pinned when the LP was built")
            pins[name] = value
        missing = [name for name in self.pinned if name not in pins]
        if missing:
            raise MaxPError(f"pinned nodes {missing} have no c_fixed value")
        pin_values = np.array([pins[name] for name in self.pinned], dtype=np.float64)
        return self.solve_packed(packed, pin_values)

    def solve_packed(self, numbers: np.ndarray, pin_values: np.ndarray | None = None) -> Solution:
        """Hot path: solve with the packed ``[a, b, alpha, omega, u]`` vector.

        ``pin_values`` holds the pinned ``c`` in the order of :attr:`pinned`.
        """
        try:
            numbers = np.asarray(numbers, dtype=np.float64)
            pin_values = np.zeros(0) if pin_values is None else np.asarray(pin_values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise MaxPError(f"solve_packed takes arrays of numbers: {err}") from None
        expected = len(NUMBER_FIELDS) * len(self.graph)
        if numbers.shape != (expected,):
            raise MaxPError(
                f"solve_packed: the numbers vector has shape {numbers.shape}; this graph of "
                f"{len(self.graph)} nodes packs {', '.join(NUMBER_FIELDS)} into ({expected},) "
                "(see maxp_core.formulation.pack_numbers)"
            )
        if pin_values.shape != (len(self.pinned),):
            raise MaxPError(
                f"solve_packed: pin_values has shape {pin_values.shape}; this LP pins "
                f"{list(self.pinned)}, one value each"
            )
        if self._structure is None:
            return self._skipped_solution(numbers, pin_values)
        st = self._structure
        rhs = st.rhs_matrix @ numbers
        lower, upper = st.lower.copy(), st.upper.copy()
        lower[self._pin_cols] = pin_values
        upper[self._pin_cols] = pin_values
        backend = self._get_backend()
        anchor = self._anchor(backend, lower, upper) if self.tie_rule == "preset" else None
        c = self._solve_c(backend, rhs, lower, upper, anchor, pin_values)
        if anchor is not None and self.feature_learning and self._pinned_idx:
            # The optimal face of the LP may hold points whose exact r breaks feature learning
            # (slack the LP does not see under a pinned c); the point nearest the reference may
            # be one while the "later" rule's is not: it is an optimal answer, so take it.
            r, _ = exact_residuals(self.graph, self.optimizer, c, numbers, self._get_compiled())
            if self._off_feature_learning(r):
                c = self._solve_c(backend, rhs, lower, upper, None, pin_values)
        return self._finish(c, numbers, backend.name)

    def _solve_c(
        self,
        backend: _Backend,
        rhs: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        anchor: np.ndarray | None,
        pin_values: np.ndarray,
    ) -> np.ndarray:
        """Both stages; ``c`` indexed by node."""
        status, x = backend.solve(rhs, lower, upper, anchor)
        if status == "infeasible":
            raise InfeasibleError(self._explain_infeasible(rhs, lower, upper))
        if status != "optimal" or x is None:
            raise SolverError(f"{self.solver}: the solver returned status {status!r}")
        c = np.zeros(len(self.graph))
        c[self._weighted_idx] = x[self._c_cols]
        c[self._pinned_idx] = pin_values
        return c

    def _anchor(self, backend: _Backend, lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
        """The reference ``c`` in weighted order for the ``"preset"`` rule, taken now if unset.

        ``None`` (today's answer by the ``"later"`` rule) while the graph's own numbers have no
        solution under the current pins.
        """
        pins = lower[self._pin_cols]
        if self._reference_pins is not None and not np.array_equal(pins, self._reference_pins):
            self._reference_vector = None  # a default reference follows the pins it was taken under
        if self._reference_vector is None:
            assert self._structure is not None
            own = self._reference_numbers
            status, x = backend.solve(self._structure.rhs_matrix @ own, lower, upper, None)
            if status != "optimal" or x is None:
                return None
            names = [self.graph.nodes[i].name for i in self.graph.weighted]
            values = x[self._c_cols]
            self._reference = dict(zip(names, values.tolist(), strict=True))
            self._reference_vector = values.copy()
            self._reference_pins = pins.copy()
        # A pinned node's c is fixed, so its reference only adds a constant; one left out of
        # an explicit reference is anchored to its pin.
        c_lower = lower[self._c_cols]
        return np.where(np.isnan(self._reference_vector), c_lower, self._reference_vector)

    def _check_init_stability(self, packed: np.ndarray) -> None:
        """The (a, b) given to :meth:`solve` must be stable at init, as the graph's own are."""
        if len(self.graph.weighted) < 2:
            return
        n = len(self.graph)
        a, b = packed[:n], packed[n : 2 * n]
        for i in self.graph.weighted:
            name = self.graph.nodes[i].name
            if self.graph.nodes[i].zero_init:
                continue
            check_init_stability(name, self.graph.role(name), float(a[i]), float(b[i]))

    @property
    def problem(self) -> Any:
        """The cvxpy problem of the first stage (minimise ``sum(c)``), built on demand."""
        if self._structure is None:
            raise MaxPError(f"there is no LP to show: {self._skip_note}")
        return _CvxpyBackend(self._structure, "HIGHS").stage1

    # --- internals -----------------------------------------------------------------

    def _get_backend(self) -> _Backend:
        if self._backend is None:
            assert self._structure is not None
            if self.solver == "highs":
                self._backend = _HighsBackend(self._structure)
            else:
                name = "CLARABEL" if self.solver == "clarabel" else "HIGHS"
                self._backend = _CvxpyBackend(self._structure, name)
        return self._backend

    def _get_compiled(self) -> CompiledTerms:
        if self._compiled is None:
            self._compiled = CompiledTerms(self.graph, self.optimizer)
        return self._compiled

    def _off_feature_learning(self, r: np.ndarray) -> list[int]:
        """The predecessors of a sink whose exact ``r`` is not 0."""
        return [i for i in self.graph.feature_learning_nodes if abs(r[i]) > FEASIBILITY_TOLERANCE]

    def _finish(self, c: np.ndarray, numbers: np.ndarray, solver: str, note: str | None = None) -> Solution:
        r, g = exact_residuals(self.graph, self.optimizer, c, numbers, self._get_compiled())
        names = self.graph.names
        if note is None and not (np.all(r >= -FEASIBILITY_TOLERANCE) and np.all(np.isfinite(c))):
            unstable = [(names[i], r[i]) for i in range(len(names)) if not r[i] >= -FEASIBILITY_TOLERANCE]
            raise SolverError(
                f"{solver} returned c that leave nodes unstable: "
                f"{', '.join(f'{k} r={v:.6g}' for k, v in unstable[:5])}; "
                "the problem is badly conditioned for it, try solver='highs'"
            )
        if self.feature_learning and note is None:
            off = [(names[i], r[i]) for i in self._off_feature_learning(r)]
            if off:
                raise InfeasibleError(
                    "feature learning needs r == 0 on every predecessor of a sink, but at the "
                    f"optimum r is {', '.join(f'{k}={v:.6g}' for k, v in off)} "
                    "(a node with a pinned c or without weight cannot lower its r to 0)"
                )
        weighted = self.graph.weighted
        c_list, r_list = c.tolist(), r.tolist()
        return Solution(
            status="optimal",
            objective=float(sum(c_list[i] for i in weighted)),
            c={names[i]: c_list[i] for i in weighted},
            r=dict(zip(names, r_list, strict=True)),
            solver=solver,
            g=None if self.optimizer == "adam" else float(g),
            note=note,
        )

    def _skipped_solution(self, numbers: np.ndarray, pin_values: np.ndarray) -> Solution:
        c = np.zeros(len(self.graph))
        c[self._pinned_idx] = pin_values
        solution = self._finish(c, numbers, "none", note=self._skip_note)
        unstable = {name: r for name, r in solution.r.items() if r < -FEASIBILITY_TOLERANCE}
        if unstable:
            listed = ", ".join(f"{name} r={r:.6g}" for name, r in unstable.items())
            raise InfeasibleError(
                f"{self._skip_note}; with that c the graph is unstable ({listed}): pin c of the "
                "weighted node (c_fixed) high enough that every r >= 0, or change its a"
            )
        return solution

    def _explain_infeasible(self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> str:
        assert self._structure is not None
        violated = _elastic_violations(self._structure, rhs, lower, upper)
        if not violated:
            return "the LP is infeasible (no single constraint could be named)"
        parts = [f"{label} (short by {amount:.4g})" for label, amount in violated]
        nodes = sorted({label.split(":")[0] for label, _ in violated})
        text = (
            f"no learning rates keep every node stable; nodes involved: {nodes}; "
            f"the least total violation breaks: {'; '.join(parts)}"
        )
        if self.feature_learning:
            before = [self.graph.nodes[i].name for i in self.graph.feature_learning_nodes]
            text += f"; feature learning requires r == 0 on {before}"
        return text


def _pin_values(c_fixed: Mapping[Any, Any]) -> dict[str, float]:
    """Pinned ``c`` by node name, each a bounded finite exponent."""
    pins: dict[str, float] = {}
    for name, value in c_fixed.items():
        if not isinstance(name, str):
            raise MaxPError(f"c_fixed keys must be node names, got {name!r}")
        pins[name] = validate.exponent(value, f"node {name!r}: pinned c")
    return pins


def _skip_reason(graph: OpGraph) -> str | None:
    count = len(graph.weighted)
    if count == 0:
        return "the graph has no weight-bearing node, so there is no c to choose"
    if count == 1:
        name = graph.nodes[graph.weighted[0]].name
        return (
            f"{name!r} is the only weight-bearing node: nothing in it scales with width "
            "relative to another layer, so it keeps c = 0 (the base learning rate) unless pinned"
        )
    return None


def _elastic_violations(
    st: _Structure, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> list[tuple[str, float]]:
    """Name the constraints that must give way: minimise total slack over all of them."""
    from scipy.optimize import linprog

    a = st.a_matrix.tocsr()
    rows = [a]
    bounds_rhs = [rhs]
    labels = list(st.row_labels)
    eye = sp.identity(st.num_cols, format="csr")
    for k in range(st.num_cols):
        if math.isfinite(lower[k]):
            rows.append(-eye[k])
            bounds_rhs.append(np.array([-lower[k]]))
            labels.append(st.bound_labels.get((k, "lower"), f"column {k} lower bound"))
        if math.isfinite(upper[k]):
            rows.append(eye[k])
            bounds_rhs.append(np.array([upper[k]]))
            labels.append(st.bound_labels.get((k, "upper"), f"column {k} upper bound"))
    stacked = sp.vstack(rows).tocsr()
    m = stacked.shape[0]
    a_ub = sp.hstack([stacked, -sp.identity(m)]).tocsr()
    cost = np.concatenate([np.zeros(st.num_cols), np.ones(m)])
    bounds = [(None, None)] * st.num_cols + [(0, None)] * m
    result = linprog(cost, A_ub=a_ub, b_ub=np.concatenate(bounds_rhs), bounds=bounds, method="highs")
    if result.status != 0:
        return []
    slack = result.x[st.num_cols :]
    return [(labels[k], float(slack[k])) for k in np.flatnonzero(slack > 1e-9)]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence the process's stdout (file descriptor 1) while HiGHS prints its banner.

    HiGHS 1.16 prints a banner from C++ when a solver object is created, before any option
    can turn its output off; it would corrupt the JSON the command line prints.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 to redirect
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Backend:
    name: str

    def solve(
        self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray, anchor: np.ndarray | None
    ) -> tuple[str, np.ndarray | None]:
        """Both stages; returns a status and, when optimal, the column values.

        ``anchor`` is the reference ``c`` (weighted order) of the ``"preset"`` rule; ``None``
        picks by the ``"later"`` rule.
        """
        raise NotImplementedError


def _face_bound(optimum: float) -> float:
    return optimum + FACE_TOLERANCE * (1.0 + abs(optimum))


def _c_columns(st: _Structure) -> np.ndarray:
    """The ``c`` columns in weighted (node) order."""
    return np.array(sorted(st.c_col.values()), dtype=np.int64)


def _anchored_block(st: _Structure) -> sp.csr_matrix:
    """Rows ``c_k - t_k <= ref_k`` and ``-c_k - t_k <= -ref_k`` over columns ``[x, t]``.

    One ``t_k`` per weighted node, after the LP's own columns; at the optimum of
    ``min sum_k w_k t_k`` each ``t_k = |c_k - ref_k|``. ``ref`` lives in the right-hand
    sides only.
    """
    c_cols = _c_columns(st)
    m = len(c_cols)
    k = np.arange(m)
    select = sp.csr_matrix((np.ones(m), (k, c_cols)), shape=(m, st.num_cols))
    minus_t = -sp.identity(m, format="csr")
    return sp.vstack([sp.hstack([select, minus_t]), sp.hstack([-select, minus_t])]).tocsr()


class _KeptModel:
    """One HiGHS model kept between solves: only bounds change, so it warm-starts.

    The answer is read off a second copy of the model, given the optimal basis and factorised
    afresh: the solving copy's own values come from a factorisation updated along its path of
    solves, which differs in the last bits between a long run and a resumed one. Read this
    way they depend on the basis alone (a resumed run repeats the uninterrupted one exactly),
    and the solving copy keeps what makes its next warm start fast.
    """

    def __init__(self, highspy: Any, a: sp.spmatrix, cost: np.ndarray, num_bound_cols: int) -> None:
        self._highspy = highspy
        inf = highspy.kHighsInf
        a = sp.csc_matrix(a)
        lp = highspy.HighsLp()
        lp.num_col_ = a.shape[1]
        lp.num_row_ = a.shape[0]
        lp.col_cost_ = np.asarray(cost, dtype=np.float64)
        lp.col_lower_ = np.full(a.shape[1], -inf)
        lp.col_upper_ = np.full(a.shape[1], inf)
        lp.row_lower_ = np.full(a.shape[0], -inf)
        lp.row_upper_ = np.full(a.shape[0], inf)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data.astype(np.float64)
        self.h, self.reader = self._highs(lp), self._highs(lp)
        self._answer = self.reader  # the copy whose values the last solve is read from
        self.num_rows = a.shape[0]
        self.rows = np.arange(self.num_rows, dtype=np.int32)
        self.row_lower = np.full(self.num_rows, -inf)
        self.cols = np.arange(num_bound_cols, dtype=np.int32)
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    def _highs(self, lp: Any) -> Any:
        with _quiet_stdout():
            h = self._highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        h.setOptionValue("dual_feasibility_tolerance", 1e-9)
        h.passModel(lp)
        return h

    def change_cols_bounds(self, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        for h in (self.h, self.reader):
            h.changeColsBounds(len(cols), cols, lower, upper)

    def run(self, col_lower: np.ndarray, col_upper: np.ndarray, row_upper: np.ndarray) -> str:
        """Solve with new bounds on the first ``num_bound_cols`` columns and new row upper bounds."""
        h = self.h
        # Column bounds move only when pinned values do; changing them costs the warm start.
        if self._bounds is None or not (
            np.array_equal(col_lower, self._bounds[0]) and np.array_equal(col_upper, self._bounds[1])
        ):
            self.change_cols_bounds(self.cols, col_lower, col_upper)
            self._bounds = (col_lower, col_upper)
        h.changeRowsBounds(self.num_rows, self.rows, self.row_lower, row_upper)  # type: ignore[attr-defined]
        h.run()
        status = h.getModelStatus()
        ms = self._highspy.HighsModelStatus
        if status == ms.kOptimal:
            reader = self.reader
            reader.changeRowsBounds(self.num_rows, self.rows, self.row_lower, row_upper)
            reader.setBasis(h.getBasis())
            reader.run()
            # Should the fresh factorisation not confirm the optimum, the solver's own values stand.
            self._answer = reader if reader.getModelStatus() == ms.kOptimal else h
            return "optimal"
        if status in (ms.kInfeasible, ms.kUnboundedOrInfeasible):
            return "infeasible"
        return str(h.modelStatusToString(status))

    def objective(self) -> float:
        """The optimum of the last solve."""
        return float(self._answer.getInfo().objective_function_value)

    def solution(self) -> np.ndarray:
        """The columns' values at the optimum of the last solve."""
        return np.asarray(self._answer.getSolution().col_value)


class _HighsBackend(_Backend):
    """Kept HiGHS models, one per stage, each warm-started from its own last basis.

    Stage 1 minimises ``sum(c)``; stage 2 carries the extra face row ``sum(c) <= optimum``
    and the tie rule: ``"later"`` as costs on ``c``, ``"preset"`` as costs on the extra
    columns ``t`` with the anchored rows (the reference moves their bounds only). Keeping
    the stages apart means none starts from another's basis: when the numbers drift slowly
    between re-solves, as alignments do in training, each starts next to its new optimum.
    The ``"preset"`` model is built at its first use.
    """

    name = "highs"

    def __init__(self, st: _Structure) -> None:
        import highspy

        self._highspy = highspy
        self._inf = highspy.kHighsInf
        self._st = st
        c_cols = _c_columns(st)
        sum_cost = np.zeros(st.num_cols)
        sum_cost[c_cols] = 1.0
        self._face_row = sp.csr_matrix(
            (np.ones(len(c_cols)), (np.zeros(len(c_cols)), c_cols)), shape=(1, st.num_cols)
        )
        self.num_rows = st.a_matrix.shape[0]
        self.num_weighted = len(c_cols)
        self.stage1 = _KeptModel(highspy, st.a_matrix, sum_cost, st.num_cols)
        self.later = _KeptModel(
            highspy, sp.vstack([st.a_matrix, self._face_row]), st.tie_weights, st.num_cols
        )
        self._anchored: _KeptModel | None = None
        self.rhs_later = np.empty(self.num_rows + 1)
        self.rhs_anchored = np.empty(self.num_rows + 1 + 2 * self.num_weighted)

    def _anchored_model(self) -> _KeptModel:
        if self._anchored is None:
            st, m = self._st, self.num_weighted
            a = sp.vstack(
                [
                    sp.hstack(
                        [sp.vstack([st.a_matrix, self._face_row]), sp.csr_matrix((self.num_rows + 1, m))]
                    ),
                    _anchored_block(st),
                ]
            )
            cost = np.concatenate([np.zeros(st.num_cols), st.tie_weights[_c_columns(st)]])
            model = _KeptModel(self._highspy, a, cost, st.num_cols)
            t_cols = np.arange(st.num_cols, st.num_cols + m, dtype=np.int32)
            model.change_cols_bounds(t_cols, np.zeros(m), np.full(m, self._inf))
            self._anchored = model
        return self._anchored

    def solve(
        self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray, anchor: np.ndarray | None
    ) -> tuple[str, np.ndarray | None]:
        inf = self._inf
        col_lower = np.where(np.isfinite(lower), lower, -inf)
        col_upper = np.where(np.isfinite(upper), upper, inf)
        status = self.stage1.run(col_lower, col_upper, rhs)
        if status != "optimal":
            return status, None
        face = _face_bound(self.stage1.objective())
        if anchor is None:
            model, row_upper = self.later, self.rhs_later
        else:
            model, row_upper = self._anchored_model(), self.rhs_anchored
            m = self.num_weighted
            row_upper[self.num_rows + 1 : self.num_rows + 1 + m] = anchor
            row_upper[self.num_rows + 1 + m :] = -anchor
        row_upper[: self.num_rows] = rhs
        row_upper[self.num_rows] = face
        status = model.run(col_lower, col_upper, row_upper)
        if status != "optimal":
            return f"tie-break stage: {status}", None
        return "optimal", model.solution()[: self._st.num_cols]


class _CvxpyBackend(_Backend):
    """The same stages through cvxpy, each built once with parameters (DPP).

    Pinned ``c`` and feature learning's ``r == 0`` enter as equalities, not as two
    bounds: an interior-point solver such as CLARABEL loses accuracy on a pair of
    inequalities with no interior between them. The ``"preset"`` rule's reference is a
    parameter of the anchored rows.
    """

    def __init__(self, st: _Structure, solver: str) -> None:
        import cvxpy as cp

        self._cp = cp
        self.solver = solver
        self.name = "clarabel" if solver == "CLARABEL" else "cvxpy-highs"
        c_cols = _c_columns(st)
        x = cp.Variable(st.num_cols, name="x")
        self.x = x
        self.rhs = cp.Parameter(st.a_matrix.shape[0], name="rhs")
        free = np.ones(st.num_cols, dtype=bool)
        free[st.fixed_cols] = False
        self.fixed_idx = st.fixed_cols
        self.lower_idx = np.flatnonzero(np.isfinite(st.lower) & free)
        self.upper_idx = np.flatnonzero(np.isfinite(st.upper) & free)
        self.lower = cp.Parameter(len(self.lower_idx), name="lower")
        self.upper = cp.Parameter(len(self.upper_idx), name="upper")
        self.fixed = cp.Parameter(len(self.fixed_idx), name="fixed")
        constraints = [st.a_matrix @ x <= self.rhs]
        if len(self.fixed_idx):
            constraints.append(x[self.fixed_idx] == self.fixed)
        if len(self.lower_idx):
            constraints.append(x[self.lower_idx] >= self.lower)
        if len(self.upper_idx):
            constraints.append(x[self.upper_idx] <= self.upper)
        c = x[c_cols]
        self.stage1 = cp.Problem(cp.Minimize(cp.sum(c)), constraints)
        self.face_bound = cp.Parameter(name="face_bound")
        on_face = [*constraints, cp.sum(c) <= self.face_bound]
        weights = st.tie_weights[c_cols]
        self.later = cp.Problem(cp.Minimize(weights @ c), on_face)
        t = cp.Variable(len(c_cols), name="t")
        self.reference = cp.Parameter(len(c_cols), name="reference")
        self.anchored = cp.Problem(
            cp.Minimize(weights @ t), [*on_face, t >= c - self.reference, t >= self.reference - c]
        )

    def _run(self, problem: Any) -> str:
        cp = self._cp
        kwargs = dict(_CLARABEL_SETTINGS) if self.solver == "CLARABEL" else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "solution may be inaccurate"
                with _quiet_stdout():
                    problem.solve(solver=self.solver, **kwargs)
        except cp.error.SolverError as exc:
            return f"solver error: {exc}"
        if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return "optimal"
        if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return "infeasible"
        return str(problem.status)

    def solve(
        self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray, anchor: np.ndarray | None
    ) -> tuple[str, np.ndarray | None]:
        self.rhs.value = rhs
        self.lower.value = lower[self.lower_idx]
        self.upper.value = upper[self.upper_idx]
        self.fixed.value = lower[self.fixed_idx]
        status = self._run(self.stage1)
        if status != "optimal":
            return status, None
        self.face_bound.value = _face_bound(float(self.stage1.value))
        if anchor is None:
            problem = self.later
        else:
            problem = self.anchored
            self.reference.value = anchor
        status = self._run(problem)
        if status != "optimal":
            return f"tie-break stage: {status}", None
        return "optimal", np.asarray(self.x.value)
