"""The learning rate of a maxP layer's biases and other vectors (gains).

``"layer"`` (the default, as in the published maxP): a bias trains at its layer's rate. That
is stable, but where the layer's fan-in grows the bias's contribution to the output moves as
``1/n``: a bias is a weight on a constant input of size 1, where the layer's weight sums
``n`` inputs. ``"constant-input"`` gives it the rate that keeps its contribution's updates
width-independent (``python -m benchmarks.bias_rule`` measures both):

- Adam: ``c_bias = -a``, with ``a`` the exponent of the multiplier the bias is multiplied by
  (0 when the multiplier is folded into the weight): the update of ``n^-a * b`` is then
  ``Theta(1)`` whatever the alignment (muP's "constant rate for biases" once the multiplier
  is accounted for);
- SGD: ``c_bias = c_full - 1`` for a layer whose fan-in grows and ``c_full`` for an
  embedding, with ``c_full`` the layer's ``c`` under full alignment (the bias's own update is
  always fully aligned; the backward scale it meets is the one that ``c`` accounts for).

Examples:
  >>> vector_exponent("constant-input", "adam", "hidden", a=0.0, c=1.0, c_full=1.0)
  -0.0
  >>> vector_exponent("constant-input", "sgd", "readout", a=0.5, c=0.0, c_full=0.0)
  -1.0
  >>> vector_exponent("layer", "adam", "hidden", a=0.0, c=0.8, c_full=1.0)
  0.8
"""

from __future__ import annotations

from collections.abc import Sequence

from maxp_core import validate
from maxp_core.roles import Role

BIAS_RULES = ("layer", "constant-input")
"""The rules a layer's biases and gains can train by."""

#: The alignments under which every term of a layer's update adds up: the worst case.
FULL_ALIGNMENT = {"alpha": 1.0, "omega": 0.5, "u": 1.0}


def check_bias_rule(rule: object) -> str:
    """``rule`` validated against :data:`BIAS_RULES`."""
    return validate.choice(rule, "bias_rule", BIAS_RULES)


def vector_exponent(rule: str, optimizer: str, role: Role | str, a: float, c: float, c_full: float) -> float:
    """The learning-rate exponent of a layer's vectors (see the module).

    Args:
      rule: one of :data:`BIAS_RULES`.
      optimizer: ``"adam"`` or ``"sgd"``.
      role: the layer's role.
      a: the exponent of the multiplier applied to the layer's output, biases included (0
        when it is folded into the weight).
      c: the layer's current ``c`` (as applied).
      c_full: the layer's ``c`` under full alignment (as applied).
    """
    if rule == "layer":
        return c
    if optimizer == "adam":
        return -a
    return c_full if Role.parse(role) is Role.EMBEDDING else c_full - 1.0


def full_alignment(names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``alpha``, ``omega`` and ``u`` keywords for ``StabilityLP.solve`` that set every node
    of ``names`` to full alignment."""
    return {key: dict.fromkeys(names, value) for key, value in FULL_ALIGNMENT.items()}
