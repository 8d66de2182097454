"""Roles for a model's layers by name, applied in place: no wrapper, no renamed ``state_dict`` key.

A :class:`Rule` matches, in full, the names ``model.named_modules()`` gives to the layers
maxP knows (``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d/2d/3d`` and the ``Conv1D`` of
Hugging Face transformers), or the names ``model.named_parameters()`` gives to bare
parameters of two or more axes that sit outside such a layer (a class token, a position
embedding: role ``"embedding"`` only, since they are added, not multiplied). A rule with
role ``"attention"`` matches any module and sets the scale of the
``scaled_dot_product_attention`` calls inside it (:class:`~maxp_torch.layers.AttentionScope`).

Layers get forward hooks (:class:`~maxp_torch.layers.HookedLayer`): the output multiplier
and the input maxP measures. The model's classes, parameters and ``state_dict`` keys stay
as they were, so ``save_pretrained``/``from_pretrained`` and checkpoints of the stock
model keep working.

Examples:
  >>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
  >>> found = apply_rules(model, [Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")])
  >>> [(name, layer.layer_type, layer.width_dim) for name, layer in found.layers]
  [('0', 'embedding', 32), ('2', 'hidden', 32), ('4', 'readout', 32)]
  >>> found.remove()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from maxp_core import MaxPError, Role, validate
from maxp_core.rules import assign_rules, rule_numbers
from maxp_torch.layers import (
    KNOWN_TYPES,
    TABLE,
    AttentionScope,
    HookedLayer,
    ParameterLayer,
    kind_of,
)

ROLES: tuple[str, ...] = (*(role.value for role in Role), "attention")


@dataclass(frozen=True)
class Rule:
    """Give the layers whose name matches ``pattern`` a role and, optionally, their own numbers.

    Args:
      pattern: a regular expression matched in full against module names
        (``"transformer.h.0.attn.c_attn"``) or, for bare parameters, parameter names
        (``"cls_token"``).
      role: ``"embedding"``, ``"hidden"``, ``"readout"`` or ``"attention"``.
      width: the ``n`` of ``n^-a, n^-b, n^-c``; default: the output size of an embedding,
        the input size (input channels for a convolution) otherwise. For an attention
        rule, the ``n`` of its scale ``n^-a`` (default: the head dimension).
      a, b: override the parametrization's exponents (``b=math.inf``: a zero initial
        weight). For an attention rule, ``a`` sets the scale ``n^-a`` (default 1, muP's
        ``1/d``, under ``parametrization="mup"``; 0.5, the standard ``1/sqrt(d)``,
        otherwise).
      c: pin the learning-rate exponent (the LP solves the others around it).
      alignment: ``(alpha, omega, u)`` for these layers instead of the preset and the
        measurement.

    Examples:
      >>> Rule(r"blocks\\.\\d+\\.attn\\.qkv", "hidden").role
      'hidden'
      >>> Rule("head", "output")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: rule 'head': role must be one of [...], got 'output'
    """

    pattern: str
    role: str
    width: int | None = None
    a: float | None = None
    b: float | None = None
    c: float | None = None
    alignment: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        where = f"rule {validate.text(self.pattern, 'rule pattern')!r}"
        role = self.role.value if isinstance(self.role, Role) else self.role
        checked = {
            "role": validate.choice(role, f"{where}: role", ROLES),
            **rule_numbers(where, self.width, self.a, self.b, self.c, self.alignment),
        }
        if checked["role"] == "attention":
            given = [key for key in ("b", "c", "alignment") if checked[key] is not None]
            if given:
                raise MaxPError(
                    f"{where}: an attention rule sets the scale n^-a of its scores and has no weight; "
                    f"{', '.join(given)} do not apply"
                )
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass
class RuledLayers:
    """What :func:`apply_rules` installed: the layers (in model order) and the attention scopes."""

    layers: list[tuple[str, Any]] = field(default_factory=list)
    attention: list[tuple[str, AttentionScope]] = field(default_factory=list)
    alignment: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def remove(self) -> None:
        """Take every hook off the model."""
        for _, layer in self.layers:
            layer.remove()
        for _, scope in self.attention:
            scope.remove()


def layer_candidates(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Parameter]]:
    """The named modules (a rule naming one of a kind maxP does not know is refused by
    name) and the bare parameters (two or more axes, outside a known layer), in model order."""
    modules = {name: m for name, m in model.named_modules() if name}
    known = {name for name, m in modules.items() if kind_of(m) is not None}
    owned = {id(modules[name].weight) for name in known}
    bare = {
        name: p
        for name, p in model.named_parameters()
        if p.ndim >= 2 and id(p) not in owned and name.rsplit(".", 1)[0] not in known
    }
    return modules, bare


def apply_rules(
    model: nn.Module,
    rules: Sequence[Rule],
    *,
    attention_a: float = 1.0,
) -> RuledLayers:
    """Install the hooks of every layer the rules name and return them in model order.

    Args:
      model: the model, unchanged but for hooks.
      rules: each must match something; no layer may be matched by two.
      attention_a: ``a`` of attention rules that do not set it.

    Raises:
      MaxPError: a rule is malformed, matches nothing, shares a layer with another, gives
        a bare parameter or a table a role it cannot have, or names a module of a kind
        maxP does not know.
    """
    if isinstance(rules, str | bytes) or not isinstance(rules, Sequence):
        raise MaxPError(f"rules must be a list of Rule, got {type(rules).__name__} {rules!r}")
    for k, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            raise MaxPError(f"rules[{k}] must be a maxp_torch.Rule, got {type(rule).__name__} {rule!r}")
    modules, bare = layer_candidates(model)
    weighted = [r for r in rules if r.role != "attention"]
    owner = assign_rules([r.pattern for r in weighted], [*modules, *bare])
    found = RuledLayers()
    for name, k in owner.items():
        rule = weighted[k]
        layer = _make_layer(name, rule, modules.get(name), bare.get(name))
        found.layers.append((name, layer))
        if rule.alignment is not None:
            found.alignment[name] = rule.alignment
    order = {name: position for position, name in enumerate([*modules, *bare])}
    found.layers.sort(key=lambda item: order[item[0]])
    attention_rules = [r for r in rules if r.role == "attention"]
    named = dict(model.named_modules())
    for name, k in assign_rules([r.pattern for r in attention_rules], [n for n in named if n]).items():
        rule = attention_rules[k]
        a = attention_a if rule.a is None else rule.a
        found.attention.append((name, AttentionScope(named[name], a, rule.width)))
    return found


def _make_layer(name: str, rule: Rule, module: nn.Module | None, parameter: nn.Parameter | None) -> Any:
    numbers = {"a": rule.a, "b": rule.b, "c": rule.c}
    if parameter is not None:
        if rule.role != "embedding":
            raise MaxPError(
                f"parameter {name!r} (shape {tuple(parameter.shape)}) is a bare parameter, added to its "
                f"input rather than multiplying it, so it can only be an embedding, not a {rule.role}; "
                "a weight that multiplies belongs in nn.Linear or a ParametrizedModule"
            )
        return ParameterLayer(parameter, "embedding", rule.width or parameter.shape[-1], **numbers)
    assert module is not None
    kind = kind_of(module)
    if kind is None:
        raise MaxPError(
            f"module {name!r} is a {type(module).__name__}; rules give roles to {KNOWN_TYPES} and to bare "
            "parameters; wrap it in ParametrizedModule instead"
        )
    if kind is TABLE and rule.role != "embedding":
        raise MaxPError(
            f"module {name!r} is an nn.Embedding (a table that is looked up) and can only be an embedding, "
            f"not a {rule.role}; a tied readout is the nn.Linear that shares its weight"
        )
    in_dim, _, out_dim = kind.dims(tuple(cast(torch.Tensor, module.weight).shape))
    width = rule.width or (out_dim if rule.role == "embedding" else in_dim)
    return HookedLayer(module, rule.role, int(width), kind=kind, **cast(dict[str, Any], numbers))
