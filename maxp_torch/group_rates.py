"""maxP as the one writer of an optimizer's learning rates.

maxP writes each group's rate together with a note of what it wrote (the ``"maxp_lr"``
key, which the optimizer's own ``state_dict`` saves and restores with the rate). Before
it writes again it checks that nobody else changed the rate in between: a torch scheduler
stepped on the same optimizer would otherwise be overwritten or multiplied without a word.

It also learns which optimizer holds a parametrization's parameters by watching
optimizer steps, so that ``param.step(x)`` without an optimizer writes where training
reads (after ``optimizer.load_state_dict`` the optimizer's groups are new dicts, no
longer those of ``param.param_groups``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from maxp_core import MaxPError

#: The group key holding the rate maxP last wrote.
WRITTEN = "maxp_lr"

CHAIN_FIX = (
    "step torch schedulers through maxP instead: param.lr_scheduler(optimizer, schedule) (or "
    "ChainedMaxPScheduler(maxp, [schedule])), with a warm-up then a decay given as one "
    "SequentialLR(optimizer, [warmup, cosine], milestones=[...]), gives every layer the schedule's "
    "factor times its maxP rate; to scale every rate by hand, set lr_prefactor between steps"
)


def check_sole_writer(groups: Sequence[Mapping[str, Any]], where: str) -> None:
    """Refuse if a group's rate is not the one maxP last wrote into it.

    Examples:
      >>> groups = [{"params": [], "lr": 0.1, "layer_name": "fc"}]
      >>> write_rates(groups, {0: 0.1})
      >>> groups[0]["lr"] *= 0.5  # what a torch scheduler stepped on its own does
      >>> check_sole_writer(groups, "the optimizer")
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: group 0 ('fc') of the optimizer has lr = 0.05, but maxP last set 0.1: ...
    """
    for i, group in enumerate(groups):
        written = group.get(WRITTEN)
        if written is None:
            continue
        lr = float(group["lr"])
        if lr != written:
            raise MaxPError(
                f"group {i} ({group.get('layer_name', '?')!r}) of {where} has lr = {lr:.6g}, but maxP "
                f"last set {written:.6g}: something else writes these rates (a torch scheduler "
                "stepped on its own, or a hand edit), and maxP would overwrite or multiply it; " + CHAIN_FIX
            )


def write_rates(groups: Sequence[dict[str, Any]], rates: Mapping[int, float]) -> None:
    """Set ``groups[i]["lr"] = rate`` and note it as maxP's."""
    for i, rate in rates.items():
        groups[i]["lr"] = float(rate)
        groups[i][WRITTEN] = float(rate)


def holds(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> bool:
    """Whether ``optimizer`` updates ``parameter``."""
    return any(p is parameter for group in optimizer.param_groups for p in group["params"])


class Watcher(Protocol):
    def optimizer_stepped(self, optimizer: torch.optim.Optimizer) -> None: ...


_WATCHERS: weakref.WeakSet[Any] = weakref.WeakSet()
_HOOK: list[Any] = []


def watch_optimizer_steps(watcher: Watcher) -> None:
    """Call ``watcher.optimizer_stepped(optimizer)`` after every optimizer step, while it lives."""
    _WATCHERS.add(watcher)
    if not _HOOK:
        _HOOK.append(register_optimizer_step_post_hook(_notify))


def _notify(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for watcher in list(_WATCHERS):
        watcher.optimizer_stepped(optimizer)


class StepTracker:
    """The last optimizer seen stepping a given parameter (held weakly)."""

    def __init__(self) -> None:
        self._bound: weakref.ref[torch.optim.Optimizer] | None = None
        self._others: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()

    def notice(self, optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> None:
        if self.optimizer is optimizer or optimizer in self._others:
            return
        if holds(optimizer, parameter):
            self._bound = weakref.ref(optimizer)
        else:
            self._others.add(optimizer)

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return None if self._bound is None else self._bound()
