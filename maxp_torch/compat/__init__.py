"""The published maxP's PyTorch-only public names, on this project's machinery.

The first release's :class:`Tracer` and its snapshots, one :func:`compute_alignment` for
both releases' call forms, the current release's op tracing (:func:`trace_forward`,
:func:`classify`, :func:`measure_activations`) and :func:`trace_pm_dag`. Users import
them from :mod:`maxp_torch.published`, with the rest of the published API.
"""

from maxp_torch.compat.dag import trace_pm_dag
from maxp_torch.compat.ops import ClassifiedOp, TracedOp, classify, measure_activations, trace_forward
from maxp_torch.compat.tracer import (
    LayerSnapshot,
    StepTrace,
    Tracer,
    TraceWindow,
    compute_alignment,
    compute_window_alignment,
)

__all__ = [
    "ClassifiedOp",
    "LayerSnapshot",
    "StepTrace",
    "TraceWindow",
    "TracedOp",
    "Tracer",
    "classify",
    "compute_alignment",
    "compute_window_alignment",
    "measure_activations",
    "trace_forward",
    "trace_pm_dag",
]
