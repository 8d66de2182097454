"""Where a :class:`~maxp_torch.Parametrization`'s rates go: its ``param_groups`` and the optimizer.

The optimizer is the one given to ``param.step(x, optimizer)``, else the last one seen
stepping the model's parameters (optimizer step hooks), else none: then the rates go into
``param.param_groups``, which are the optimizer's groups when it was built from them. Every
write checks that maxP is the only writer (:func:`~maxp_torch.group_rates.check_sole_writer`)
and that the optimizer is of the kind the LP was solved for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from maxp_core import MaxPError, warn_user
from maxp_torch import sharding
from maxp_torch.discovery import unwrap
from maxp_torch.group_rates import StepTracker, check_sole_writer, watch_optimizer_steps, write_rates
from maxp_torch.optimizers import innermost_optimizer, known_kind, optimizer_kind

if TYPE_CHECKING:
    from maxp_torch.parametrization import Parametrization


class OptimizerLink:
    """Writes a parametrization's rates and exponents where training reads them."""

    def __init__(self, param: Parametrization) -> None:
        self.param = param
        self._stepped = StepTracker()
        self._checked: torch.optim.Optimizer | None = None
        watch_optimizer_steps(self)

    def optimizer_stepped(self, optimizer: torch.optim.Optimizer) -> None:
        """Remember ``optimizer`` if it holds the model's parameters (called after every optimizer step)."""
        layers = self.param._layers
        weight = layers.modules[layers.weighted[0]].weight
        assert weight is not None
        self._stepped.notice(optimizer, weight)

    def write(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The current rates into ``param.param_groups`` and the optimizer (given, or seen stepping)."""
        param = self.param
        target = optimizer if optimizer is not None else self._stepped.optimizer
        if optimizer is None and target is not None and not self.built_from_groups(target):
            warn_user(
                f"the {type(innermost_optimizer(target)).__name__} stepping this model was not built from "
                "param.param_groups, so param.step(x) leaves its rates alone: the new rates are in "
                "param.param_groups and get_last_lr(); copy them over, or build it from param.param_groups"
            )
            target = None
        if target is None:
            check_sole_writer(param.param_groups, "param.param_groups")
            self.refresh_groups()
            return
        groups = target.param_groups
        self.check_group_names(groups)
        self.check_optimizer(target)
        check_sole_writer(groups, f"the optimizer ({type(target).__name__})")
        self.refresh_groups()
        write_rates(groups, {i: ours["lr"] for i, ours in enumerate(param.param_groups)})
        for ours, theirs in zip(param.param_groups, groups, strict=True):
            if "c" in ours:
                theirs["c"] = ours["c"]

    def refresh_groups(self) -> None:
        """Write the current rates and exponents into ``param.param_groups`` (as the published maxP does)."""
        groups = self.param.param_groups
        write_rates(groups, dict(enumerate(self.rates())))
        for group, c in zip(groups, self.exponents(), strict=True):
            if c is not None:
                group["c"] = c

    def rates(self) -> list[float]:
        """maxP's current rate of every group of ``param_groups`` (``"_other"``: ``lr_prefactor``)."""
        rates = self.param.get_last_lr() + self.param._rates.vector_rates()
        return rates + [self.param.lr_prefactor] * (len(self.param.param_groups) - len(rates))

    def exponents(self) -> list[float | None]:
        """Each group's current ``c`` (``None`` for ``"_other"``)."""
        param = self.param
        exponents: list[float | None] = [param._rates.group_c(g) for g in range(len(param.groups))]
        exponents += param._rates.vector_exponents()
        return exponents + [None] * (len(param.param_groups) - len(exponents))

    def managed_groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """The optimizer's groups maxP sets (all of them: the layers' and ``"_other"``), checked."""
        self.check_group_names(optimizer.param_groups)
        self.check_optimizer(optimizer)
        return list(range(len(self.param.param_groups)))

    def built_from_groups(self, optimizer: torch.optim.Optimizer) -> bool:
        names = [g.get("layer_name") for g in optimizer.param_groups]
        return names == [g["layer_name"] for g in self.param.param_groups]

    def check_group_names(self, groups: Sequence[Mapping[str, Any]]) -> None:
        expected = [g["layer_name"] for g in self.param.param_groups]
        names = [g.get("layer_name") for g in groups]
        if names != expected:
            raise MaxPError(
                f"the optimizer's param groups {names} do not match the parametrization's {expected}; "
                "build the optimizer from param.param_groups"
            )

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer must be of the kind the LP was solved for (once per optimizer)."""
        if self._checked is optimizer:
            return
        param = self.param
        sharding.check_live(unwrap(param.model), optimizer.param_groups, "step(x, optimizer)")
        declared = param.optimizer_type
        kind = (
            optimizer_kind(optimizer) if known_kind(optimizer) or not param._declared_optimizer else declared
        )
        if kind != declared:
            raise MaxPError(
                f"the learning rates were solved for optimizer_type={declared!r} but the "
                f"optimizer is {type(innermost_optimizer(optimizer)).__name__} ({kind}-like); pass "
                f"optimizer_type={kind!r}"
            )
        self._checked = optimizer
