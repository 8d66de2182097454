"""maxp_torch: maxP for PyTorch on the shared core.

Give the layers roles by name with :class:`Rule` (``Parametrization(model, rules=...)``,
hooks only: the model's classes and ``state_dict`` keys stay) or wrap them in
:class:`ParametrizedModule`, build a :class:`Parametrization`, create the optimizer from
its ``param_groups`` and call ``param.step(x, optimizer)`` after each ``optimizer.step()``.
Plain ``nn.Linear`` stacks can use the first release's API:
:func:`initialize_abc_weights`, :func:`create_param_groups` and :class:`MaxPScheduler`.

The published maxP's API (both releases) lives in :mod:`maxp_torch.published`, so
switching is a change of the import: ``from maxp_torch import published as maxp``. Its
published-only names (``OpGraph``, ``find_c``, ``Tracer``, ...) are not part of this
namespace, where ``OpGraph`` would clash with :class:`maxp_core.OpGraph`; reading them
from here still works and warns.
"""

import importlib
import warnings
from typing import Any

from maxp_torch import optim
from maxp_torch.chained import ChainedMaxPScheduler
from maxp_torch.diagnose import diagnose_axis, plot_axis, print_axis
from maxp_torch.layers import conv_patches
from maxp_torch.module import LAYER_TYPES, ParametrizedModule, ScaledLinear
from maxp_torch.optimizers import optimizer_kind, register_optimizer
from maxp_torch.parametrization import Parametrization, measurement_mode, synthetic_graph
from maxp_torch.rules import Rule, apply_rules
from maxp_torch.scheduler import (
    MaxPScheduler,
    create_param_groups,
    get_linear_layers,
    initialize_abc_weights,
    linear_layers,
)
from maxp_torch.width_rules import rules_from_widths

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
    "optim",
    "optimizer_kind",
    "plot_axis",
    "print_axis",
    "register_optimizer",
    "rules_from_widths",
    "synthetic_graph",
]

_WARNED: set[str] = set()


def __getattr__(name: str) -> Any:
    """Forward the published maxP's own names to :mod:`maxp_torch.published`, with a warning."""
    if name.startswith("_") or name == "published":  # submodules and dunders: the import system's
        raise AttributeError(f"module 'maxp_torch' has no attribute {name!r}")
    published = importlib.import_module("maxp_torch.published")
    if name in __all__ or name not in published.__all__:  # only the published maxP's own names
        raise AttributeError(f"module 'maxp_torch' has no attribute {name!r}")

    if name in _WARNED:  # `from maxp_torch import X` reads the name twice
        return getattr(published, name)
    _WARNED.add(name)
    warnings.warn(
        f"maxp_torch.{name} is the published maxP's {name}; it lives in maxp_torch.published: "
        f"use `from maxp_torch import published as maxp` (then maxp.{name}) or "
        f"`from maxp_torch.published import {name}`",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(published, name)
