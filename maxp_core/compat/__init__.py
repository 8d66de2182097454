"""The published maxP's framework-free entry points, on this project's solver.

Named parametrization tables, the chain and graph solvers with their published signatures
and return values, the published graph classes and the alignment of one layer from its
tensors. Each is a thin layer over :mod:`maxp_core`; where the published behaviour and
this project's differ on purpose, the docstring says so. PyTorch users import them from
:mod:`maxp_torch.published`, with the rest of the published API.
"""

from maxp_core.compat.abc import ABCParametrization, get_abc_parametrization
from maxp_core.compat.alignment import compute_alignment, compute_alignments_for_pms
from maxp_core.compat.dag import DagNode, MergeType, OpGraph, from_core, to_core
from maxp_core.compat.solver import (
    find_c,
    find_c_adam,
    find_c_dag,
    find_c_dag_adam,
    find_c_dag_sgd,
    find_c_sgd,
)

__all__ = [
    "ABCParametrization",
    "DagNode",
    "MergeType",
    "OpGraph",
    "compute_alignment",
    "compute_alignments_for_pms",
    "find_c",
    "find_c_adam",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "find_c_sgd",
    "from_core",
    "get_abc_parametrization",
    "to_core",
]
