"""Schedule logic shared by the adapters: when to re-solve, EMA smoothing, WSD.

Everything here is a plain function or a small frozen object without framework
imports. :func:`wsd_multiplier` takes an array module (``numpy`` by default,
``jax.numpy`` works too) so the JAX adapter can trace the same curve.

Examples:
  >>> s = SolveSchedule(warmup_steps=2, solve_interval=3)
  >>> [t for t in range(1, 12) if s.should_solve(t)]
  [5, 8, 11]
  >>> w = WSDSchedule(warmup_steps=2, stable_steps=2, decay_steps=2, decay_type="linear")
  >>> [round(float(w(t)), 2) for t in range(7)]
  [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from maxp_core import validate
from maxp_core.errors import MaxPError

DECAY_TYPES: tuple[str, ...] = ("none", "cosine", "linear")


def _check_int(name: str, value: Any, minimum: int) -> int:
    return validate.integer(value, name, minimum)


@dataclass(frozen=True)
class SolveSchedule:
    """When a dynamic re-solve happens.

    ``step`` counts optimizer steps taken (1 after the first). Nothing is solved while
    ``step <= warmup_steps``; after that, every ``solve_interval``-th step is a solve
    step: ``warmup_steps + solve_interval``, ``warmup_steps + 2 * solve_interval``, ...
    Solving stops once ``stop_after`` steps have been taken (e.g. the start of a WSD decay).

    Args:
      warmup_steps: steps before the first re-solve (>= 0).
      solve_interval: steps between re-solves (>= 1).
      stop_after: last step at which a re-solve may happen, or ``None``.
    """

    warmup_steps: int = 0
    solve_interval: int = 1
    stop_after: int | None = None

    def __post_init__(self) -> None:
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("solve_interval", self.solve_interval, 1)
        if self.stop_after is not None:
            _check_int("stop_after", self.stop_after, 0)

    def should_solve(self, step: int) -> bool:
        """Whether the LP is re-solved after optimizer step ``step``."""
        return bool(self.due(step))

    def solves_through(self, step: int) -> int:
        """How many re-solves are due after steps ``1 .. step``.

        Examples:
          >>> s = SolveSchedule(warmup_steps=2, solve_interval=3)   # due after 5, 8, 11
          >>> [s.solves_through(t) for t in (4, 5, 10, 11)]
          [0, 1, 2, 3]
        """
        last = step if self.stop_after is None else min(step, self.stop_after)
        return max(0, (last - self.warmup_steps) // self.solve_interval)

    def due(self, step: Any, xp: ModuleType = np) -> Any:
        """:meth:`should_solve` as an array expression (``xp=jax.numpy`` traces it)."""
        step = xp.asarray(step)
        after = step - self.warmup_steps
        due = (after > 0) & (after % self.solve_interval == 0)
        if self.stop_after is not None:
            due = due & (step <= self.stop_after)
        return due


def check_ema_decay(name: str, decay: float) -> float:
    """Validate an EMA weight of the old value: ``0 <= decay < 1`` (0: no smoothing)."""
    return validate.fraction(decay, name)


def ema_update(previous: Any, value: Any, decay: float, xp: ModuleType = np) -> Any:
    """``decay * previous + (1 - decay) * value``; the first value is taken as is.

    Entries of ``value`` that are not finite keep ``previous`` (or raise when there is
    no previous value), so NaN and inf never propagate. ``xp=jax.numpy`` traces it
    (keeping the input dtype); numpy works in float64.

    Examples:
      >>> ema_update(np.array([1.0, 1.0]), np.array([3.0, np.nan]), 0.5)
      array([2., 1.])
    """
    decay = check_ema_decay("EMA decay", decay)
    value = np.asarray(value, dtype=np.float64) if xp is np else xp.asarray(value)
    finite = xp.isfinite(value)
    if previous is None:
        if not np.all(finite):
            raise MaxPError(f"the first value to smooth has non-finite entries at {np.flatnonzero(~finite)}")
        return value.copy()
    previous = np.asarray(previous, dtype=np.float64) if xp is np else xp.asarray(previous)
    mixed = decay * previous + (1.0 - decay) * xp.where(finite, value, previous)
    return xp.where(finite, mixed, previous)


@dataclass(frozen=True)
class WSDSchedule:
    """Warmup-stable-decay multiplier of the base learning rate.

    Warmup ramps linearly from ``min_factor`` to 1 over ``warmup_steps``; the stable
    phase holds 1 for ``stable_steps``; the decay phase goes from 1 to ``min_factor``
    over ``decay_steps`` (cosine or linear) and stays there. With
    ``decay_type="none"`` there is no decay: the multiplier ramps over ``warmup_steps``
    (if any) and then stays 1; ``stable_steps`` and ``decay_steps`` may not be set.

    Args:
      warmup_steps: linear warmup length (>= 0).
      stable_steps: length of the constant phase (required when enabled).
      decay_steps: length of the decay (>= 1, required when enabled).
      decay_type: ``"cosine"``, ``"linear"`` or ``"none"``.
      min_factor: multiplier at the start of warmup and the end of decay, in [0, 1].
    """

    warmup_steps: int = 0
    stable_steps: int | None = None
    decay_steps: int | None = None
    decay_type: str = "cosine"
    min_factor: float = 0.0
    #: Put before each argument's name in error messages (``"wsd_"`` for ``MaxPScheduler``'s).
    names: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        p = self.names
        if self.decay_type not in DECAY_TYPES:
            raise MaxPError(f"unknown {p}decay_type {self.decay_type!r}; expected one of {list(DECAY_TYPES)}")
        if not 0.0 <= validate.real_number(self.min_factor, f"{p}min_factor") <= 1.0:
            raise MaxPError(f"{p}min_factor must be in [0, 1], got {self.min_factor!r}")
        _check_int(f"{p}warmup_steps", self.warmup_steps, 0)
        if self.decay_type == "none":
            given = [p + k for k in ("stable_steps", "decay_steps") if getattr(self, k) is not None]
            if given:
                raise MaxPError(
                    f"{p}decay_type='none' has no decay phase, but {given} were set; "
                    f"choose {p}decay_type='cosine' or 'linear'"
                )
            if self.min_factor and not self.warmup_steps:
                raise MaxPError(
                    f"{p}min_factor={self.min_factor!r} sets where warmup starts and decay ends, but "
                    f"{p}decay_type='none' and {p}warmup_steps=0 have neither; set {p}warmup_steps or a "
                    f"{p}decay_type"
                )
            return
        if self.stable_steps is None or self.decay_steps is None:
            raise MaxPError(
                f"WSD with {p}decay_type={self.decay_type!r} needs both {p}stable_steps and {p}decay_steps"
            )
        _check_int(f"{p}stable_steps", self.stable_steps, 0)
        _check_int(f"{p}decay_steps", self.decay_steps, 1)

    @property
    def enabled(self) -> bool:
        """Whether the schedule has a decay phase (``decay_type`` other than ``"none"``)."""
        return self.decay_type != "none"

    @property
    def decay_start(self) -> int | None:
        """First step of the decay phase (``None`` when off)."""
        if not self.enabled:
            return None
        return self.warmup_steps + int(self.stable_steps or 0)

    def in_decay(self, step: int) -> bool:
        """Whether ``step`` lies in the decay phase, where per-layer rates are frozen."""
        start = self.decay_start
        return start is not None and step >= start

    def __call__(self, step: Any, xp: ModuleType = np) -> Any:
        """The multiplier at ``step`` (a number or an array of ``xp``)."""
        return wsd_multiplier(
            step,
            warmup_steps=self.warmup_steps,
            stable_steps=int(self.stable_steps or 0),
            decay_steps=int(self.decay_steps or 1),
            decay_type=self.decay_type,
            min_factor=self.min_factor,
            xp=xp,
        )


def wsd_multiplier(
    step: Any,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    decay_type: str,
    min_factor: float,
    xp: ModuleType = np,
) -> Any:
    """The WSD curve; see :class:`WSDSchedule` (which validates its arguments)."""
    step = xp.asarray(step, dtype=xp.float32)
    span = 1.0 - min_factor
    warm = min_factor + span * step / max(warmup_steps, 1)
    if decay_type == "none":
        return xp.where(step < warmup_steps, warm, xp.ones_like(step))
    progress = xp.clip((step - warmup_steps - stable_steps) / decay_steps, 0.0, 1.0)
    if decay_type == "cosine":
        decayed = min_factor + span * 0.5 * (1.0 + xp.cos(math.pi * progress))
    else:
        decayed = min_factor + span * (1.0 - progress)
    return xp.where(step < warmup_steps, warm, decayed)
