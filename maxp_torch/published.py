"""The published maxP's public API, both releases, in one namespace.

Switching from the published maxP is a change of the import line::

    from maxp_torch import published as maxp       # was: import maxp / import maxp_new as maxp
    from maxp_torch.published import find_c        # was: from maxp import find_c

Every public name of the first release (``MaxPScheduler``, ``Tracer``, ``find_c``, ...)
and of the current one (``Parametrization``, ``OpGraph``, ``trace_pm_dag``, ...) is here.
Names that mean the same thing in maxp (``Parametrization``, ``ParametrizedModule``,
``MaxPScheduler``, ...) are the very objects :mod:`maxp_torch` exports; the rest are the
published forms, which maxp's own API does not need: ``OpGraph`` here is the published
graph class, where :class:`maxp_core.OpGraph` is the LP's graph (``to_core``/``from_core``
convert), and ``find_c`` takes both published call forms.

Example:
    >>> from maxp_torch import published as maxp
    >>> graph = maxp.OpGraph()
    >>> import maxp_core
    >>> maxp.OpGraph is maxp_core.OpGraph
    False
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
    from_core,
    get_abc_parametrization,
    to_core,
)
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
from maxp_torch.compat.diagnose import op_label
from maxp_torch.diagnose import diagnose_axis, plot_axis, print_axis
from maxp_torch.module import ParametrizedModule, ScaledLinear
from maxp_torch.parametrization import Parametrization
from maxp_torch.scheduler import (
    MaxPScheduler,
    create_param_groups,
    get_linear_layers,
    initialize_abc_weights,
)

FIRST_RELEASE = (
    "ABCParametrization",
    "ChainedMaxPScheduler",
    "LayerSnapshot",
    "MaxPScheduler",
    "ScaledLinear",
    "StepTrace",
    "TraceWindow",
    "Tracer",
    "compute_alignment",
    "create_param_groups",
    "find_c",
    "find_c_adam",
    "find_c_sgd",
    "get_abc_parametrization",
    "get_linear_layers",
    "initialize_abc_weights",
)
"""Public names of the published first release (``maxp``)."""

CURRENT_RELEASE = (
    "ClassifiedOp",
    "DagNode",
    "MergeType",
    "OpGraph",
    "Parametrization",
    "ParametrizedModule",
    "TracedOp",
    "classify",
    "compute_alignment",
    "compute_alignments_for_pms",
    "diagnose_axis",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "measure_activations",
    "op_label",
    "plot_axis",
    "print_axis",
    "trace_forward",
    "trace_pm_dag",
)
"""Public names of the published current release (``maxp_new``)."""

__all__ = [
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
    "ScaledLinear",
    "StepTrace",
    "TraceWindow",
    "TracedOp",
    "Tracer",
    "classify",
    "compute_alignment",
    "compute_alignments_for_pms",
    "create_param_groups",
    "diagnose_axis",
    "find_c",
    "find_c_adam",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "find_c_sgd",
    "from_core",
    "get_abc_parametrization",
    "get_linear_layers",
    "initialize_abc_weights",
    "measure_activations",
    "op_label",
    "plot_axis",
    "print_axis",
    "to_core",
    "trace_forward",
    "trace_pm_dag",
]
