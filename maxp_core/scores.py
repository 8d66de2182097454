"""Attention scores scaled by ``n^-a`` with ``a < 1``, and how much they slow the layers upstream.

A contraction node (scores ``n^-a q @ k^T``) amplifies the updates of its inputs by
``n^(1 - a)`` in the worst case. Under worst-case ("full") alignment the LP then keeps the
scores stable by slowing every layer that feeds them, and through the residual stream that
compounds: ``c`` of the earliest layers grows by ``1 - a`` per block. The published maxP keeps
the one-block ``c`` at every depth. ``python -m benchmarks.depth_coord`` measures both: with
``a = 0.5`` the compounded rates make the early layers' updates vanish with width (slope -1
at 2 blocks, -4.5 at 6) while the scores still grow, and with ``a = 1`` (muP's ``1/d``) every
weighted layer's update stays flat at every depth. :func:`scores_slowdown` finds the case so
that both adapters can say so at construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from maxp_core.errors import MaxPError
from maxp_core.lp import StabilityLP

#: A ``c`` this much above the ``a = 1`` solution's counts as slowed.
SLOWDOWN_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ScoresSlowdown:
    """Contraction nodes with ``a < 1`` and the weighted layer they slow most.

    Attributes:
      scores: each such node's ``a``, by name.
      layer: the weighted layer whose ``c`` rises most over the ``a = 1`` solution's.
      c: that layer's ``c``.
      c_at_one: its ``c`` with every listed node at ``a = 1``.
    """

    scores: dict[str, float]
    layer: str
    c: float
    c_at_one: float

    def message(self, width: int, lr_prefactor: float | None = None, ratio: float | None = None) -> str:
        """The warning, with the slowed layer's rate factor at its ``width`` (with a base width,
        at its width ``ratio``)."""
        names = list(self.scores)
        shown = ", ".join(repr(n) for n in names[:3]) + (
            f" and {len(names) - 3} more" if len(names) > 3 else ""
        )
        a = min(self.scores.values())
        factor = float(width if ratio is None else ratio) ** -self.c
        power = "n^-c" if ratio is None else "(n / n_base)^-c"
        rate = (
            ""
            if lr_prefactor is None
            else f", lr {lr_prefactor * factor:.2g} at lr_prefactor {lr_prefactor:g}"
        )
        return (
            f"attention scores {shown} are scaled by n^-{a:g} (a = {a:g}; 1/sqrt(d) is a = 0.5): under "
            f"worst-case alignment the LP keeps their update bounded by slowing every layer upstream, "
            f"c growing by up to 1 - a = {1 - a:g} per block: {self.layer!r} gets c = {self.c:.3g} "
            f"instead of {self.c_at_one:.3g} with a = 1, a rate factor {power} = {factor:.2g} at width "
            f"{width}{rate}. "
            "Measured (python -m benchmarks.depth_coord), the early layers' updates then vanish with width "
            "while the scores still grow. Give the scores a = 1 (muP's 1/d), or alignment='no', or "
            "measured alignments (dynamic re-solves, alignment_overrides)"
        )


def scores_slowdown(lp: StabilityLP, c: Mapping[str, float]) -> ScoresSlowdown | None:
    """How contraction nodes with ``a < 1`` slow the layers of ``lp``'s graph, or ``None``.

    ``c`` is the solution at the graph's own numbers; it is compared with the solution at
    the same numbers and ``a = 1`` on those nodes (none where that LP has no answer).

    Examples:
      >>> from maxp_core import Node, OpGraph, StabilityLP
      >>> nodes = [
      ...     Node("emb", a=-0.5), Node("q", a=0.0, preds=("emb",)), Node("k", a=0.0, preds=("emb",)),
      ...     Node("scores", preds=("q", "k"), has_weight=False, a=0.5, contraction=True),
      ...     Node("out", a=0.5, preds=("scores",))]
      >>> lp = StabilityLP(OpGraph(nodes), "adam")
      >>> found = scores_slowdown(lp, lp.solve().c)
      >>> found.layer, found.c - found.c_at_one
      ('emb', 0.5)
    """
    scores = {n.name: float(n.a) for n in lp.graph.nodes if n.contraction and n.a < 1.0}
    if not scores:
        return None
    try:
        at_one = lp.solve(a=dict.fromkeys(scores, 1.0)).c
    except MaxPError:
        return None
    gaps = {name: float(c[name]) - float(at_one[name]) for name in at_one if name in c}
    layer = max(gaps, key=lambda name: gaps[name])
    if gaps[layer] <= SLOWDOWN_TOLERANCE:
        return None
    return ScoresSlowdown(scores, layer, float(c[layer]), float(at_one[layer]))
