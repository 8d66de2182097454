"""The maxP linear program: build once per graph, re-solve with new numbers.

The LP chooses a learning-rate exponent ``c`` for every weight-bearing node so that
``sum(c)`` is as small as possible (learning rates as large as possible) while every
node stays stable, ``r >= 0``. Each ``r = min(term, ...)`` of
:mod:`maxp_core.formulation` enters as its hypograph, ``r <= term`` for every term.
Every term is nondecreasing in the variables it shares with other nodes (``r_in`` and
SGD's ``g``), so any feasible point with slack can raise ``r`` to the ``min`` and stay
feasible: the relaxation has the same optimal ``sum(c)`` as the exact mixed-integer
form. Reported ``r`` are recomputed as the exact ``min`` from the chosen ``c``.

**Unique answer.** The optimal ``c`` is often a whole face of the polytope (raising one
layer's ``c`` can let a later layer's ``c`` fall by the same amount), and different
solvers land on different points of it. The rule here is a second LP over the
optimal face (``sum(c) <= optimum``) that minimises ``sum_k sqrt(p_k) * c_k``, where
``p_k`` is the k-th prime and ``k`` the node's position among weighted nodes in
topological order. The constraint matrix is integral, so every edge of the optimal
face has a rational direction ``d`` with ``sum(d) = 0``; the square roots of distinct
primes are linearly independent over the rationals, so ``sum_k sqrt(p_k) d_k != 0``
along every edge and the second LP has exactly one solution. In words: on a tie,
earlier nodes take the larger ``c`` and later nodes the larger learning rate. HiGHS
and CLARABEL agree on it to solver precision.

**Speed.** The constraint matrix depends on the graph only; the numbers ``a, b,
alpha, omega, u`` move right-hand sides, pinned ``c`` move bounds. ``solver="highs"``
keeps one HiGHS model per stage and only changes its bounds, so each stage
warm-starts from its own last basis. ``solver="clarabel"`` and
``solver="cvxpy-highs"`` solve the same problem through cvxpy, built once with
parameters (DPP).

Example:
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
        pin_values = np.zeros(0) if pin_values is None else np.asarray(pin_values, dtype=np.float64)
        if self._structure is None:
            return self._skipped_solution(numbers, pin_values)
        st = self._structure
        rhs = st.rhs_matrix @ numbers
        lower, upper = st.lower.copy(), st.upper.copy()
        lower[self._pin_cols] = pin_values
        upper[self._pin_cols] = pin_values
        backend = self._get_backend()
        status, x = backend.solve(rhs, lower, upper)
        if status == "infeasible":
            raise InfeasibleError(self._explain_infeasible(rhs, lower, upper))
        if status != "optimal" or x is None:
            raise SolverError(f"{self.solver}: the solver returned status {status!r}")
        c = np.zeros(len(self.graph))
        c[self._weighted_idx] = x[self._c_cols]
        c[self._pinned_idx] = pin_values
        return self._finish(c, numbers, backend.name)

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

    def _finish(self, c: np.ndarray, numbers: np.ndarray, solver: str, note: str | None = None) -> Solution:
        if self._compiled is None:
            self._compiled = CompiledTerms(self.graph, self.optimizer)
        r, g = exact_residuals(self.graph, self.optimizer, c, numbers, self._compiled)
        names = self.graph.names
        if note is None and not (np.all(r >= -FEASIBILITY_TOLERANCE) and np.all(np.isfinite(c))):
            unstable = [(names[i], r[i]) for i in range(len(names)) if not r[i] >= -FEASIBILITY_TOLERANCE]
            raise SolverError(
                f"{solver} returned c that leave nodes unstable: "
                f"{', '.join(f'{k} r={v:.6g}' for k, v in unstable[:5])}; "
                "the problem is badly conditioned for it, try solver='highs'"
            )
        if self.feature_learning and note is None:
            off = [
                (names[i], r[i])
                for i in self.graph.feature_learning_nodes
                if abs(r[i]) > FEASIBILITY_TOLERANCE
            ]
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
        return (
            f"no learning rates keep every node stable; nodes involved: {nodes}; "
            f"the least total violation breaks: {'; '.join(parts)}"
        )


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

    def solve(self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[str, np.ndarray | None]:
        """Both stages; returns a status and, when optimal, the column values."""
        raise NotImplementedError


def _face_bound(optimum: float) -> float:
    return optimum + FACE_TOLERANCE * (1.0 + abs(optimum))


class _HighsBackend(_Backend):
    """Two kept HiGHS models, one per stage, each warm-started from its own last basis.

    Stage 1 minimises ``sum(c)``; stage 2 carries the extra face row
    ``sum(c) <= optimum`` and the tie-breaking costs. Keeping them apart means neither
    stage starts from the other's basis: when the numbers drift slowly between
    re-solves, as alignments do in training, both start next to their new optimum.
    """

    name = "highs"

    def __init__(self, st: _Structure) -> None:
        import highspy

        self._highspy = highspy
        self._inf = highspy.kHighsInf
        num_cols = st.num_cols
        c_cols = np.array(sorted(st.c_col.values()), dtype=np.int32)
        sum_cost = np.zeros(num_cols)
        sum_cost[c_cols] = 1.0
        face_row = sp.csr_matrix((np.ones(len(c_cols)), (np.zeros(len(c_cols)), c_cols)), shape=(1, num_cols))
        self.cols = np.arange(num_cols, dtype=np.int32)
        self.stage1 = self._model(st.a_matrix.tocsc(), sum_cost)
        self.stage2 = self._model(sp.vstack([st.a_matrix, face_row]).tocsc(), st.tie_weights)
        self.num_rows = st.a_matrix.shape[0]
        self.rows1 = np.arange(self.num_rows, dtype=np.int32)
        self.rows2 = np.arange(self.num_rows + 1, dtype=np.int32)
        self.row_lower1 = np.full(self.num_rows, -self._inf)
        self.row_lower2 = np.full(self.num_rows + 1, -self._inf)
        self.rhs2 = np.empty(self.num_rows + 1)
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    def _model(self, a: sp.csc_matrix, cost: np.ndarray) -> Any:
        highspy, inf = self._highspy, self._inf
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
        with _quiet_stdout():
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        h.setOptionValue("dual_feasibility_tolerance", 1e-9)
        h.passModel(lp)
        return h

    def _status(self, h: Any) -> str:
        status = h.getModelStatus()
        ms = self._highspy.HighsModelStatus
        if status == ms.kOptimal:
            return "optimal"
        if status in (ms.kInfeasible, ms.kUnboundedOrInfeasible):
            return "infeasible"
        return str(h.modelStatusToString(status))

    def solve(self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[str, np.ndarray | None]:
        inf = self._inf
        col_lower = np.where(np.isfinite(lower), lower, -inf)
        col_upper = np.where(np.isfinite(upper), upper, inf)
        h1, h2 = self.stage1, self.stage2
        # Column bounds move only when pinned values do; changing them costs the warm start.
        new_bounds = self._bounds is None or not (
            np.array_equal(col_lower, self._bounds[0]) and np.array_equal(col_upper, self._bounds[1])
        )
        if new_bounds:
            for h in (h1, h2):
                h.changeColsBounds(len(self.cols), self.cols, col_lower, col_upper)
            self._bounds = (col_lower, col_upper)
        h1.changeRowsBounds(self.num_rows, self.rows1, self.row_lower1, rhs)  # type: ignore[attr-defined]
        h1.run()
        status = self._status(h1)
        if status != "optimal":
            return status, None
        self.rhs2[:-1] = rhs
        self.rhs2[-1] = _face_bound(float(h1.getInfo().objective_function_value))
        h2.changeRowsBounds(self.num_rows + 1, self.rows2, self.row_lower2, self.rhs2)  # type: ignore[attr-defined]
        h2.run()
        status = self._status(h2)
        if status != "optimal":
            return f"tie-break stage: {status}", None
        return "optimal", np.asarray(h2.getSolution().col_value)


class _CvxpyBackend(_Backend):
    """The same two stages through cvxpy, each built once with parameters (DPP).

    Pinned ``c`` and feature learning's ``r == 0`` enter as equalities, not as two
    bounds: an interior-point solver such as CLARABEL loses accuracy on a pair of
    inequalities with no interior between them.
    """

    def __init__(self, st: _Structure, solver: str) -> None:
        import cvxpy as cp

        self._cp = cp
        self.solver = solver
        self.name = "clarabel" if solver == "CLARABEL" else "cvxpy-highs"
        c_cols = np.array(sorted(st.c_col.values()))
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
        self.stage2 = cp.Problem(
            cp.Minimize(st.tie_weights[c_cols] @ c),
            [*constraints, cp.sum(c) <= self.face_bound],
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

    def solve(self, rhs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[str, np.ndarray | None]:
        self.rhs.value = rhs
        self.lower.value = lower[self.lower_idx]
        self.upper.value = upper[self.upper_idx]
        self.fixed.value = lower[self.fixed_idx]
        status = self._run(self.stage1)
        if status != "optimal":
            return status, None
        self.face_bound.value = _face_bound(float(self.stage1.value))
        status = self._run(self.stage2)
        if status != "optimal":
            return f"tie-break stage: {status}", None
        return "optimal", np.asarray(self.x.value)
