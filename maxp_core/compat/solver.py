"""The published solver entry points, answered by this project's exact LP.

Two forms, as in the published releases:

* chain form (first release): ``find_c(al, bl, alpha, omega, u, ...)`` returns
  ``(cl, rl)``, the learning-rate exponent and the stability residual of every layer of
  a chain (first = embedding, last = readout);
* graph form (current release): ``find_c(graph, ...)`` with a published-style
  :class:`maxp_core.compat.dag.OpGraph` (or a :class:`maxp_core.OpGraph`) returns
  ``{node name: (c or None for an activation-only node, r)}`` for every node in
  topological order. ``find_c_dag``, ``find_c_dag_adam`` and ``find_c_dag_sgd`` are the
  earlier names of the graph form.

``find_c``, ``find_c_adam`` and ``find_c_sgd`` take either form and tell them apart by
their first argument.

Deliberate differences from the published solvers:

* The published ones encode each ``min`` with big-M binaries (``M``) and solve a mixed
  integer program with PuLP/CBC. Here the same constraints are an exact LP
  (:mod:`maxp_core.lp`): ``M`` is accepted and ignored, there is no limit on ``r``, and
  ``solver`` names a :mod:`maxp_core` solver (``None``/``"highs"``, ``"clarabel"``,
  ``"cvxpy-highs"``); a PuLP solver object is ignored, with a warning.
* Where several ``c`` are optimal the LP picks one by a fixed rule, so the answer does not
  depend on the solver: a single call has no preset to anchor to, so it is the point of
  ``tie_rule="later"`` (:mod:`maxp_core.lp`); ``c_prev`` (a warm start) is accepted and ignored.
* Errors are :class:`~maxp_core.errors.MaxPError` subclasses, all ``ValueError`` (the
  published raised ``ValueError`` and, for unequal lengths, ``AssertionError``).
* Alignments must lie in [0, 1] (the range measured alignments live in).
* A product of inputs (``MergeType.SUM``) follows :mod:`maxp_core.compat.dag`'s mapping,
  and SGD's gradient scale is taken over weighted sinks only (the published one also
  took ``a + b`` of activation-only sinks).

Examples:
  >>> cl, rl = find_c_adam([-0.5, 0.0, 0.0, 0.5], [0.5] * 4, [1.0] * 4, [0.5] * 4, [1.0] * 4)
  >>> cl, rl
  ([0.5, 1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, overload

from maxp_core import graph as core
from maxp_core import validate
from maxp_core.compat.dag import OpGraph, to_core
from maxp_core.errors import InfeasibleError, MaxPError, StabilityError
from maxp_core.formulation import OPTIMIZERS
from maxp_core.lp import SOLVERS, StabilityLP
from maxp_core.resolve import warn_user
from maxp_core.roles import AB_TOLERANCE, Role, role_from_position

__all__ = [
    "find_c",
    "find_c_adam",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "find_c_sgd",
]

ChainResult = tuple[list[float], list[float]]
GraphResult = dict[str, tuple[float | None, float]]
GraphLike = OpGraph | core.OpGraph

#: What the published solver reports when it finds no optimum; kept at the start of ours.
INFEASIBLE_PREFIX = "LP solver did not find an optimal solution; problem may be infeasible"


# --- the two forms, with the published signatures ------------------------------------


def _chain_form(
    al: Sequence[float],
    bl: Sequence[float],
    alpha: Sequence[float],
    omega: Sequence[float],
    u: Sequence[float],
    optimizer_type: str = "adam",
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
) -> ChainResult:
    graph = _chain_graph(al, bl, alpha, omega, u)
    solution = _solve(graph, optimizer_type, solver, feature_learning, None)
    return _plain(solution.c.values()), _plain(solution.r.values())


def _graph_form(
    graph: GraphLike,
    optimizer_type: str = "adam",
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult:
    lp_graph = _core_graph(graph)
    solution = _solve(lp_graph, optimizer_type, solver, feature_learning, c_fixed)
    result: GraphResult = {}
    for i in lp_graph.topological_order:
        name = lp_graph.nodes[i].name
        c = solution.c.get(name)
        result[name] = (None if c is None else c + 0.0, solution.r[name] + 0.0)
    return result


def _plain(values: Iterable[float]) -> list[float]:
    """Floats with ``-0.0`` written as ``0.0``."""
    return [value + 0.0 for value in values]


def _without(form: Callable[..., Any], name: str) -> inspect.Signature:
    signature = inspect.signature(form)
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != name])


_CHAIN = inspect.signature(_chain_form)
_GRAPH = inspect.signature(_graph_form)
_CHAIN_FIXED = _without(_chain_form, "optimizer_type")
_GRAPH_FIXED = _without(_graph_form, "optimizer_type")


def _is_graph_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    first = args[0] if args else kwargs.get("graph")
    return isinstance(first, OpGraph | core.OpGraph)


def _bind(entry: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return signature.bind(*args, **kwargs).arguments
    except TypeError as err:
        shown = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in signature.parameters.values()
        )
        raise TypeError(f"{entry}({shown}): {err}") from None


def _dispatch(entry: str, optimizer: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call the chain or the graph form; ``optimizer`` fixes ``optimizer_type`` (``None``: an argument)."""
    graph_call = _is_graph_call(args, kwargs)
    form: Callable[..., Any] = _graph_form if graph_call else _chain_form
    if optimizer is None:
        arguments = _bind(entry, _GRAPH if graph_call else _CHAIN, args, kwargs)
    else:
        arguments = _bind(entry, _GRAPH_FIXED if graph_call else _CHAIN_FIXED, args, kwargs)
        arguments["optimizer_type"] = optimizer
    return form(**arguments)


# --- public entry points ---------------------------------------------------------------


@overload
def find_c(
    graph: GraphLike,
    optimizer_type: str = "adam",
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult: ...


@overload
def find_c(
    al: Sequence[float],
    bl: Sequence[float],
    alpha: Sequence[float],
    omega: Sequence[float],
    u: Sequence[float],
    optimizer_type: str = "adam",
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
) -> ChainResult: ...


def find_c(*args: Any, **kwargs: Any) -> Any:
    """Solve for the learning-rate exponents of a chain or a graph.

    Chain form ``find_c(al, bl, alpha, omega, u, optimizer_type="adam", solver=None,
    feature_learning=False, M=10.0) -> (cl, rl)``: one value per layer of each list,
    layer 0 the embedding (``a + b == 0``), the last the readout (``a + b >= 0.5``), the
    others hidden (``a + b == 0.5``); ``b = inf`` marks a weight that starts at zero.

    Graph form ``find_c(graph, optimizer_type="adam", solver=None, feature_learning=False,
    M=10.0, c_fixed=None, c_prev=None) -> {name: (c or None, r)}``.

    Args (both forms):
      optimizer_type: ``"adam"`` or ``"sgd"`` (case-insensitive).
      solver: ``None`` or ``"highs"`` (default), ``"clarabel"`` or ``"cvxpy-highs"``.
      feature_learning: require ``r == 0`` on the layer(s) before the readout(s).
      M: ignored (the published big-M constant; the LP here needs none).
      c_fixed: graph form: pinned ``c`` by node name.
      c_prev: graph form: ignored (the published warm start; the answer here is unique).

    Returns:
      ``(cl, rl)`` in layer order, or the dict of every node in topological order.

    Raises:
      StabilityError: a layer's ``a + b`` is unstable at initialization for its place.
      InfeasibleError: no ``c`` keeps every layer stable.
      MaxPError: unequal lengths, fewer than 2 layers, an unknown optimizer or solver.

    Examples:
      >>> find_c([-0.5, 0.0, 0.5], [0.5] * 3, [1.0] * 3, [0.5] * 3, [1.0] * 3, "SGD")
      ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    """
    return _dispatch("find_c", None, args, kwargs)


@overload
def find_c_adam(
    graph: GraphLike,
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult: ...


@overload
def find_c_adam(
    al: Sequence[float],
    bl: Sequence[float],
    alpha: Sequence[float],
    omega: Sequence[float],
    u: Sequence[float],
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
) -> ChainResult: ...


def find_c_adam(*args: Any, **kwargs: Any) -> Any:
    """:func:`find_c` for Adam, either form, without ``optimizer_type``.

    Examples:
      >>> find_c_adam([-0.5, 0.5], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.0, 1.0])
      ([0.5, 0.5], [0.0, 0.0])
    """
    return _dispatch("find_c_adam", "adam", args, kwargs)


@overload
def find_c_sgd(
    graph: GraphLike,
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult: ...


@overload
def find_c_sgd(
    al: Sequence[float],
    bl: Sequence[float],
    alpha: Sequence[float],
    omega: Sequence[float],
    u: Sequence[float],
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
) -> ChainResult: ...


def find_c_sgd(*args: Any, **kwargs: Any) -> Any:
    """:func:`find_c` for SGD, either form, without ``optimizer_type``.

    Examples:
      >>> find_c_sgd([-0.5, 0.0, 0.5], [0.5] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3)
      ([0.0, -1.0, 0.0], [0.0, 0.0, 1.0])
    """
    return _dispatch("find_c_sgd", "sgd", args, kwargs)


def find_c_dag(
    graph: GraphLike,
    optimizer_type: str = "adam",
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult:
    """The graph form of :func:`find_c` (its earlier published name).

    Examples:
      >>> from maxp_core import chain
      >>> find_c_dag(chain(3))
      {'layer0': (0.5, 0.0), 'layer1': (1.0, 0.0), 'layer2': (0.5, 0.0)}
    """
    _require_graph("find_c_dag", graph)
    return _graph_form(graph, optimizer_type, solver, feature_learning, M, c_fixed, c_prev)


def find_c_dag_adam(
    graph: GraphLike,
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult:
    """:func:`find_c_dag` for Adam."""
    _require_graph("find_c_dag_adam", graph)
    return _graph_form(graph, "adam", solver, feature_learning, M, c_fixed, c_prev)


def find_c_dag_sgd(
    graph: GraphLike,
    solver: str | None = None,
    feature_learning: bool = False,
    M: float = 10.0,
    c_fixed: Mapping[str, float] | None = None,
    c_prev: Any = None,
) -> GraphResult:
    """:func:`find_c_dag` for SGD."""
    _require_graph("find_c_dag_sgd", graph)
    return _graph_form(graph, "sgd", solver, feature_learning, M, c_fixed, c_prev)


# --- checks and the solve ----------------------------------------------------------------


def _require_graph(entry: str, graph: object) -> None:
    if not isinstance(graph, OpGraph | core.OpGraph):
        raise MaxPError(
            f"{entry} takes an OpGraph (maxp_core.compat.dag.OpGraph or maxp_core.OpGraph), got "
            f"{type(graph).__name__}; for lists of a, b and alignments per layer use find_c"
        )


def _core_graph(graph: GraphLike) -> core.OpGraph:
    return graph if isinstance(graph, core.OpGraph) else to_core(graph)


def _optimizer(optimizer_type: object) -> str:
    name = optimizer_type.lower() if isinstance(optimizer_type, str) else None
    if name not in OPTIMIZERS:
        raise MaxPError(
            f"Unknown optimizer_type: {optimizer_type!r}. Must be 'adam' or 'sgd' "
            "(the later published 'adafactor' is not available here)"
        )
    return name


def _solver_name(solver: object) -> str:
    if solver is None:
        return "highs"
    if not isinstance(solver, str):
        warn_user(
            f"solver={type(solver).__name__}(...) is not used: this backend solves an exact LP with "
            f"maxp_core's own solvers, not the published PuLP mixed-integer program; pass None or one "
            f"of {list(SOLVERS)} to choose"
        )
        return "highs"
    if solver.lower() not in SOLVERS:
        raise MaxPError(f"unknown solver {solver!r}; expected None or one of {list(SOLVERS)}")
    return solver.lower()


def _solve(
    graph: core.OpGraph,
    optimizer_type: str,
    solver: object,
    feature_learning: bool,
    c_fixed: Mapping[str, float] | None,
) -> Any:
    lp = StabilityLP(
        graph,
        _optimizer(optimizer_type),
        feature_learning=feature_learning,
        c_fixed=c_fixed,
        solver=_solver_name(solver),
    )
    try:
        return lp.solve()
    except InfeasibleError as err:
        raise InfeasibleError(f"{INFEASIBLE_PREFIX}: {err}") from err


def _chain_graph(
    al: Sequence[float],
    bl: Sequence[float],
    alpha: Sequence[float],
    omega: Sequence[float],
    u: Sequence[float],
) -> core.OpGraph:
    """The LP chain of the published lists, after the published checks (by layer index)."""
    lists = {"al": al, "bl": bl, "alpha": alpha, "omega": omega, "u": u}
    for label, values in lists.items():
        if isinstance(values, str | bytes) or not (
            hasattr(values, "__len__") and hasattr(values, "__getitem__")
        ):
            raise MaxPError(f"{label} must be a list of one number per layer, got {values!r}"[:300])
    lengths = {label: len(values) for label, values in lists.items()}
    if len(set(lengths.values())) != 1:
        raise MaxPError(
            f"al, bl, alpha, omega and u must have the same length (one per layer), got {lengths}"
        )
    n = lengths["al"]
    if n < 2:
        raise MaxPError(f"a chain needs at least 2 layers (embedding and readout), got {n}")
    a = [validate.exponent(al[i], f"al[{i}]") for i in range(n)]
    b = [validate.init_exponent(bl[i], f"bl[{i}]") for i in range(n)]
    triples = [
        tuple(validate.alignment_value(lists[key][i], f"{key}[{i}]") for key in ("alpha", "omega", "u"))
        for i in range(n)
    ]
    for i in range(n):
        _check_layer_stability(i, n, a[i], b[i])
    nodes = [
        core.Node(
            name=f"layer{i}",
            a=a[i],
            b=b[i],
            alpha=triples[i][0],
            omega=triples[i][1],
            u=triples[i][2],
            preds=(f"layer{i - 1}",) if i else (),
        )
        for i in range(n)
    ]
    return core.OpGraph(nodes)


def _check_layer_stability(i: int, n: int, a: float, b: float) -> None:
    """``a + b`` of layer ``i`` of ``n`` against its place, with the published wording."""
    if b == float("inf"):
        return  # a weight that starts at zero adds nothing at initialization
    role = role_from_position(is_source=i == 0, is_sink=i == n - 1)
    total = a + b
    if role is Role.READOUT:
        if total >= 0.5 - AB_TOLERANCE:
            return
        need = "be at least 0.5"
    else:
        target = 0.0 if role is Role.EMBEDDING else 0.5
        if abs(total - target) <= AB_TOLERANCE:
            return
        need = f"equal {target}"
    raise StabilityError(
        f"Invalid (a,b): al[{i}] + bl[{i}] = {a!r} + {b!r} = {total!r} for layer {i} of {n} "
        f"({role.value}), but it must {need} for stability at initialization"
    )
