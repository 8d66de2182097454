"""What a :class:`~maxp_torch.Parametrization` tells a person or a logger: metrics and the layer table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maxp_core.base_width import describe_base
from maxp_core.metrics import metrics_record

if TYPE_CHECKING:
    from maxp_torch.parametrization import Parametrization


def metrics_of(param: Parametrization) -> dict[str, float]:
    """A flat dict, one entry per layer and counter (:mod:`maxp_core.metrics`)."""
    layers = param._layers
    group_of = {j: g for g, members in enumerate(layers.groups) for j in members}
    rows = param.alignment[[layers.row[k] for k in layers.weighted]]
    columns: dict[str, Any] = {
        "lr": [param._rates.group_lr(group_of[j]) for j in range(len(layers.weighted))],
        "lr_factor": param._rates.lr_factors(),
        "c": param.c,
        **{field: rows[:, i] for i, field in enumerate(("alpha", "omega", "u"))},
    }
    counters = {
        "step": param.step_count,
        "solves": param.solves,
        "failures": param.failures,
        "missing": param.missing,
        "solve_seconds": param.solve_seconds,
    }
    return metrics_record(layers.weighted_names(), columns, counters)


def layer_table(param: Parametrization) -> str:
    """The per-layer table: role, kind, width, a, b, c, alignments and learning rate."""
    from maxp_core.text import format_table

    layers = param._layers
    group_of = {j: g for g, members in enumerate(layers.groups) for j in members}
    rows = []
    for j, k in enumerate(layers.weighted):
        a, b, c = layers.abc(j, float(param.c[j]))
        alpha, omega, u = param.alignment[layers.row[k]]
        module = layers.modules[k]
        rows.append(
            (layers.names[k], module.layer_type, module.kind.name, layers.width(k),
             a, b, c, float(alpha), float(omega), float(u), param._rates.group_lr(group_of[j]))
        )  # fmt: skip
    header = ("layer", "role", "kind", "width", "a", "b", "c", "alpha", "omega", "u", "lr")
    lines = [format_table(rows, header)]
    base = describe_base({layers.names[k]: layers.width(k) for k in layers.weighted}, layers.base_width)
    lines += [base] if base else []
    lines += [f"depth: {layers.depth_factors.rule}"] if layers.depth_factors is not None else []
    return "\n".join(lines)
