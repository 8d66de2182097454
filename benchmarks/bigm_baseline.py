"""The published formulation, written here as a baseline: a big-M MILP through PuLP + CBC.

Every ``x = min(t_1, ..., t_k)`` becomes ``x <= t_j`` and ``x >= t_j - M (1 - z_j)`` with
binaries ``sum(z) = 1`` and ``M = 10``; the model is rebuilt for every solve. It is exact
only while every ``t_j - x`` stays below ``M``; deep graphs break that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pulp

from maxp_core import OpGraph
from maxp_core.formulation import NUMBER_FIELDS, Term, gradient_terms, node_terms, pack_numbers

BIG_M = 10.0


@dataclass(frozen=True)
class BaselineResult:
    status: str
    objective: float | None


def solve_bigm(graph: OpGraph, optimizer: str, numbers: np.ndarray, big_m: float = BIG_M) -> BaselineResult:
    """Build and solve the big-M MILP of ``graph`` with packed ``numbers``."""
    n = len(graph)
    prob = pulp.LpProblem("maxp_bigm", pulp.LpMinimize)
    c = {i: pulp.LpVariable(f"c{i}") for i in graph.weighted}
    r = {i: pulp.LpVariable(f"r{i}", lowBound=0) for i in range(n)}
    g = pulp.LpVariable("g") if optimizer == "sgd" else None
    counter = iter(range(10**9))

    def param(t: Term) -> float:
        return sum(coef * numbers[NUMBER_FIELDS.index(f) * n + j] for (f, j), coef in t.params.items())

    def expression(t: Term, r_in: pulp.LpAffineExpression | None) -> pulp.LpAffineExpression:
        expr = pulp.LpAffineExpression(constant=param(t))
        for (kind, j), coef in t.variables.items():
            expr += coef * (c[j] if kind == "c" else g if kind == "g" else r_in)
        return expr

    def equals_min(x: pulp.LpVariable, terms: list[pulp.LpAffineExpression]) -> None:
        if len(terms) == 1:
            prob.addConstraint(x == terms[0])
            return
        zs = [pulp.LpVariable(f"z{next(counter)}", cat="Binary") for _ in terms]
        for t, z in zip(terms, zs, strict=True):
            prob.addConstraint(x <= t)
            prob.addConstraint(x >= t - big_m * (1 - z))
        prob.addConstraint(pulp.lpSum(zs) == 1)

    prob += pulp.lpSum(c.values())
    if g is not None:
        equals_min(g, [expression(t, None) for _, t in gradient_terms(graph)])
    for i in graph.topological_order:
        preds = graph.pred_indices(i)
        r_in = None
        if preds:
            r_in = pulp.LpVariable(f"rin{i}")
            if graph.nodes[i].merge == "sum":
                prob.addConstraint(r_in == pulp.lpSum(r[p] for p in preds))
            else:
                equals_min(r_in, [pulp.LpAffineExpression(r[p]) for p in preds])
        equals_min(r[i], [expression(t, r_in) for t in node_terms(graph, i, optimizer)])  # type: ignore[arg-type]
    prob.solve(pulp.PULP_CBC_CMD(msg=False))
    status = pulp.LpStatus[prob.status].lower()
    objective = pulp.value(prob.objective) if status == "optimal" else None
    return BaselineResult(status, None if objective is None else float(objective))


def numbers_for(graph: OpGraph, **overrides: object) -> np.ndarray:
    """The packed numbers of ``graph`` with some fields replaced."""
    return pack_numbers(graph, **overrides)
