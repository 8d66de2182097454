"""The layers a :class:`~maxp_torch.Parametrization` sets: names, modules, exponents, tied weights.

Fixed once the model is discovered: which layers hold weights, which weighted layers share
one parameter (a tied embedding and readout), each layer's ``(a, b)``, its row in the LP
graph and, with a depth rule, its depth factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from maxp_core.base_width import BaseWidth, init_rescale, model_width, width_ratios
from maxp_core.depth import DepthFactors
from maxp_core.initial import std_correction
from maxp_core.symmetry import fold_multiplier
from maxp_torch.module import ParametrizedModule


@dataclass
class LayerSet:
    """Layers by position ``k``; weighted layers by position ``j`` in :attr:`weighted`; weight
    groups (one per parameter, a tied weight's uses together) by position ``g``."""

    names: list[str]
    modules: list[ParametrizedModule]
    exponents: list[tuple[float, float]]
    optimizer_type: str
    weighted: list[int] = field(init=False)
    groups: list[list[int]] = field(init=False)
    #: Each layer's row in the LP graph (set once the graph is known).
    row: dict[int, int] = field(default_factory=dict)
    depth_factors: DepthFactors | None = None
    #: The width at which the model is the user's own (:mod:`maxp_core.base_width`).
    base_width: BaseWidth = None

    def __post_init__(self) -> None:
        self.weighted = [k for k, m in enumerate(self.modules) if m.weight is not None]
        self.groups = tied_groups([self.modules[k].weight for k in self.weighted])
        widths = {self.names[k]: self.width(k) for k in self.weighted}
        ratios = width_ratios(widths, self.base_width) if widths else {}
        common = model_width(ratios) if ratios else 1.0
        #: The ratio a layer without a weight (attention scores) and attention scopes use.
        self.model_ratio = common if self.base_width is not None else None
        self.ratios = [
            ratios.get(name, float(self.width(k)) if self.base_width is None else common)
            for k, name in enumerate(self.names)
        ]

    def ratio(self, k: int) -> float:
        """The number layer ``k``'s powers are taken of: its width, or ``width / base width``."""
        return self.ratios[k]

    def multiplier(self, k: int) -> float:
        """Layer ``k``'s output multiplier ``ratio^-a`` times its depth factor. With a base width,
        an op without a weight that contracts over the width (attention scores, a ``"readout"``)
        keeps the standard ``n^-1/2`` at the base width: ``n^-1/2 * ratio^-(a - 1/2)``."""
        a = self.exponents[k][0]
        module = self.modules[k]
        if self.base_width is not None and module.weight is None and module.layer_type == "readout":
            scale = float(self.width(k)) ** -0.5 * self.ratio(k) ** -(a - 0.5)
        else:
            scale = self.ratio(k) ** -a
        return scale * self.depth(k)[2]

    def dims(self, k: int) -> tuple[int, int, int]:
        """Layer ``k``'s ``(in, fan_in, out)`` read from its weight."""
        weight = self.modules[k].weight
        assert weight is not None
        return self.modules[k].kind.dims(tuple(weight.shape))

    def std_correction(self, j: int) -> float:
        """What weighted layer ``j``'s ``std_prefactor * n^-b`` is multiplied by so that a
        convolution counts its window (:mod:`maxp_core.initial`)."""
        k = self.weighted[j]
        in_dim, fan_in, _ = self.dims(k)
        return std_correction(
            self.modules[k].layer_type, fan_in, self.width(k), max(fan_in // max(in_dim, 1), 1)
        )

    def init_scale(self, j: int) -> float:
        """With a base width: what weighted layer ``j``'s own initial weight is multiplied by."""
        k = self.weighted[j]
        return init_rescale(self.ratio(k), self.applied_b(j), self.modules[k].layer_type) * self.depth(k)[0]

    def width(self, k: int) -> int:
        return self.modules[k].width_dim

    def depth(self, k: int) -> tuple[float, float, float]:
        """``(init, lr, output multiplier)`` the depth rule gives layer ``k`` (ones without a
        rule); a bare parameter has its branch multiplier folded into init and rate."""
        f = self.depth_factors
        name = self.names[k]
        if f is None or name not in f.lr:
            return 1.0, 1.0, 1.0
        if self.modules[k].folded:
            return (*f.folded(name, self.optimizer_type), 1.0)
        return f.init[name], f.lr[name], f.multiplier[name]

    def abc(self, j: int, c: float) -> tuple[float, float, float]:
        """``(a, b, c)`` of weighted layer ``j`` as applied; a bare parameter's multiplier is
        folded into its ``b`` and ``c``."""
        k = self.weighted[j]
        a, b = self.exponents[k]
        return fold_multiplier(a, b, c, self.optimizer_type) if self.modules[k].folded else (a, b, c)

    def applied_b(self, j: int) -> float:
        return self.abc(j, 0.0)[1]

    def group_of(self, k: int) -> int:
        """The weight group of layer ``k``."""
        j = self.weighted.index(k)
        return next(g for g, members in enumerate(self.groups) if j in members)

    def weighted_names(self) -> list[str]:
        return [self.names[k] for k in self.weighted]

    def layer_types(self) -> dict[str, str]:
        """Each weighted layer's type, by name."""
        return {self.names[k]: self.modules[k].layer_type for k in self.weighted}


def tied_groups(weights: Sequence[Any]) -> list[list[int]]:
    """Positions of the weights, grouped by identity (a tied weight's uses share a group), in
    order of first appearance.

    Examples:
      >>> shared, other = object(), object()
      >>> tied_groups([shared, other, shared])
      [[0, 2], [1]]
    """
    groups: dict[int, list[int]] = {}
    for j, weight in enumerate(weights):
        groups.setdefault(id(weight), []).append(j)
    return list(groups.values())
