"""``ChainedMaxPScheduler``: torch learning-rate schedules on top of maxP's per-layer rates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

from maxp_core import MaxPError, validate
from maxp_torch.group_rates import check_sole_writer, write_rates
from maxp_torch.optimizers import innermost_optimizer
from maxp_torch.parametrization import Parametrization
from maxp_torch.scheduler import MaxPScheduler

#: The group key ``OneCycleLR`` keeps its peak rate in: there, the peak is maxP's rate.
PEAK = "max_lr"


class ChainedMaxPScheduler(LRScheduler):
    """maxP's per-layer rates times the factor of any torch schedulers on the same optimizer.

    ``maxp`` is a :class:`~maxp_torch.Parametrization` (give the ``optimizer`` built from
    its ``param_groups``, or let it be the schedulers') or a :class:`MaxPScheduler`. At every
    step each group maxP sets gets the outside schedule's factor times its current maxP
    rate, re-solves included; a group maxP does not set (``create_param_groups``'s
    ``"_other"``) follows the outside schedulers alone. The factor is what torch's
    schedulers do to a plain one-group optimizer at lr 1: they step on their own view of
    the groups (restored before each of their steps), and a group's factor is its rate in
    that view over the rate it started from. ``OneCycleLR`` is read the same way with its
    ``max_lr`` as the start: every layer peaks at its maxP rate, whatever ``max_lr`` says.

    Once chained, only this scheduler steps: ``param.step()`` (or the ``MaxPScheduler``'s)
    is refused, and so is any other writer of the rates (a scheduler stepped on its own, a
    hand edit), which would otherwise be overwritten or multiplied without a word. Refused
    at construction, each with its fix: schedulers on another optimizer, schedulers built
    before maxP set the rates, ``ReduceLROnPlateau`` (it needs a metric at every step, and
    its cuts would be undone), schedulers that start from absolute rates of their own
    (``CyclicLR``), and a ``MaxPScheduler`` with a WSD warm-up under the chain.

    Examples:
      >>> from torch import nn
      >>> from maxp_torch import Parametrization, ParametrizedModule
      >>> model = nn.Sequential(
      ...     ParametrizedModule(nn.Linear(4, 32), width_dim=32, layer_type="embedding"), nn.ReLU(),
      ...     ParametrizedModule(nn.Linear(32, 2), width_dim=32, layer_type="readout"))
      >>> param = Parametrization(model, lr_prefactor=0.1, seed=0)
      >>> optimizer = torch.optim.AdamW(param.param_groups)
      >>> cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
      >>> scheduler = ChainedMaxPScheduler(param, [cosine])
      >>> param.capture_initial(torch.randn(8, 4))
      >>> optimizer.step(); scheduler.step()
      >>> [round(a / b, 6) for a, b in zip(scheduler.get_last_lr(), param.get_last_lr())]
      [0.853553, 0.853553]
    """

    def __init__(
        self,
        maxp: Parametrization | MaxPScheduler,
        schedulers: Sequence[Any] = (),
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if not isinstance(maxp, (Parametrization, MaxPScheduler)):
            raise MaxPError(
                f"ChainedMaxPScheduler needs a Parametrization or a MaxPScheduler, got {type(maxp).__name__}"
            )
        if maxp._driver is not None:
            raise MaxPError(f"this {type(maxp).__name__} is already stepped by another scheduler")
        self.maxp = maxp
        self.schedulers = list(schedulers)
        self.optimizer = _common_optimizer(maxp, self.schedulers, optimizer)
        self._set = maxp._maxp_groups(self.optimizer)
        groups = self.optimizer.param_groups
        self._layers = [i for i in self._set if groups[i].get("maxp_managed", False)]
        _refuse_unchainable(maxp, self.schedulers, groups)
        rates = maxp._maxp_rates()
        # What the chained schedulers see: their own rates, as their constructors left them.
        self._shadow = [float(g["lr"]) for g in groups]
        self._reference = [float(groups[i].get(PEAK, rate)) for i, rate in zip(self._set, rates, strict=True)]
        _refuse_absolute_starts(self.schedulers, groups, self._set, self._reference)
        maxp._driver = self
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] for g in groups]
        self._step_count = 1
        self._write()

    @property
    def n_layers(self) -> int:
        """The number of layer groups maxP sets."""
        return len(self._layers)

    @property
    def factors(self) -> list[float]:
        """The chained schedulers' current multiplier of each group maxP sets."""
        return [self._shadow[i] / ref for i, ref in zip(self._set, self._reference, strict=True)]

    @property
    def factor(self) -> float:
        """The chained schedulers' current multiplier of the first layer group's rate."""
        return self.factors[0]

    @property
    def _param(self) -> Parametrization:
        return self.maxp if isinstance(self.maxp, Parametrization) else self.maxp.param

    def capture_initial(self, x: Any) -> None:
        """Record the layers' inputs and weights before training (call once, before the first step)."""
        self._param.capture_initial(x)

    def step(self, x: Any = None) -> None:  # type: ignore[override]
        """After ``optimizer.step()``: step the chained schedulers, re-solve on schedule, write the rates."""
        groups = self.optimizer.param_groups
        check_sole_writer(groups, f"the optimizer ({type(innermost_optimizer(self.optimizer)).__name__})")
        for group, lr in zip(groups, self._shadow, strict=True):
            group["lr"] = lr
        for s in self.schedulers:
            s.step()
        self._shadow = [float(g["lr"]) for g in groups]
        self._step_count += 1
        self.maxp._advance(x)
        self._write()

    def _write(self) -> None:
        groups = self.optimizer.param_groups
        rates = dict(enumerate(self._shadow))
        for i, rate, factor in zip(self._set, self.maxp._maxp_rates(), self.factors, strict=True):
            rates[i] = factor * rate
        write_rates(groups, rates)
        for i, c in zip(self._set, self.maxp._maxp_exponents(), strict=True):
            if c is not None:
                groups[i]["c"] = c
        self.last_epoch = self._param.step_count
        self._last_lr = [g["lr"] for g in groups]
        if isinstance(self.maxp, MaxPScheduler):
            self.maxp.last_epoch, self.maxp._last_lr = self.last_epoch, self._last_lr

    def get_lr(self) -> list[float | torch.Tensor]:
        """Every param group's current rate."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float | torch.Tensor]:
        """The rate of each layer group, as the optimizer has it (the ``"_other"`` group left out)."""
        return [self.optimizer.param_groups[i]["lr"] for i in self._layers]

    def get_alignment(
        self,
    ) -> tuple[list[float], list[float], list[float]] | tuple[None, None, None]:
        """``(alpha, omega, u)`` per layer group (see the chained maxP object's own)."""
        return self.maxp.get_alignment()

    def get_layer_names(self) -> list[str]:
        """Names of the layer groups maxP sets, in the optimizer's order."""
        return self.maxp.get_layer_names()

    def state_dict(self) -> dict[str, Any]:
        """maxP's state, every chained scheduler's, and each group's view and reference rate."""
        return {
            "maxp": self.maxp.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "shadow": list(self._shadow),
            "reference": list(self._reference),
            "step_count": self._step_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, checked first: a bad entry is named and nothing is restored."""
        if not isinstance(state, Mapping) or "maxp" not in state or "schedulers" not in state:
            raise MaxPError(
                "load_state_dict: not a ChainedMaxPScheduler state; it needs the 'maxp' and "
                "'schedulers' entries"
            )
        saved = list(state["schedulers"])
        if len(saved) != len(self.schedulers):
            raise MaxPError(
                f"load_state_dict: the state holds {len(saved)} chained schedulers but this chain has "
                f"{len(self.schedulers)}"
            )
        shadow = _numbers(state.get("shadow"), len(self._shadow), "shadow")
        reference = _numbers(state.get("reference", self._reference), len(self._reference), "reference")
        step_count = validate.integer(
            state.get("step_count", 1), "load_state_dict: the state's step_count", 1
        )
        self.maxp.load_state_dict(state["maxp"])
        for s, sd in zip(self.schedulers, saved, strict=True):
            s.load_state_dict(sd)
        self._shadow, self._reference, self._step_count = shadow, reference, step_count
        self._write()


def _numbers(values: Any, n: int, what: str) -> list[float]:
    """``n`` rates from a saved state: ``shadow`` ones >= 0 (a decay may reach 0), ``reference`` ones > 0."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) != n:
        raise MaxPError(
            f"load_state_dict: the state's {what!r} must list {n} rates, one per group; got {values!r}"
        )
    check = validate.positive_number if what == "reference" else validate.non_negative_number
    return [check(v, f"load_state_dict: the state's {what}[{i}]") for i, v in enumerate(values)]


def _common_optimizer(
    maxp: Parametrization | MaxPScheduler, schedulers: list[Any], optimizer: torch.optim.Optimizer | None
) -> torch.optim.Optimizer:
    """The optimizer every chained scheduler and maxP write, checked."""
    if isinstance(maxp, MaxPScheduler):
        if optimizer is not None and innermost_optimizer(optimizer) is not innermost_optimizer(
            maxp.optimizer
        ):
            raise MaxPError("the optimizer given is not the MaxPScheduler's")
        optimizer = maxp.optimizer
    elif optimizer is None:
        if not schedulers:
            raise MaxPError("give the optimizer: ChainedMaxPScheduler(param, schedulers, optimizer=...)")
        optimizer = getattr(schedulers[0], "optimizer", None)
    if not isinstance(innermost_optimizer(optimizer), torch.optim.Optimizer):
        raise MaxPError(f"ChainedMaxPScheduler needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    assert optimizer is not None
    inner = innermost_optimizer(optimizer)
    for i, s in enumerate(schedulers):
        if not callable(getattr(s, "step", None)) or not hasattr(s, "optimizer"):
            raise MaxPError(
                f"the entry at index {i} ({type(s).__name__}) is not a learning-rate scheduler: chain "
                "torch.optim.lr_scheduler schedulers built on the optimizer"
            )
        if innermost_optimizer(getattr(s, "optimizer", None)) is not inner:
            raise MaxPError(
                f"the scheduler at index {i} ({type(s).__name__}) uses a different optimizer; every "
                "chained scheduler must drive the optimizer maxP writes"
            )
    return optimizer


def _refuse_unchainable(
    maxp: Parametrization | MaxPScheduler, schedulers: list[Any], groups: list[dict[str, Any]]
) -> None:
    for i, s in enumerate(schedulers):
        if isinstance(s, ReduceLROnPlateau):
            raise MaxPError(
                f"the scheduler at index {i} is a ReduceLROnPlateau, which needs a metric at every step "
                "and whose cuts maxP would undo; lower lr_prefactor on a plateau yourself instead"
            )
        last = getattr(s, "_last_lr", None)
        if last is not None and [float(v) for v in last] != [float(g["lr"]) for g in groups]:
            raise MaxPError(
                f"the scheduler at index {i} ({type(s).__name__}) was built before maxP last set the "
                "rates it started from; build the chained schedulers after the MaxPScheduler or "
                "Parametrization, right before the chain"
            )
    if isinstance(maxp, MaxPScheduler) and float(maxp.wsd(0)) != 1.0:
        raise MaxPError(
            "the MaxPScheduler's WSD warm-up starts below the base rate, and the chained schedulers "
            "would take that start as their own base; chain a warm-up scheduler (e.g. LinearLR) "
            "instead of wsd_warmup_steps, or use wsd_* without chaining"
        )


def _children(scheduler: Any) -> list[Any]:
    """A scheduler and those it steps (``SequentialLR``, ``ChainedScheduler``)."""
    found = [scheduler]
    for child in getattr(scheduler, "_schedulers", None) or []:
        found += _children(child)
    return found


def _refuse_absolute_starts(
    schedulers: list[Any], groups: list[dict[str, Any]], set_groups: list[int], reference: list[float]
) -> None:
    """Every chained scheduler must start each of maxP's groups from maxP's rate."""
    for i, top in enumerate(schedulers):
        for s in _children(top):
            base = getattr(s, "base_lrs", None)
            if isinstance(s, OneCycleLR) or base is None or len(base) != len(groups):
                continue
            for j, ref in zip(set_groups, reference, strict=True):
                if abs(float(base[j]) - ref) > 1e-9 * ref:
                    raise MaxPError(
                        f"the scheduler at index {i} ({type(s).__name__}) starts group "
                        f"{groups[j].get('layer_name', j)!r} from lr = {float(base[j]):.6g}, not maxP's "
                        f"{ref:.6g}: it sets absolute rates of its own, which would replace maxP's; use a "
                        "scheduler that multiplies the rate it finds (LambdaLR, LinearLR, "
                        "CosineAnnealingLR, SequentialLR, OneCycleLR)"
                    )
