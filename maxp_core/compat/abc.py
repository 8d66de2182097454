"""The first release's named abc-parametrizations: ``get_abc_parametrization``.

The published helper returned the ``(a, b, c)`` exponents of a chain of ``n_layers``
weighted layers (first = embedding, middle = hidden, last = readout) from a fixed table.
Here ``a`` and ``b`` come from :data:`maxp_core.parametrizations.AB_TABLE` (the same
values as the published table) and ``c`` is solved by :class:`maxp_core.StabilityLP` on the
chain with the alignment preset, so the two can never drift apart.

Examples:
  >>> p = get_abc_parametrization(4, "mup")
  >>> p.al, p.cl, p.name
  ([-0.5, 0.0, 0.0, 0.5], [0.5, 1.0, 1.0, 0.5], 'mup-adam-full')
"""

from __future__ import annotations

from dataclasses import dataclass

from maxp_core.errors import MaxPError
from maxp_core.formulation import OPTIMIZERS
from maxp_core.graph import ALIGNMENT_PRESETS
from maxp_core.lp import StabilityLP
from maxp_core.parametrizations import PARAMETRIZATIONS, named_chain, named_parametrization

__all__ = ["ABCParametrization", "get_abc_parametrization"]

#: ``c`` is rounded to this many decimals: the LP's optimal face is met to about 1e-9.
_DECIMALS = 8
#: The depth whose first and last ``c`` anchor the two-layer SGD tie (see the docstring).
_ANCHOR_DEPTH = 3


@dataclass
class ABCParametrization:
    """The exponents of every layer of a chain, first layer first.

    Attributes:
      al: output-multiplier exponents ``a_l`` (the output is scaled by ``n^-a``).
      bl: initialization exponents ``b_l`` (weights drawn with std ``n^-b``).
      cl: learning-rate exponents ``c_l`` (``lr = prefactor * n^-c``).
      name: ``"<parametrization>-<optimizer>-<alignment>"``, e.g. ``"mup-adam-full"``.
    """

    al: list[float]
    bl: list[float]
    cl: list[float]
    name: str


def get_abc_parametrization(
    n_layers: int,
    parametrization: str = "mup",
    optimizer: str = "adam",
    alignment: str = "full",
) -> ABCParametrization:
    """The ``(a, b, c)`` of a chain of ``n_layers`` weighted layers under a named parametrization.

    Names are case-insensitive. ``c`` is the LP's answer for the chain with the alignment
    preset (``"full"``: ``(alpha, omega, u) = (1, 0.5, 1)``, ``"no"``: all 0.5), rounded to 8
    decimals (the solver meets the optimum to about 1e-9).

    Differences from the published table, on purpose:

    * ``mfp``/``adam``/``no``, last layer: the published table says ``c = 0.5``; the LP
      (the published solver included) gives ``-0.5``: the readout needs only
      ``a + c - alpha >= 0`` with ``a = 1``, ``alpha = 0.5``. This returns ``-0.5``.
    * With two layers and SGD the optimum is a segment: lowering the readout's ``c``
      lowers the gradient scale and raises the embedding's ``c`` by as much. The table
      lists one value per position whatever the depth, so the LP is re-solved with the
      core's ``"preset"`` tie rule anchored at the first and last ``c`` of a three-layer
      chain; that point lies on the two-layer optimum and equals the table.

    Args:
      n_layers: number of weighted layers, at least 2.
      parametrization: ``"sp"``, ``"mup"``, ``"ntk"`` or ``"mfp"``.
      optimizer: ``"adam"`` or ``"sgd"``.
      alignment: ``"full"`` or ``"no"``.

    Returns:
      The :class:`ABCParametrization` of the chain.

    Raises:
      MaxPError: (a ``ValueError``) for ``n_layers < 2`` or an unknown name.

    Examples:
      >>> get_abc_parametrization(2, "MUP", "Adam", "FULL")
      ABCParametrization(al=[-0.5, 0.5], bl=[0.5, 0.5], cl=[0.5, 0.5], name='mup-adam-full')
      >>> get_abc_parametrization(1)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: n_layers must be >= 2, got 1: ...
    """
    depth = _check_depth(n_layers)
    param = _check_name(parametrization, "parametrization", PARAMETRIZATIONS)
    opt = _check_name(optimizer, "optimizer", OPTIMIZERS)
    align = _check_name(alignment, "alignment", tuple(ALIGNMENT_PRESETS))
    layers = named_parametrization(param, depth, opt, align)
    return ABCParametrization(
        al=[layer.a for layer in layers],
        bl=[layer.b for layer in layers],
        cl=_solved_c(param, depth, opt, align),
        name=f"{param}-{opt}-{align}",
    )


def _check_depth(n_layers: object) -> int:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 2:
        raise MaxPError(
            f"n_layers must be >= 2, got {n_layers!r}: an integer counting the embedding, "
            "the hidden layers and the readout"
        )
    return n_layers


def _check_name(value: object, what: str, valid: tuple[str, ...]) -> str:
    key = value.lower() if isinstance(value, str) else None
    if key not in valid:
        supported = ", ".join(repr(v) for v in valid)
        raise MaxPError(f"Unknown {what} {value!r}. Supported: {supported}")
    return key


def _solved_c(parametrization: str, n_layers: int, optimizer: str, alignment: str) -> list[float]:
    """``c`` of the chain from the LP; two-layer SGD ties anchored as the docstring says."""
    graph = named_chain(parametrization, n_layers, alignment)
    lp = StabilityLP(graph, optimizer)
    if optimizer == "sgd" and n_layers == 2:
        deeper = StabilityLP(named_chain(parametrization, _ANCHOR_DEPTH, alignment), optimizer).solve()
        first, *_, last = deeper.c.values()
        lp.reference_c = dict(zip(graph.names, (first, last), strict=True))
    return [round(value, _DECIMALS) + 0.0 for value in lp.solve().c.values()]
