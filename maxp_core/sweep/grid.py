"""The runs of a sweep: every combination of the values of its axes, each with a file name."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from maxp_core.errors import MaxPError

Config = dict[str, Any]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Grid:
    """Every combination of the values given for each axis: ``lr`` and any others.

    ``Grid(lr=[1e-3, 3e-3], width=[64, 128], method=["maxp", "mup"], seed=[0, 1])`` is
    16 runs. Values are numbers, text or booleans (they go into JSON records and file
    names). Runs are ordered seed by seed, so a sweep cut short has every other setting for
    its first seeds; within a seed by the other axes in the order given, the rates innermost.

    Examples:
      >>> grid = Grid(lr=[0.01, 0.1], width=[64, 128], seed=[0])
      >>> len(grid), grid.configs()[1]
      (4, {'lr': 0.1, 'width': 64, 'seed': 0})
      >>> grid.run_id(grid.configs()[1])
      'lr0.1_seed0_width64'
    """

    def __init__(self, **axes: Sequence[Any]) -> None:
        if "lr" not in axes:
            raise MaxPError("a sweep Grid needs learning rates: Grid(lr=[1e-3, 3e-3, ...], ...)")
        self.axes: dict[str, list[Any]] = {name: _axis(name, values) for name, values in axes.items()}
        for lr in self.axes["lr"]:
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
                raise MaxPError(f"Grid: every learning rate must be a positive finite number, got {lr!r}")
        ids = [self.run_id(config) for config in self.configs()]
        if len(set(ids)) != len(ids):
            clash = next(i for i in ids if ids.count(i) > 1)
            raise MaxPError(
                f"Grid: two runs would share the file name {clash!r}; give values that differ once "
                "written with 6 significant digits and letters, digits, '.', '+' or '-' only"
            )

    def __len__(self) -> int:
        return math.prod(len(values) for values in self.axes.values())

    def __repr__(self) -> str:
        return "Grid(" + ", ".join(f"{k}={v!r}" for k, v in self.axes.items()) + ")"

    def configs(self) -> list[Config]:
        """Every run's config: the ``seed`` axis outermost, ``lr`` innermost, keys in axis order."""
        names = sorted(self.axes, key=lambda name: (name != "seed") + (name == "lr"))
        combos = itertools.product(*(self.axes[name] for name in names))
        order = list(self.axes)
        return [{name: dict(zip(names, combo, strict=True))[name] for name in order} for combo in combos]

    def run_id(self, config: Mapping[str, Any]) -> str:
        """The file name (without ``.json``) of a run: each axis and its value, by axis name (so
        the same grid written with its axes in another order finds its runs)."""
        return "_".join(f"{name}{_written(config[name])}" for name in sorted(self.axes))

    def describe(self) -> dict[str, list[Any]]:
        """The axes as JSON (what ``sweep.json`` records)."""
        return {name: list(values) for name, values in self.axes.items()}


def _axis(name: str, values: Any) -> list[Any]:
    if not _NAME.fullmatch(name):
        raise MaxPError(f"Grid: axis name {name!r} must be a Python identifier (letters, digits, '_')")
    if hasattr(values, "tolist"):  # a numpy array (np.logspace(...)): its values as Python numbers
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise MaxPError(f"Grid: axis {name!r} must be a list of values, got {values!r}")
    values = [v.item() if hasattr(v, "item") and not isinstance(v, str) else v for v in values]
    if not values:
        raise MaxPError(f"Grid: axis {name!r} has no values")
    for value in values:
        if not isinstance(value, bool | int | float | str):
            raise MaxPError(
                f"Grid: axis {name!r} holds {value!r} ({type(value).__name__}); values must be numbers, "
                "text or booleans"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise MaxPError(f"Grid: axis {name!r} holds {value!r}; values must be finite")
    if len(set(map(repr, values))) != len(values):
        raise MaxPError(f"Grid: axis {name!r} repeats a value: {values}")
    return values


def _written(value: Any) -> str:
    """A value as it appears in a file name."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(value))
