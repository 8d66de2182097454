"""The LP of a :class:`~maxp_torch.Parametrization` and its re-solves from measured alignments.

At each re-solve the measured alignments go through :class:`maxp_core.Resolver` (the same
rules, smoothing, failure handling and tie rule as ``maxp_jax``), and the parametrization's
``c``, alignments and counters are updated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from maxp_core import MaxPError, OpGraph, Resolver, StabilityLP, unused_alignments, warn_user
from maxp_core.alignment import MODES
from maxp_core.scores import scores_slowdown

if TYPE_CHECKING:
    from maxp_torch.parametrization import Parametrization


def lp_solver(solver: Any) -> str:
    """The :mod:`maxp_core` solver to use: ``solver`` if named, else HiGHS; a published-style
    PuLP solver object is not used, with a warning."""
    if solver is not None and not isinstance(solver, str):
        warn_user(
            f"solver={type(solver).__name__}(...) is not used: this backend solves an exact LP with "
            "HiGHS, not the published MILP with PuLP; pass solver='highs' or 'clarabel' to choose"
        )
        solver = None
    return solver or "highs"


def check_norm_mode(norm_mode: Any) -> str:
    """``"rms"`` or ``"spectral"`` (:data:`maxp_core.alignment.MODES`)."""
    if not isinstance(norm_mode, str) or norm_mode not in MODES:
        raise MaxPError(f"unknown norm_mode {norm_mode!r}; expected one of {list(MODES)}")
    return norm_mode


class Resolving:
    """Solves the parametrization's LP at construction and again at every scheduled re-solve."""

    def __init__(
        self,
        param: Parametrization,
        graph: OpGraph,
        *,
        pins: dict[str, float],
        feature_learning: bool,
        solver: str,
        tie_rule: str,
        preset: tuple[float, float, float],
    ) -> None:
        self.param = param
        self.lp = StabilityLP(
            graph,
            param.optimizer_type,
            feature_learning=feature_learning,
            c_fixed=pins,
            solver=solver,
            tie_rule=tie_rule,
            reference_alignment=preset,
        )
        row = param._layers.row
        self._resolver = Resolver(
            graph.names,
            self.solve,
            alignment_ema=param.alignment_ema,
            c_ema=param.c_ema,
            overrides={row[k]: triple for k, triple in param.overrides.items()},
            unused=unused_alignments(graph, graph.names),
            measure_only=param.measure_only,
        )

    def preset_exponents(self) -> np.ndarray:
        """``c`` per weighted layer at the graph's own (preset or overridden) alignments."""
        solution = self.lp.solve()
        return np.array([solution.c[name] for name in self.param._layers.weighted_names()])

    def warn_on_scores_slowdown(self) -> None:
        """Warn when attention scores at ``a < 1`` slow the layers upstream (:mod:`maxp_core.scores`)."""
        layers = self.param._layers
        found = scores_slowdown(
            self.lp, dict(zip(layers.weighted_names(), self.param.c.tolist(), strict=True))
        )
        if found is not None:
            k = layers.names.index(found.layer)
            ratio = None if layers.base_width is None else layers.ratio(k)
            warn_user(found.message(layers.width(k), self.param.lr_prefactor, ratio))

    def solve(self, alignment: np.ndarray) -> np.ndarray:
        """``c`` per weighted layer at the given alignments (one row per graph node)."""
        solution = self.lp.solve(alpha=alignment[:, 0], omega=alignment[:, 1], u=alignment[:, 2])
        return np.array([solution.c[name] for name in self.param._layers.weighted_names()])

    def resolve(self, x: Any) -> None:
        """Measure, re-solve, and update the parametrization's ``c``, alignments and counters."""
        param = self.param
        measured, nonfinite = param._measure(x)
        start = time.perf_counter()
        outcome = self._resolver(
            measured=measured,
            previous=param.alignment,
            c_prev=param.c,
            nonfinite=nonfinite,
            failures=param.failures,
        )
        param.solve_seconds = time.perf_counter() - start
        param.c, param.alignment = outcome.c, outcome.alignment
        param.missing += outcome.missing
        if outcome.failed:
            param.failures += 1
        else:
            param.solves += 1
