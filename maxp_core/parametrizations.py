"""Named parametrizations: the (a, b, c) of every layer of a chain.

Four parametrizations of Everett et al. (2024) fix ``(a, b)`` per role; ``c`` then
follows from the LP with a preset alignment. For a chain of ``L`` weighted layers
(``0`` = embedding, ``L-1`` = readout, ``alpha`` the preset's alignment of ``z0 @ dW``):

====== ================ ================ ================
name    embedding a, b    hidden a, b      readout a, b
====== ================ ================ ================
sp      0, 0              0, 1/2           0, 1/2
ntk     0, 0              1/2, 0           1/2, 0
mup     -1/2, 1/2         0, 1/2           1/2, 1/2
mfp     0, 0              1/2, 0           1, 0
====== ================ ================ ================

Adam: ``c_emb = -a_emb`` and ``c = alpha - a`` for hidden and readout layers. Every
``r`` is 0: each layer sits exactly at its stability limit.

SGD: the gradient reaching every layer carries the scale
``g = min(a_L + b_L, 2 a_L + c_L)``; ``c_emb = -g - 2 a_emb``, ``c = alpha - g - 2a``
for hidden layers, and the readout takes ``c_L = max(alpha - 2 a_L, b_L - a_L)``
(the second bound keeps ``g`` at its largest, ``a_L + b_L``: lowering ``c_L`` below it
would lower ``g`` and raise the ``c`` of all ``L - 1`` other layers by as much).

With exactly two layers under SGD that trade is one for one (one other layer), so
every ``c_L`` between ``alpha - 2 a_L`` and ``b_L - a_L`` is optimal. The LP's tie
rule (:mod:`maxp_core.lp`) gives the later layer the larger learning rate, so this
table uses ``c_L = alpha - 2 a_L`` there, and ``g`` follows. A table written for
deep networks would list ``b_L - a_L``; both have the same ``sum(c)``, and the one
here is the one the solver returns, which is what the adapters use.

References:
  Everett et al., "Scaling Exponents Across Parameterizations and Optimizers",
  ICML 2024, https://arxiv.org/abs/2407.05872

Examples:
  >>> [(l.a, l.b, l.c) for l in named_parametrization("mup", 4)]
  [(-0.5, 0.5, 0.5), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0), (0.5, 0.5, 0.5)]
"""

from __future__ import annotations

from dataclasses import dataclass

from maxp_core import validate
from maxp_core.base_width import init_rescale, width_ratios
from maxp_core.errors import MaxPError
from maxp_core.formulation import parse_optimizer
from maxp_core.graph import OpGraph, alignment_preset, chain, layer_count
from maxp_core.roles import Role

#: (a, b) per role for each named parametrization.
AB_TABLE: dict[str, dict[Role, tuple[float, float]]] = {
    "sp": {Role.EMBEDDING: (0.0, 0.0), Role.HIDDEN: (0.0, 0.5), Role.READOUT: (0.0, 0.5)},
    "ntk": {Role.EMBEDDING: (0.0, 0.0), Role.HIDDEN: (0.5, 0.0), Role.READOUT: (0.5, 0.0)},
    "mup": {Role.EMBEDDING: (-0.5, 0.5), Role.HIDDEN: (0.0, 0.5), Role.READOUT: (0.5, 0.5)},
    "mfp": {Role.EMBEDDING: (0.0, 0.0), Role.HIDDEN: (0.5, 0.0), Role.READOUT: (1.0, 0.0)},
}
PARAMETRIZATIONS: tuple[str, ...] = tuple(AB_TABLE)
"""The named parametrizations: ``"sp"``, ``"ntk"``, ``"mup"``, ``"mfp"``."""


@dataclass(frozen=True)
class LayerExponents:
    """The exponents of one layer: output multiplier ``a``, init ``b``, learning rate ``c``."""

    name: str
    role: Role
    a: float
    b: float
    c: float

    def learning_rate(self, lr_prefactor: float, width: float, base_width: float | None = None) -> float:
        """``lr_prefactor * (width / base_width)^-c`` (``width^-c`` without a base width).

        Examples:
          >>> hidden = named_parametrization("mup", 3)[1]
          >>> hidden.learning_rate(3e-3, width=1024, base_width=256)
          0.00075
        """
        prefactor = validate.positive_number(lr_prefactor, "lr_prefactor")
        return prefactor * _ratio(width, base_width) ** -self.c

    def multiplier(self, width: float, base_width: float | None = None) -> float:
        """The output multiplier ``(width / base_width)^-a`` (``width^-a`` without a base width)."""
        return _ratio(width, base_width) ** -self.a

    def init_scale(self, width: float, base_width: float) -> float:
        """What a standard initial weight (variance ``1/fan_in``) is multiplied by at ``width``:
        ``(width / base_width)^-(b - b_standard)``; see :mod:`maxp_core.base_width`."""
        return init_rescale(_ratio(width, base_width), self.b, self.role)


def _ratio(width: float, base_width: float | None) -> float:
    ratios = width_ratios({"layer": validate.positive_number(width, "width")}, base_width)
    return ratios["layer"]


def parse_parametrization(name: str) -> str:
    """Validate a parametrization name (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else None
    if key not in AB_TABLE:
        raise MaxPError(f"unknown parametrization {name!r}; expected one of {list(PARAMETRIZATIONS)}")
    return key


def default_ab(parametrization: str, role: Role | str) -> tuple[float, float]:
    """``(a, b)`` of a layer with ``role`` under a named parametrization.

    Examples:
      >>> default_ab("mup", "readout")
      (0.5, 0.5)
    """
    return AB_TABLE[parse_parametrization(parametrization)][Role.parse(role)]


def attention_exponent(parametrization: str) -> float:
    """``a`` of the attention scores' scale ``d^-a`` (``d`` the head dimension) under a named
    parametrization: 1 for muP (``1/d``: queries and keys grow aligned during training),
    0.5 (the standard ``1/sqrt(d)``) for the others.

    Examples:
      >>> attention_exponent("mup"), attention_exponent("sp")
      (1.0, 0.5)
    """
    return 1.0 if parse_parametrization(parametrization) == "mup" else 0.5


def chain_roles(num_layers: int) -> list[Role]:
    """Roles of a chain: embedding, ``num_layers - 2`` hidden, readout."""
    num_layers = layer_count(num_layers)
    return [Role.EMBEDDING] + [Role.HIDDEN] * (num_layers - 2) + [Role.READOUT]


def named_parametrization(
    parametrization: str,
    num_layers: int,
    optimizer: str = "adam",
    alignment: str = "full",
) -> list[LayerExponents]:
    """The (a, b, c) of every layer of a chain under a named parametrization.

    Args:
      parametrization: ``"sp"``, ``"ntk"``, ``"mup"`` or ``"mfp"``.
      num_layers: number of weighted layers, at least 2.
      optimizer: ``"adam"`` or ``"sgd"``.
      alignment: ``"full"`` or ``"no"``.

    Returns:
      One :class:`LayerExponents` per layer, named ``layer0, layer1, ...``.
    """
    key = parse_parametrization(parametrization)
    opt = parse_optimizer(optimizer)
    alpha = alignment_preset(alignment)[0]
    roles = chain_roles(num_layers)
    ab = [AB_TABLE[key][role] for role in roles]
    a_out, b_out = ab[-1]
    if opt == "adam":
        g = 0.0
        c_out = alpha - a_out
    else:
        c_out = alpha - 2 * a_out if num_layers == 2 else max(alpha - 2 * a_out, b_out - a_out)
        g = min(a_out + b_out, 2 * a_out + c_out)
    layers = []
    for k, (role, (a, b)) in enumerate(zip(roles, ab, strict=True)):
        if role is Role.READOUT:
            c = c_out
        elif opt == "adam":
            c = -a if role is Role.EMBEDDING else alpha - a
        else:
            c = -g - 2 * a if role is Role.EMBEDDING else alpha - g - 2 * a
        layers.append(LayerExponents(f"layer{k}", role, float(a), float(b), float(c) + 0.0))
    return layers


def named_chain(parametrization: str, num_layers: int, alignment: str = "full") -> OpGraph:
    """A chain graph with the parametrization's (a, b) and a preset alignment."""
    key = parse_parametrization(parametrization)
    ab = [AB_TABLE[key][role] for role in chain_roles(num_layers)]
    return chain(num_layers, a=[x[0] for x in ab], b=[x[1] for x in ab], alignment=alignment)
