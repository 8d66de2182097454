"""maxp_torch: maxP for PyTorch on the shared core.

Wrap layers in :class:`ParametrizedModule`, build a :class:`Parametrization`, create the
optimizer from its ``param_groups`` and call ``param.step(x, optimizer)`` after each
``optimizer.step()``.
"""

from maxp_torch.module import LAYER_TYPES, ParametrizedModule
from maxp_torch.parametrization import Parametrization, synthetic_graph

__all__ = ["LAYER_TYPES", "Parametrization", "ParametrizedModule", "synthetic_graph"]
