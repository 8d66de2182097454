"""maxp_torch: maxP for PyTorch on the shared core.

Give the layers roles by name with :class:`Rule` (``Parametrization(model, rules=...)``,
hooks only: the model's classes and ``state_dict`` keys stay) or wrap them in
:class:`ParametrizedModule`, build a :class:`Parametrization`, create the optimizer from
its ``param_groups`` and call ``param.step(x, optimizer)`` after each ``optimizer.step()``.
Plain ``nn.Linear`` stacks can use the first release's API:
:func:`initialize_abc_weights`, :func:`create_param_groups` and :class:`MaxPScheduler`.

Every public name of the published maxP (both releases) is exported here, so switching
is a change of the import: ``import maxp_torch as maxp``. Where the behaviour differs on
purpose, the README's "Differences from the published maxP" says how and why.
"""

from maxp_core.compat import (
    ABCParametrization,
    DagNode,
    MergeType,
    OpGraph,
    compute_alignments_for_pms,
    find_c,
    find_c_adam,
    find_c_dag,
    find_c_dag_adam,
    find_c_dag_sgd,
    find_c_sgd,
    get_abc_parametrization,
)
from maxp_torch import optim
from maxp_torch.chained import ChainedMaxPScheduler
from maxp_torch.compat import (
    ClassifiedOp,
    LayerSnapshot,
    StepTrace,
    TracedOp,
    Tracer,
    TraceWindow,
    classify,
    compute_alignment,
    measure_activations,
    trace_forward,
    trace_pm_dag,
)
from maxp_torch.diagnose import diagnose_axis, op_label, plot_axis, print_axis
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

__all__ = [
    "LAYER_TYPES",
    "ABCParametrization",
    "ChainedMaxPScheduler",
    "ClassifiedOp",
    "DagNode",
    "LayerSnapshot",
    "MaxPScheduler",
    "MergeType",
    "OpGraph",
    "Parametrization",
    "ParametrizedModule",
    "Rule",
    "ScaledLinear",
    "StepTrace",
    "TraceWindow",
    "TracedOp",
    "Tracer",
    "apply_rules",
    "classify",
    "compute_alignment",
    "compute_alignments_for_pms",
    "conv_patches",
    "create_param_groups",
    "diagnose_axis",
    "find_c",
    "find_c_adam",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "find_c_sgd",
    "get_abc_parametrization",
    "get_linear_layers",
    "initialize_abc_weights",
    "linear_layers",
    "measure_activations",
    "measurement_mode",
    "op_label",
    "optim",
    "optimizer_kind",
    "plot_axis",
    "print_axis",
    "register_optimizer",
    "synthetic_graph",
    "trace_forward",
    "trace_pm_dag",
]
