"""An independent statement of DESIGN section 3, written for the tests only.

``exact_residuals`` evaluates every ``r = min(...)`` forward from given ``c``, straight
from the equations (it shares no code with :mod:`maxp_core.formulation`).
``milp_optimum`` solves the exact problem, each ``min`` an equality encoded with big-M
binaries, through ``scipy.optimize.milp`` (HiGHS), then fixes the chosen branches and
re-solves the resulting LP so the objective carries no big-M tolerance.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from maxp_core import OpGraph

#: Box on c in the MILP; instances whose LP answer leaves it are not comparable.
C_BOX = 10.0
#: Box on r (and on each summand of a summed input).
R_BOX = 40.0


def sinks(graph: OpGraph) -> list[str]:
    consumed = {p for n in graph.nodes for p in n.preds}
    return [n.name for n in graph.nodes if n.name not in consumed]


def changing_factors(factors: tuple[str, ...], zero: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Positions of the factors whose update may appear together in a product's update.

    ``d(prod x_k) = sum over non-empty S of prod_{S} dx_k * prod_{not S} x_k``; a term whose
    unchanged factors include one that is zero at initialization vanishes.
    """
    return [
        chosen
        for size in range(1, len(factors) + 1)
        for chosen in itertools.combinations(range(len(factors)), size)
        if all(factors[k] not in zero for k in range(len(factors)) if k not in chosen)
    ]


def contraction_terms(n) -> list[tuple[list[str], float]]:
    """``(names whose r add, constant)`` of each term of ``n^-a x @ y^T``, y the second factor."""
    factors = n.preds if len(n.preds) == 2 else n.preds * 2
    alignment = {(1,): n.alpha, (0,): n.omega, (0, 1): n.u}
    return [
        ([factors[k] for k in chosen], n.a - alignment[chosen])
        for chosen in changing_factors(factors, n.zero_inputs)
    ]


def input_groups(n) -> list[list[str]]:
    """The sets of predecessors whose summed r may be r_in."""
    if n.merge == "min" or len(n.preds) == 1:
        return [[p] for p in n.preds]
    if n.merge == "sum":
        return [list(n.preds)]
    return [[n.preds[k] for k in chosen] for chosen in changing_factors(n.preds, n.zero_inputs)]


def zero_init(n) -> bool:
    return n.has_weight and n.b == math.inf


def exact_residuals(
    graph: OpGraph, optimizer: str, c: dict[str, float]
) -> tuple[dict[str, float], float | None]:
    """``(r, g)`` from DESIGN's equations; ``g`` is ``None`` for Adam."""
    by_name = {n.name: n for n in graph.nodes}
    sink_names = set(sinks(graph))
    g = None
    if optimizer == "sgd":
        g = min(
            min(
                math.inf if zero_init(by_name[s]) else by_name[s].a + by_name[s].b,
                2 * by_name[s].a + c[s],
            )
            for s in sink_names
            if by_name[s].has_weight
        )
    r: dict[str, float] = {}
    pending = [n.name for n in graph.nodes]
    while pending:
        for name in list(pending):
            n = by_name[name]
            if any(p not in r for p in n.preds):
                continue
            pending.remove(name)
            if n.contraction:
                r[name] = min(sum(r[p] for p in names) + const for names, const in contraction_terms(n))
                continue
            r_in = None
            if n.preds:
                r_in = min(sum(r[p] for p in group) for group in input_groups(n))
            if not n.has_weight:
                r[name] = n.a if r_in is None else r_in + n.a
                continue
            if optimizer == "adam":
                lr = n.a + c[name]
            elif name in sink_names:
                lr = 2 * n.a + c[name]
            else:
                lr = g + 2 * n.a + c[name]
            if r_in is None:
                r[name] = lr
            else:
                omega_term = math.inf if zero_init(n) else n.a + n.b + r_in - n.omega
                r[name] = min(lr - n.alpha, lr + r_in - n.u, omega_term)
    return r, g


class _Model:
    """Columns with bounds, linear rows, and the binaries of each ``min``."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []
        self.min_groups: list[tuple[int, list[tuple[dict[int, float], float]], list[int]]] = []

    def var(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(int(integer))
        return len(self.lower) - 1

    def row(self, coefs: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((coefs, lo, hi))

    def equals_min(self, x: int, terms: list[tuple[dict[int, float], float]], big_m: float) -> None:
        """``x == min(terms)``; a term is ``(coefs, const)`` meaning ``coefs @ vars + const``."""
        if len(terms) == 1:
            coefs, const = terms[0]
            self.row(_sub({x: 1.0}, coefs), const, const)
            return
        zs = [self.var(0, 1, integer=True) for _ in terms]
        for (coefs, const), z in zip(terms, zs, strict=True):
            diff = _sub({x: 1.0}, coefs)  # x - term_vars
            self.row(diff, -np.inf, const)  # x <= term
            self.row({**diff, z: -big_m}, const - big_m, np.inf)  # x >= term - M (1 - z)
        self.row(dict.fromkeys(zs, 1.0), 1, 1)
        self.min_groups.append((x, terms, zs))

    def matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.zeros((len(self.rows), len(self.lower)))
        for k, (coefs, _, _) in enumerate(self.rows):
            for j, v in coefs.items():
                a[k, j] += v
        return a, np.array([r[1] for r in self.rows]), np.array([r[2] for r in self.rows])


def _sub(left: dict[int, float], right: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = defaultdict(float, left)
    for j, v in right.items():
        out[j] -= v
    return dict(out)


def milp_optimum(
    graph: OpGraph,
    optimizer: str,
    *,
    feature_learning: bool = False,
    c_fixed: dict[str, float] | None = None,
) -> float | None:
    """Smallest ``sum(c)`` of the exact problem, or ``None`` when it is infeasible."""
    c_fixed = c_fixed or {}
    m = _Model()
    by_name = {n.name: n for n in graph.nodes}
    sink_names = set(sinks(graph))
    fl_nodes = {p for s in sink_names for p in by_name[s].preds} if feature_learning else set()
    c = {}
    for n in graph.nodes:
        if n.has_weight:
            pin = c_fixed.get(n.name)
            c[n.name] = m.var(-C_BOX, C_BOX) if pin is None else m.var(pin, pin)
    r = {n.name: m.var(0.0, 0.0 if n.name in fl_nodes else R_BOX) for n in graph.nodes}
    weighted_sinks = [s for s in sink_names if by_name[s].has_weight]
    max_sum = R_BOX * max(len(n.preds) for n in graph.nodes)
    big_m = 2 * (max_sum + 4 * C_BOX + 10)
    g = None
    if optimizer == "sgd":
        g = m.var(-4 * C_BOX, 4 * C_BOX)
        terms = []
        for s in weighted_sinks:
            n = by_name[s]
            terms += [({c[s]: 1.0}, 2 * n.a)] + ([] if zero_init(n) else [({}, n.a + n.b)])
        m.equals_min(g, terms, big_m)
    for n in graph.nodes:
        if n.contraction:
            terms = []
            for names, const in contraction_terms(n):
                coefs: dict[int, float] = defaultdict(float)
                for p in names:
                    coefs[r[p]] += 1.0
                terms.append((dict(coefs), const))
            m.equals_min(r[n.name], terms, big_m)
            continue
        rin = None
        if n.preds:
            rin = m.var(-max_sum, max_sum)
            groups = [({r[p]: 1.0 for p in group}, 0.0) for group in input_groups(n)]
            m.equals_min(rin, groups, big_m)
        if not n.has_weight:
            m.equals_min(r[n.name], [({} if rin is None else {rin: 1.0}, n.a)], big_m)
            continue
        if optimizer == "adam":
            lr = ({c[n.name]: 1.0}, n.a)
        elif n.name in sink_names:
            lr = ({c[n.name]: 1.0}, 2 * n.a)
        else:
            lr = ({c[n.name]: 1.0, g: 1.0}, 2 * n.a)
        if rin is None:
            m.equals_min(r[n.name], [lr], big_m)
        else:
            terms = [(lr[0], lr[1] - n.alpha), ({**lr[0], rin: 1.0}, lr[1] - n.u)]
            if not zero_init(n):
                terms.append(({rin: 1.0}, n.a + n.b - n.omega))
            m.equals_min(r[n.name], terms, big_m)
    cost = np.zeros(len(m.lower))
    cost[list(c.values())] = 1.0
    a, lo, hi = m.matrix()

    def run(options: dict) -> Any:
        return milp(
            cost,
            constraints=LinearConstraint(a, lo, hi),
            integrality=np.array(m.integer),
            bounds=Bounds(np.array(m.lower), np.array(m.upper)),
            options={"mip_rel_gap": 1e-9, **options},
        )

    result = run({})
    if result.status == 4:  # HiGHS' MIP presolve fails on some big-M instances: solve without it
        result = run({"presolve": False})
    if result.status == 2:
        return None
    assert result.status == 0, result.message
    return _polish(m, cost, result.x)


def _polish(m: _Model, cost: np.ndarray, x: np.ndarray) -> float:
    """Fix each ``min`` to the branch the MILP chose and solve the LP that is left."""
    lower, upper = np.array(m.lower), np.array(m.upper)
    rows = [row for row in m.rows]
    for target, terms, zs in m.min_groups:
        chosen = int(np.argmax([x[z] for z in zs]))
        coefs, const = terms[chosen]
        rows.append((_sub({target: 1.0}, coefs), const, const))
        for k, z in enumerate(zs):
            lower[z] = upper[z] = 1.0 if k == chosen else 0.0
    a = np.zeros((len(rows), len(lower)))
    for k, (coefs, _, _) in enumerate(rows):
        for j, v in coefs.items():
            a[k, j] += v
    lo = np.array([r[1] for r in rows])
    hi = np.array([r[2] for r in rows])
    keep_le = np.isfinite(hi)
    keep_ge = np.isfinite(lo)
    a_ub = np.vstack([a[keep_le], -a[keep_ge]])
    b_ub = np.concatenate([hi[keep_le], -lo[keep_ge]])
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lower, upper, strict=True)), method="highs")
    assert res.status == 0, f"the branch the MILP chose is not feasible exactly: {res.message}"
    return float(res.fun)
