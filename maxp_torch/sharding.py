"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): DTensors, read and written whole.

Under ``fully_shard`` each parameter is a ``DTensor`` holding a slice of rows on each
rank. maxP re-initialises a sharded weight by drawing the full weight from its seeded
generator on every rank (the same numbers everywhere) and keeping each rank's slice,
and measures a sharded weight on its full value (``full_tensor()``, an all-gather every
rank takes part in, at each re-solve only). Forward hooks see the gathered weights and
each rank's own inputs, and the measured alignments are averaged over ranks, so every
rank gets the same learning rates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from maxp_core import MaxPError

#: Not imported by ``import maxp_torch``: it takes about a second (sympy and the symbolic-shape
#: machinery come with it), and no DTensor can exist before it is imported.
DTENSOR_MODULE = "torch.distributed.tensor"


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter of an FSDP2 model)."""
    module = sys.modules.get(DTENSOR_MODULE)
    return module is not None and isinstance(tensor, module.DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a possibly sharded tensor, as a plain tensor (a collective if sharded)."""
    return cast(Any, tensor).full_tensor() if is_sharded(tensor) else tensor


def assign(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Write the full ``value`` into ``parameter``, keeping only this rank's slice if it is sharded.

    ``value`` must be the same on every rank; nothing is communicated.
    """
    if is_sharded(parameter):
        from torch.distributed.tensor import distribute_tensor

        sharded = cast(Any, parameter)
        value = distribute_tensor(value, sharded.device_mesh, sharded.placements, src_data_rank=None)
    parameter.copy_(value)


def reshard(model: nn.Module) -> None:
    """Return an FSDP2 model's parameters to their shards after a forward pass with no backward.

    A no-grad pass leaves the parameters of the root group gathered (plain tensors, other
    objects than the optimizer holds) until something reshards them.
    """
    if DTENSOR_MODULE not in sys.modules:  # nothing can be sharded: no walk over the modules
        return
    reshard_modules(model.modules())


def reshard_modules(modules: Iterable[nn.Module]) -> None:
    """:func:`reshard` of the FSDP2 modules among ``modules`` (a walk over a model done anyway)."""
    if DTENSOR_MODULE not in sys.modules:
        return
    for module in modules:
        if _reshards(type(module)):
            module.reshard()  # type: ignore[operator]


_RESHARDS: dict[type, bool] = {}


def _reshards(cls: type) -> bool:
    """Whether modules of ``cls`` are FSDP2 modules (looked up once per class: a missing attribute
    of a module instance costs an exception, and a walk meets the same few classes)."""
    if cls not in _RESHARDS:
        _RESHARDS[cls] = callable(getattr(cls, "reshard", None)) and hasattr(cls, "unshard")
    return _RESHARDS[cls]


def check_live(model: nn.Module, groups: Iterable[dict[str, Any]], where: str) -> None:
    """Refuse parameter groups that hold tensors the model no longer has.

    ``fully_shard`` replaces every parameter with a new ``DTensor``: groups built before it
    would make the optimizer update tensors the model no longer uses.
    """
    live = {id(p) for p in model.parameters()}
    stale = [g.get("name", "?") for g in groups if any(id(p) not in live for p in g["params"])]
    if stale:
        raise MaxPError(
            f"{where}: the param groups {stale[:5]}{' ...' if len(stale) > 5 else ''} hold parameters the "
            "model no longer has; was it sharded (fully_shard) or were its parameters replaced after the "
            "Parametrization was built? Build the Parametrization after fully_shard and the optimizer "
            "from its param_groups"
        )
