"""maxp_torch: maxP for PyTorch on the shared core.

Give the layers roles by name with :class:`Rule` (``Parametrization(model, rules=...)``,
hooks only: the model's classes and ``state_dict`` keys stay) or wrap them in
:class:`ParametrizedModule`, build a :class:`Parametrization`, create the optimizer from
its ``param_groups`` and call ``param.step(x, optimizer)`` after each ``optimizer.step()``.
Plain ``nn.Linear`` stacks can use the first release's API:
:func:`initialize_abc_weights`, :func:`create_param_groups` and :class:`MaxPScheduler`.
"""

from maxp_torch.diagnose import diagnose_axis, plot_axis, print_axis
from maxp_torch.layers import conv_patches
from maxp_torch.module import LAYER_TYPES, ParametrizedModule, ScaledLinear
from maxp_torch.parametrization import (
    Parametrization,
    measurement_mode,
    optimizer_kind,
    register_optimizer,
    synthetic_graph,
)
from maxp_torch.rules import Rule, apply_rules
from maxp_torch.scheduler import (
    ChainedMaxPScheduler,
    MaxPScheduler,
    create_param_groups,
    get_linear_layers,
    initialize_abc_weights,
    linear_layers,
)

__all__ = [
    "LAYER_TYPES",
    "ChainedMaxPScheduler",
    "MaxPScheduler",
    "Parametrization",
    "ParametrizedModule",
    "Rule",
    "ScaledLinear",
    "apply_rules",
    "conv_patches",
    "create_param_groups",
    "diagnose_axis",
    "get_linear_layers",
    "initialize_abc_weights",
    "linear_layers",
    "measurement_mode",
    "optimizer_kind",
    "plot_axis",
    "print_axis",
    "register_optimizer",
    "synthetic_graph",
]
