"""The published ``trace_pm_dag``: a model's graph of ``ParametrizedModule`` layers.

The model runs once on a sample input under this project's tracer
(:func:`maxp_torch.trace.trace_graph`, the one :class:`maxp_torch.Parametrization` uses),
and the LP graph it records is returned in the published shape
(:func:`maxp_core.compat.dag.from_core`). So ``find_c(trace_pm_dag(model, x))`` solves the
same LP as ``Parametrization(model, sample_input=x)`` with the same exponents.

Merge nodes are named as the published tracer names them: ``_add_<k>`` and ``_mul_<k>``,
one counter from 0 for both kinds, in the order the forward pass meets them. Differences
from the published tracer, on purpose: a matrix product of two traced values (``attn @ v``)
is a product (``MergeType.SUM``, named ``_mul_<k>``) rather than the published fallback
``MIN`` (named ``_add_<k>``), merges no layer reads are left out, a
parameter-free layer with two traced inputs (``q @ k^T``) is a contraction
(``DagNode.contraction``), and ``ab`` updates the defaults per layer type instead of
replacing the whole table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch  # noqa: F401  (used in the doctest)
from torch import nn

from maxp_core import MaxPError, default_ab, validate
from maxp_core import OpGraph as CoreGraph
from maxp_core.compat.dag import OpGraph, from_core
from maxp_torch.module import ParametrizedModule
from maxp_torch.parametrization import measurement_mode, unwrap
from maxp_torch.trace import trace_graph

__all__ = ["trace_pm_dag"]


def trace_pm_dag(
    model: nn.Module,
    sample_input: Any,
    ab: Mapping[str, tuple[float, float]] | None = None,
    *,
    parametrization: str = "mup",
) -> OpGraph:
    """Trace the data flow between a model's ``ParametrizedModule`` layers.

    Each layer's ``(a, b)`` is, by priority: the module's own ``a``/``b``, then
    ``ab[layer_type]``, then the parametrization's default for its ``layer_type``.
    Alignments keep the :class:`~maxp_core.compat.dag.DagNode` defaults (the ``"full"``
    preset). The model's weights, its train/eval flags and the global random state are
    left as they were.

    Args:
      model: a module holding ``ParametrizedModule`` layers.
      sample_input: one batch: a tensor, a tuple of positional arguments or a dict of
        keyword arguments.
      ab: ``(a, b)`` by layer type (``"embedding"``, ``"hidden"``, ``"readout"``).
      parametrization: the named parametrization of the defaults (``"mup"``, ``"sp"``,
        ``"ntk"``, ``"mfp"``); an extension of the published signature.

    Returns:
      The published-style :class:`~maxp_core.compat.dag.OpGraph`, one node per layer and
      per merge, with each layer's ``layer_type`` and ``width_dim``.

    Raises:
      MaxPError: no ``ParametrizedModule`` in the model, an ``ab`` key that is no layer
        type, or a layer the sample forward pass never reaches.

    Examples:
      >>> model = nn.Sequential(
      ...     ParametrizedModule(nn.Linear(4, 16), width_dim=16, layer_type="embedding"), nn.ReLU(),
      ...     ParametrizedModule(nn.Linear(16, 3), width_dim=16, layer_type="readout"))
      >>> g = trace_pm_dag(model, torch.zeros(2, 4))
      >>> [(n.name, n.a, n.b, n.successors) for n in g.nodes.values()]
      [('0', -0.5, 0.5, ['2']), ('2', 0.5, 0.5, [])]
    """
    if not isinstance(model, nn.Module):
        raise MaxPError(f"trace_pm_dag needs an nn.Module, got {type(model).__name__}")
    layers = _parametrized_layers(model)
    table = _ab_table(ab)
    exponents = [_exponents(module, table, parametrization) for _, module in layers]
    devices = sorted({p.device for p in model.parameters()}, key=str)
    with measurement_mode(model, devices):
        graph = published_merge_names(trace_graph(unwrap(model), layers, exponents, sample_input))
    return from_core(
        graph,
        width_dims={name: module.width_dim for name, module in layers},
        layer_types={name: module.layer_type for name, module in layers},
    )


def published_merge_names(graph: CoreGraph) -> CoreGraph:
    """``graph`` with the recorder's merge names (``add1``, ``mul2``, ...) in the published
    form (``_add_0``, ``_mul_1``, ...): same counter, from 0.

    Examples:
      >>> from maxp_core import Node
      >>> g = CoreGraph([Node("x", a=-0.5), Node("y", a=0.0, preds=("x",)),
      ...                Node("add1", a=0.0, has_weight=False, preds=("x", "y")),
      ...                Node("out", a=0.5, preds=("add1",))])
      >>> published_merge_names(g).names
      ('x', 'y', '_add_0', 'out')
    """
    layers = {n.name for n in graph.nodes if n.has_weight}
    renamed = {}
    for node in graph.nodes:
        found = MERGE_NAME.fullmatch(node.name)
        if found and node.name not in layers and not node.has_weight:
            renamed[node.name] = f"_{found.group(1)}_{int(found.group(2)) - 1}"

    def name(n: str) -> str:
        return renamed.get(n, n)

    return CoreGraph(
        [
            replace(
                node,
                name=name(node.name),
                preds=tuple(name(p) for p in node.preds),
                zero_inputs=tuple(name(p) for p in node.zero_inputs),
            )
            for node in graph.nodes
        ]
    )


#: The core recorder's merge names (``maxp_core.tracing``).
MERGE_NAME = re.compile(r"(add|mul)(\d+)")


def _parametrized_layers(model: nn.Module) -> list[tuple[str, ParametrizedModule]]:
    layers = [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, ParametrizedModule)]
    if not layers:
        raise MaxPError(
            f"no ParametrizedModule in {type(model).__name__}: wrap the layers to trace, e.g. "
            "ParametrizedModule(nn.Linear(n, n), width_dim=n, layer_type='hidden')"
        )
    return layers


def _ab_table(ab: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    if ab is None:
        return {}
    if not isinstance(ab, Mapping):
        raise MaxPError(f"ab must be a mapping {{layer type: (a, b)}}, got {ab!r}")
    table = {}
    for key, pair in ab.items():
        if key not in ("embedding", "hidden", "readout"):
            raise MaxPError(f"ab is keyed by layer type (embedding, hidden, readout); unknown key {key!r}")
        if isinstance(pair, str) or not isinstance(pair, tuple | list) or len(pair) != 2:
            raise MaxPError(f"ab[{key!r}] must be a pair (a, b), got {pair!r}")
        table[key] = (
            validate.exponent(pair[0], f"ab[{key!r}]: a"),
            validate.init_exponent(pair[1], f"ab[{key!r}]: b"),
        )
    return table


def _exponents(
    module: ParametrizedModule, table: Mapping[str, tuple[float, float]], parametrization: str
) -> tuple[float, float]:
    a, b = table.get(module.layer_type) or default_ab(parametrization, module.layer_type)
    return (a if module.a is None else module.a, b if module.b is None else module.b)
