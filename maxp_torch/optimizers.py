"""Which LP an optimizer needs (Adam-like or SGD-like), seen through the wrappers trainers add."""

from __future__ import annotations

from typing import Any

import torch

from maxp_core import MaxPError
from maxp_core.formulation import parse_optimizer

#: Attributes through which optimizer wrappers (accelerate's ``AcceleratedOptimizer``,
#: Lightning's ``LightningOptimizer``, ...) hold the optimizer that does the work.
WRAPPED_ATTRIBUTES = ("optimizer", "_optimizer")


def innermost_optimizer(optimizer: Any) -> Any:
    """The optimizer inside any wrappers that hold one as ``.optimizer`` or ``._optimizer``.

    A wrapper is anything holding an object with ``param_groups`` under one of those names.

    Examples:
      >>> inner = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
      >>> class Wrapper:
      ...     def __init__(self, optimizer):
      ...         self.optimizer = optimizer
      ...         self.param_groups = optimizer.param_groups
      >>> innermost_optimizer(Wrapper(Wrapper(inner))) is inner
      True
    """
    seen = {id(optimizer)}
    current = optimizer
    while True:
        inner = next(
            (
                getattr(current, name)
                for name in WRAPPED_ATTRIBUTES
                if hasattr(getattr(current, name, None), "param_groups")
            ),
            None,
        )
        if inner is None or id(inner) in seen:
            return current
        seen.add(id(inner))
        current = inner


def known_kind(optimizer: Any) -> str | None:
    """``"adam"``, ``"sgd"``, or ``None`` for a class nobody declared (wrappers seen through)."""
    for cls in type(innermost_optimizer(optimizer)).__mro__:
        if cls in OPTIMIZER_KINDS:
            return OPTIMIZER_KINDS[cls]
    return None


def optimizer_kind(optimizer: Any) -> str:
    """``"adam"`` or ``"sgd"``: which LP an optimizer's class needs.

    Known classes are the torch Adam family (Adam, AdamW, Adamax, NAdam, RAdam, SparseAdam)
    and SGD; others must be declared with :func:`register_optimizer`. Wrappers that hold
    the optimizer doing the work (accelerate's ``AcceleratedOptimizer``, Lightning's
    ``LightningOptimizer``) are seen through.

    Examples:
      >>> optimizer_kind(torch.optim.AdamW([torch.zeros(1, requires_grad=True)]))
      'adam'
    """
    kind = known_kind(optimizer)
    if kind is not None:
        return kind
    name = type(innermost_optimizer(optimizer)).__name__
    raise MaxPError(
        f"maxP does not know whether {name} behaves like Adam (per-coordinate "
        "normalised updates) or like SGD; declare it with maxp_torch.register_optimizer("
        f"{name}, 'adam') or (..., 'sgd')"
    )


def register_optimizer(cls: type, kind: str) -> None:
    """Declare an optimizer class Adam-like (``"adam"``) or SGD-like (``"sgd"``) for the LP."""
    if not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
        raise MaxPError(f"register_optimizer takes a torch.optim.Optimizer subclass, got {cls!r}")
    OPTIMIZER_KINDS[cls] = parse_optimizer(kind)


OPTIMIZER_KINDS: dict[type, str] = {
    torch.optim.Adam: "adam",
    torch.optim.AdamW: "adam",
    torch.optim.Adamax: "adam",
    torch.optim.NAdam: "adam",
    torch.optim.RAdam: "adam",
    torch.optim.SparseAdam: "adam",
    torch.optim.SGD: "sgd",
}
