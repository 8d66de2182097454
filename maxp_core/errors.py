"""Exceptions raised by maxp_core.

Every error is a ``ValueError`` subclass, so callers that already guard against bad
arguments keep working, and each names the layer, node or number that is wrong.
"""

from __future__ import annotations


class MaxPError(ValueError):
    """Base class of every error raised for bad input or an unsolvable problem."""


class GraphError(MaxPError):
    """The op graph is malformed: cycle, dangling edge, duplicate name, empty graph."""


class StabilityError(MaxPError):
    """A layer's (a, b) exponents are not stable at initialization for its role."""


class InfeasibleError(MaxPError):
    """The LP has no solution; the message lists the nodes and constraints involved."""


class SolverError(MaxPError):
    """The solver failed or returned something other than an optimal solution."""


class CallOrderError(MaxPError, RuntimeError):
    """A method was called before the one it needs (``step`` before ``capture_initial``).

    Also a ``RuntimeError``, which is what PyTorch and the published maxP raise for calls
    out of order, so either ``except`` clause catches it.
    """
