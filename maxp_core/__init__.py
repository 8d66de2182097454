"""maxp_core: the maxP linear program, named parametrizations and alignment maths.

Only numpy, scipy, cvxpy and HiGHS are needed; no deep-learning framework is imported.
The adapters ``maxp_jax`` and ``maxp_torch`` build on what is exported here.

Examples:
  >>> import maxp_core as mc
  >>> sol = mc.StabilityLP(mc.chain(4, alignment="full"), optimizer="adam").solve()
  >>> sol.c
  {'layer0': 0.5, 'layer1': 1.0, 'layer2': 1.0, 'layer3': 0.5}
"""

from maxp_core.alignment import (
    Alignment,
    alignment,
    alignment_of_layers,
    alignment_of_stacks,
    fill_missing,
    groups_of_equal_shape,
    layer_alignment,
    log_rms_alignment,
    spectral_alignment,
)
from maxp_core.base_width import width_ratios
from maxp_core.depth import (
    BranchScaling,
    ChenScaling,
    DepthFactors,
    PathStats,
    chen_lr_factor,
    depth_factors,
    init_in_degrees,
    path_statistics,
    residual_branch_outputs,
)
from maxp_core.errors import (
    CallOrderError,
    GraphError,
    InfeasibleError,
    MaxPError,
    SolverError,
    StabilityError,
)
from maxp_core.graph import ALIGNMENT_PRESETS, Node, OpGraph, alignment_preset, chain
from maxp_core.lp import SOLVERS, Solution, StabilityLP
from maxp_core.metrics import MetricsLog, MetricsRun, metrics_record, plot_metrics, read_metrics
from maxp_core.parametrizations import (
    PARAMETRIZATIONS,
    LayerExponents,
    default_ab,
    named_chain,
    named_parametrization,
)
from maxp_core.resolve import MaxPWarning, Outcome, Resolver, unused_alignments, warn_user
from maxp_core.roles import Role, check_init_stability, role_from_position
from maxp_core.schedule import SolveSchedule, WSDSchedule, check_ema_decay, ema_update, wsd_multiplier
from maxp_core.tables import AlignmentTable, layer_kind, measure_table

__version__ = "0.1.0"

__all__ = [
    "ALIGNMENT_PRESETS",
    "PARAMETRIZATIONS",
    "SOLVERS",
    "Alignment",
    "AlignmentTable",
    "BranchScaling",
    "CallOrderError",
    "ChenScaling",
    "DepthFactors",
    "GraphError",
    "InfeasibleError",
    "LayerExponents",
    "MaxPError",
    "MaxPWarning",
    "MetricsLog",
    "MetricsRun",
    "Node",
    "OpGraph",
    "Outcome",
    "PathStats",
    "Resolver",
    "Role",
    "Solution",
    "SolveSchedule",
    "SolverError",
    "StabilityError",
    "StabilityLP",
    "WSDSchedule",
    "alignment",
    "alignment_of_layers",
    "alignment_of_stacks",
    "alignment_preset",
    "chain",
    "check_ema_decay",
    "check_init_stability",
    "chen_lr_factor",
    "default_ab",
    "depth_factors",
    "ema_update",
    "fill_missing",
    "groups_of_equal_shape",
    "init_in_degrees",
    "layer_alignment",
    "layer_kind",
    "log_rms_alignment",
    "measure_table",
    "metrics_record",
    "named_chain",
    "named_parametrization",
    "path_statistics",
    "plot_metrics",
    "read_metrics",
    "residual_branch_outputs",
    "role_from_position",
    "spectral_alignment",
    "unused_alignments",
    "warn_user",
    "width_ratios",
    "wsd_multiplier",
]
