"""The host half of a dynamic re-solve, shared by both adapters: never a silently wrong rate.

Each adapter measures ``(alpha, omega, u)`` per layer on its device and hands the numbers
to a :class:`Resolver`, which applies one set of rules:

* A layer whose weights or inputs are not finite (a diverged run, a NaN batch) stops the
  re-solve: the last learning rates are kept and the re-solve counts as failed.
* A missing measurement (NaN: the sample carried no information, see
  :mod:`maxp_core.alignment`) keeps the layer's previous alignment, the preset before any
  measurement, and is counted; the user is told once per layer and reason.
* A re-solve the LP refuses keeps the last learning rates; the user is warned at the
  first failure and again at the 2nd, 4th, 8th, ... with the running count, so a run in
  which no re-solve ever succeeds does not look healthy.

Warnings point at the user's line (:func:`warn_user`), not inside the library.

Examples:
  >>> import warnings
  >>> import numpy as np
  >>> resolver = Resolver(["emb", "out"], solve=lambda al: 1.0 - al[:, 0])
  >>> with warnings.catch_warnings(record=True) as told:
  ...     warnings.simplefilter("always")
  ...     outcome = resolver(
  ...         measured=np.array([[1.0, 0.5, 1.0], [np.nan, 0.5, np.nan]]),   # out: dW = 0
  ...         previous=np.array([[1.0, 0.5, 1.0], [0.8, 0.5, 0.8]]),
  ...         c_prev=np.zeros(2), nonfinite=np.zeros(2, bool), failures=0)
  >>> outcome.alignment[1].tolist(), outcome.c.round(6).tolist(), outcome.missing
  ([0.8, 0.5, 0.8], [0.0, 0.2], 2)
  >>> "layer 'out'" in str(told[0].message)
  True
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maxp_core import validate
from maxp_core.alignment import fill_missing, why_missing
from maxp_core.errors import MaxPError
from maxp_core.graph import OpGraph
from maxp_core.schedule import check_ema_decay, ema_update

#: Modules whose frames a warning skips to reach the user's line.
INTERNAL_MODULES: tuple[str, ...] = (
    "maxp_core",
    "maxp_jax",
    "maxp_torch",
    "jax",
    "jaxlib",
    "optax",
    "flax",
    "torch",
    "contextlib",
    "threading",
)


class MaxPWarning(UserWarning):
    """A re-solve kept the last learning rates, or a measurement was missing."""


def _internal(module: str) -> bool:
    return module.split(".")[0] in INTERNAL_MODULES


def warn_user(message: str, category: type[Warning] = MaxPWarning) -> None:
    """``warnings.warn`` attributed to the first calling frame outside maxp and the frameworks.

    Where no such frame exists (a host callback on a runtime thread), the warning is
    attributed to the library frame that issued it.
    """
    frame = sys._getframe(1)
    level = 2
    while frame is not None and _internal(frame.f_globals.get("__name__", "")):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def unused_alignments(graph: OpGraph, names: Sequence[str]) -> list[tuple[int, int]]:
    """``(row, column)`` of the alignments no LP term uses, rows named by ``names``.

    The ``omega`` (column 1) of a weight that starts at zero (``b = inf``): its ``W0 @ dz``
    term is gone, and its measurement is always missing (0/0).
    """
    return [(row, 1) for row, name in enumerate(names) if graph.node(name).zero_init]


def is_reported(count: int) -> bool:
    """Whether the ``count``-th failure is warned about: the 1st, 2nd, 4th, 8th, ..."""
    return count >= 1 and count & (count - 1) == 0


@dataclass(frozen=True)
class Outcome:
    """What one re-solve leaves: the exponents and alignments to use, and what went wrong.

    Attributes:
      c: learning-rate exponent per layer (the previous ones when ``failed``).
      alignment: ``(rows, 3)`` alignments the next re-solve starts from.
      failed: the re-solve was skipped (non-finite numbers) or the LP refused it.
      missing: how many of the measured numbers were missing.
    """

    c: np.ndarray
    alignment: np.ndarray
    failed: bool
    missing: int


class Resolver:
    """Turns measured alignments into learning-rate exponents, keeping the last good ones.

    Args:
      names: the name of each row of the alignment arrays (layers or graph nodes).
      solve: ``solve(alignment (rows, 3)) -> c`` per layer; raises ``MaxPError`` when the
        LP has no answer.
      alignment_ema: weight of the previous alignment in an exponential average, in [0, 1).
      c_ema: weight of the previous ``c``, in [0, 1).
      overrides: fixed ``(alpha, omega, u)`` by row, used whatever was measured.
      unused: ``(row, column)`` of numbers no LP term uses, such as the ``omega`` (column 1)
        of a weight that starts at zero: always missing, so neither told nor counted.
      measure_only: keep the alignments (same rules, same smoothing) but never solve: the
        exponents stay ``c_prev``. A run measured this way trains at its preset's rates and
        records the alignments a dynamic run would see on the same weights.
    """

    def __init__(
        self,
        names: Sequence[str],
        solve: Callable[[np.ndarray], np.ndarray],
        *,
        alignment_ema: float = 0.0,
        c_ema: float = 0.0,
        overrides: Mapping[int, tuple[float, float, float]] | None = None,
        unused: Iterable[tuple[int, int]] = (),
        measure_only: bool = False,
    ) -> None:
        self.names = list(names)
        self.measure_only = validate.boolean(measure_only, "measure_only")
        self.solve = solve
        self.alignment_ema = check_ema_decay("alignment_ema", alignment_ema)
        self.c_ema = check_ema_decay("c_ema", c_ema)
        self.overrides = dict(overrides or {})
        self._told: set[tuple[str, str]] = set()
        self._unused = tuple(zip(*unused, strict=True)) if unused else None

    def __call__(
        self,
        *,
        measured: np.ndarray,
        previous: np.ndarray,
        c_prev: np.ndarray,
        nonfinite: np.ndarray,
        failures: int,
    ) -> Outcome:
        """One re-solve.

        Args:
          measured: ``(rows, 3)`` alignments, NaN where missing; rows not measured this time
            carry their previous value.
          previous: ``(rows, 3)`` alignments of the last re-solve (the presets before any).
          c_prev: the exponents in use.
          nonfinite: ``(rows,)`` booleans: the row's weights or inputs are not finite.
          failures: failed re-solves so far (for the running count in warnings).
        """
        previous = np.asarray(previous, dtype=np.float64)
        c_prev = np.asarray(c_prev, dtype=np.float64)
        bad = [self.names[k] for k in np.flatnonzero(np.asarray(nonfinite, dtype=bool))]
        if bad:
            shown = ", ".join(repr(name) for name in bad[:5]) + (" ..." if len(bad) > 5 else "")
            return self._failed(
                f"the weights or inputs of {shown} are not finite (NaN or inf; has the run diverged?)",
                previous,
                c_prev,
                failures,
            )
        filled, missing = fill_missing(measured, previous)
        if self._unused is not None:
            missing[self._unused] = False
        for k in np.flatnonzero(missing.any(axis=1)):
            self._tell_missing(self.names[k], why_missing(*(bool(v) for v in missing[k])))
        smoothed = ema_update(previous, filled, self.alignment_ema)
        for row, triple in self.overrides.items():
            smoothed[row] = triple
        if self.measure_only:
            return Outcome(c_prev, smoothed, False, int(missing.sum()))
        try:
            c_new = np.asarray(self.solve(smoothed), dtype=np.float64)
        except MaxPError as err:
            return self._failed(str(err), previous, c_prev, failures, int(missing.sum()))
        return Outcome(ema_update(c_prev, c_new, self.c_ema), smoothed, False, int(missing.sum()))

    def _tell_missing(self, name: str, reason: str) -> None:
        if (name, reason) in self._told:
            return
        self._told.add((name, reason))
        warn_user(
            f"maxP: the alignment measurement of layer {name!r} carried no information ({reason}); "
            "it keeps its previous alignment (told once per layer and reason)"
        )

    def _failed(
        self, reason: str, previous: np.ndarray, c_prev: np.ndarray, failures: int, missing: int = 0
    ) -> Outcome:
        count = failures + 1
        if is_reported(count):
            warn_user(
                f"maxP re-solve failed ({count} failed so far), keeping the last learning rates: {reason}"
            )
        return Outcome(c_prev, previous, True, missing)
