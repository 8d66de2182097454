"""maxp_jax: maxP for JAX, as optax transformations.

Describe which parameter leaves are layers with a :class:`MaxPSpec`, re-initialise
them with :func:`abc_init`, and chain :func:`scale_by_maxp` into any optax optimizer
(or use :func:`adamw` / :func:`sgd`).

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> import maxp_jax
  >>> params = {"w_in": jnp.zeros((8, 128)), "w_h": jnp.zeros((128, 128)), "w_out": jnp.zeros((128, 4))}
  >>> spec = maxp_jax.MaxPSpec(params, [maxp_jax.Rule("w_in", "embedding"),
  ...                                   maxp_jax.Rule("w_h", "hidden"),
  ...                                   maxp_jax.Rule("w_out", "readout")])
  >>> params = maxp_jax.abc_init(spec, params, jax.random.key(0))
  >>> tx = maxp_jax.adamw(spec, learning_rate=1e-2)
  >>> opt_state = tx.init(params)
"""

from maxp_jax.between_steps import SolveBetweenSteps
from maxp_jax.capture import LayerInputs
from maxp_jax.diagnose import coord_check
from maxp_jax.dynamic import DynamicAlignment
from maxp_jax.graph import activation, discover_graph
from maxp_jax.init import abc_init
from maxp_jax.spec import LAYOUTS, Layer, MaxPSpec, Rule, TiedUses, path_string
from maxp_jax.transform import (
    FACTOR_DTYPE,
    ScaleByMaxPState,
    adamw,
    find_maxp_state,
    metrics,
    metrics_log,
    scale_by_maxp,
    set_factors,
    sgd,
    wsd_schedule,
)
from maxp_jax.width_rules import format_rules, rules_from_widths

__all__ = [
    "FACTOR_DTYPE",
    "LAYOUTS",
    "DynamicAlignment",
    "Layer",
    "LayerInputs",
    "MaxPSpec",
    "Rule",
    "ScaleByMaxPState",
    "SolveBetweenSteps",
    "TiedUses",
    "abc_init",
    "activation",
    "adamw",
    "coord_check",
    "discover_graph",
    "find_maxp_state",
    "format_rules",
    "metrics",
    "metrics_log",
    "path_string",
    "rules_from_widths",
    "scale_by_maxp",
    "set_factors",
    "sgd",
    "wsd_schedule",
]
