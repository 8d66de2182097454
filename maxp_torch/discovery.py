"""Finding a model's maxP layers and checking them before anything is drawn or solved.

The layers come from :class:`~maxp_torch.Rule`\\ s, from ``ParametrizedModule`` wrappers, or
ready-made (``maxp_torch.scheduler`` passes plain ``nn.Linear`` layers); each gets its
``(a, b)`` from the parametrization, the overrides and the module itself. The checks refuse,
by layer name, what would give silently wrong rates: a width that is none of the weight's
growing axes, weights no layer covers (with ``strict``), a model on the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from maxp_core import MaxPError, OpGraph, default_ab, validate, warn_user
from maxp_core.graph import graph_by_roles
from maxp_core.parametrizations import attention_exponent
from maxp_core.rules import report_uncovered
from maxp_core.tables import AlignmentTable, resolve_overrides
from maxp_torch import sharding
from maxp_torch.layer_set import LayerSet
from maxp_torch.layers import CONV, kind_of
from maxp_torch.module import ParametrizedModule
from maxp_torch.rules import Rule, RuledLayers, apply_rules
from maxp_torch.trace import trace_graph

Triple = tuple[float, float, float]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` or ``torch.compile`` wrappers.

    maxP's own no-grad passes run on it: they need no gradient sync, and running them
    through a compiled module would make it recompile each time recording is toggled.
    """
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def find_layers(
    model: nn.Module,
    rules: Sequence[Rule] | None,
    layers: list[tuple[str, Any]] | None,
    parametrization: str,
    use_training_activations: bool,
) -> tuple[list[tuple[str, Any]], RuledLayers | None]:
    """``(name, layer)`` pairs to parametrize, and the installed rules (if rules were given)."""
    ruled = None
    if rules is not None:
        if layers is not None:
            raise MaxPError("give rules or layers, not both")
        ruled = apply_rules(unwrap(model), rules, attention_a=attention_exponent(parametrization))
        layers = ruled.layers
    found = layers or [(n, m) for n, m in model.named_modules() if isinstance(m, ParametrizedModule)]
    if layers is not None and use_training_activations:
        raise MaxPError("use_training_activations needs ParametrizedModule layers")
    if not found:
        raise MaxPError(
            f"no ParametrizedModule in {type(model).__name__} and no rules: give the layers roles by name, "
            "rules=rules_from_widths(small_model, model) (or [Rule(pattern, role), ...]), or wrap them, "
            "ParametrizedModule(nn.Linear(n, n), width_dim=n, layer_type='hidden')"
        )
    refuse_meta(unwrap(model))
    return found, ruled


def layer_exponents(
    modules: Sequence[ParametrizedModule], parametrization: str, ab_overrides: Mapping[str, Any] | None
) -> list[tuple[float, float]]:
    """Each layer's ``(a, b)``: its own if set, else the overrides' for its type, else the
    parametrization's."""
    overrides = exponent_overrides(ab_overrides, "ab_overrides", pair=True)
    exponents = []
    for module in modules:
        a0, b0 = overrides.get(module.layer_type, default_ab(parametrization, module.layer_type))
        exponents.append((a0 if module.a is None else module.a, b0 if module.b is None else module.b))
    return exponents


def pinned_exponents(layers: LayerSet, overrides: Mapping[str, float]) -> dict[str, float]:
    """The ``c`` pinned per weighted layer: its own ``c``, else ``overrides`` (checked
    ``c_overrides``, by layer type)."""
    pins = {}
    for name, module in zip(layers.names, layers.modules, strict=True):
        pin = module.c if module.c is not None else overrides.get(module.layer_type)
        if pin is not None and module.weight is not None:
            pins[name] = float(pin)
    return pins


def exponent_overrides(table: Mapping[str, Any] | None, what: str, pair: bool) -> dict[str, Any]:
    """``ab_overrides`` or ``c_overrides`` by layer type, each value checked."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise MaxPError(f"{what} must be a mapping {{layer type: value}}, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in ("embedding", "hidden", "readout"):
            raise MaxPError(
                f"{what} are keyed by layer type (embedding, hidden, readout); unknown key {key!r}"
            )
        if pair:
            if isinstance(value, str) or not isinstance(value, tuple | list) or len(value) != 2:
                raise MaxPError(f"{what}[{key!r}] must be a pair (a, b), got {value!r}")
            a, b = value
            out[key] = (
                validate.exponent(a, f"{what}[{key!r}]: a"),
                validate.init_exponent(b, f"{what}[{key!r}]: b"),
            )
        else:
            out[key] = validate.exponent(value, f"{what}[{key!r}]")
    return out


def alignment_overrides(
    layers: LayerSet, given: Mapping[str, Triple] | AlignmentTable | None, ruled: RuledLayers | None
) -> dict[int, Triple]:
    """Each overridden layer's ``(alpha, omega, u)``: the rules', then the user's mapping or table."""
    pairs = [(name, module.layer_type) for name, module in zip(layers.names, layers.modules, strict=True)]
    if isinstance(given, AlignmentTable):  # a table describes weights: weightless products keep theirs
        found = resolve_overrides([pairs[k] for k in layers.weighted], given)
        fixed = {layers.weighted[k]: triple for k, triple in found.items()}
    else:
        fixed = resolve_overrides(pairs, given)
    from_rules = resolve_overrides(pairs, ruled.alignment) if ruled else {}
    return {**from_rules, **fixed}


def check_widths(layers: LayerSet) -> None:
    """A layer's ``width_dim`` must be one of its weight's axes: another number would scale
    its rate and initial scale by a width the layer does not have."""
    for k in layers.weighted:
        module = layers.modules[k]
        shape = tuple(getattr(module.weight, "shape", ()))
        growing = shape
        if module.kind is CONV:  # a kernel's window never grows; a grouped one sees all inputs
            growing = (shape[0], shape[1] * getattr(module.inner, "groups", 1))
        if shape and module.width_dim not in growing:
            raise MaxPError(
                f"layer {layers.names[k]!r}: width_dim={module.width_dim} is none of its weight's axes "
                f"{shape} that can grow with width {growing}; give the size of the axis that grows "
                "with the model's width (for nn.Linear(in, out), usually in_features; for a readout, "
                "its input width; for a convolution, its input channels)"
            )


def check_coverage(model: nn.Module, layers: LayerSet, strict: bool) -> None:
    """Weights no layer covers train at ``lr_prefactor``: list them (an error with ``strict``)."""
    covered = {id(p) for m in layers.modules for p in m.parameters()}
    inner = {id(m.inner) for m in layers.modules if m.inner is not None}
    weights = {id(layers.modules[k].weight): layers.names[k] for k in layers.weighted}
    plain = unwrap(model)
    problems = [
        f"{n} {tuple(p.shape)} would train at lr_prefactor"
        for n, p in plain.named_parameters()
        if p.ndim >= 2 and id(p) not in covered
    ]
    problems += [
        f"{n} uses the weight of {weights[id(m.weight)]} (tied) but its own use is no maxP layer"
        for n, m in plain.named_modules()
        if kind_of(m) is not None and id(m) not in inner and id(getattr(m, "weight", None)) in weights
    ]
    report_uncovered(problems, strict, "Give them a Rule (or a ParametrizedModule)")


def check_attention(
    attention: list[tuple[str, int, float, float]], parametrization: str, ruled: RuledLayers | None
) -> None:
    """Warn where ``scaled_dot_product_attention`` runs at a scale the parametrization does not expect."""
    expected = attention_exponent(parametrization)
    scoped = [name for name, _ in ruled.attention] if ruled else []
    for node, head, scale, a in attention:
        module = node.rsplit(".scores", 1)[0]
        if any(module == s or module.startswith(s + ".") for s in scoped) or abs(a - expected) < 1e-6:
            continue
        warn_user(
            f"{node}: scaled_dot_product_attention runs at scale {scale:.4g} = {head}^-{a:.3g} (head "
            f"dimension {head}), but {parametrization} scales attention by d^-{expected:g}; give "
            f"Rule({module!r}, 'attention') to set it (or Rule(..., 'attention', a={a:.3g}) to keep it)"
        )


def layer_graph(
    model: nn.Module,
    found: list[tuple[str, Any]],
    layers: LayerSet,
    sample_input: Any,
    preset: Triple,
    overrides: Mapping[int, Triple],
    parametrization: str,
    ruled: RuledLayers | None,
) -> OpGraph:
    """The LP graph, traced from ``sample_input`` (else by the layers' order and types), with
    every node's preset or overridden alignment; records each layer's row in ``layers.row``."""
    if sample_input is not None:
        attention: list[tuple[str, int, float, float]] = []
        graph = trace_graph(unwrap(model), found, layers.exponents, sample_input, attention)
        sharding.reshard(unwrap(model))
        check_attention(attention, parametrization, ruled)
    else:
        graph = synthetic_graph(layers.names, layers.modules, layers.exponents)
    numbers = {layers.names[k]: overrides.get(k, preset) for k in range(len(layers.modules))}
    graph = graph.with_numbers(
        alpha={n: t[0] for n, t in numbers.items()},
        omega={n: t[1] for n, t in numbers.items()},
        u={n: t[2] for n, t in numbers.items()},
    )
    layers.row.update({k: graph.index(name) for k, name in enumerate(layers.names)})
    return graph


def synthetic_graph(
    names: list[str], modules: list[ParametrizedModule], exponents: list[tuple[float, float]]
) -> OpGraph:
    """The LP graph of modules by their order and types (:func:`maxp_core.graph.graph_by_roles`)."""
    return graph_by_roles(
        names,
        [m.role for m in modules],
        exponents,
        [m.weight is not None for m in modules],
        trace_hint="give Parametrization sample_input",
    )


def refuse_meta(model: nn.Module) -> None:
    """A model on the ``meta`` device has no values to re-initialise, measure or train yet."""
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        listed = ", ".join(on_meta[:4]) + (f" and {len(on_meta) - 4} more" if len(on_meta) > 4 else "")
        raise MaxPError(
            f"{listed} are on the 'meta' device (deferred initialisation); Parametrization draws and "
            "measures real weights, so materialise the model first, e.g. model.to_empty(device='cpu') "
            "(or your accelerator), then build the Parametrization: it initialises every maxP layer "
            "(give the other parameters their own init, e.g. LayerNorm.reset_parameters())"
        )
