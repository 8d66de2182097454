"""Each layer's learning rate from its ``c``, and the optimizer's param groups that carry them.

A weighted layer asks for ``lr_prefactor * width^-c`` (``c`` folded for a bare parameter),
times its depth factor. A tied weight is one parameter in one group: it runs at the smaller
rate its uses ask for, so that both stay stable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from maxp_core import warn_user
from maxp_core.biases import full_alignment, vector_exponent
from maxp_core.rules import tied_disagreement
from maxp_torch.group_rates import WRITTEN
from maxp_torch.layer_set import LayerSet


class LayerRates:
    """The rates of a :class:`LayerSet` at the current ``c`` (one entry per weighted layer) and
    ``lr_prefactor``, both read from ``owner`` so they are always the latest."""

    def __init__(self, layers: LayerSet, owner: Any, bias_rule: str = "layer") -> None:
        self.layers = layers
        self.owner = owner
        self.bias_rule = bias_rule
        #: The weight groups whose biases and gains have a group of their own (bias_rule
        #: "constant-input"), in the order of those groups after the weights'.
        self.vector_groups: list[int] = []
        self._c_full: list[float] | None = None
        self._owners: dict[int, list[int]] = {}

    def layer_lr(self, j: int) -> float:
        """The rate weighted layer ``j`` asks for."""
        layers = self.layers
        k = layers.weighted[j]
        c = layers.abc(j, float(self.owner.c[j]))[2]
        return self.owner.lr_prefactor * float(layers.ratio(k) ** -c) * layers.depth(k)[1]

    def group_lr(self, g: int) -> float:
        """Group ``g``'s rate: the smallest its layers ask for."""
        return min(self.layer_lr(j) for j in self.layers.groups[g])

    def binding(self, g: int) -> int:
        """The weighted layer whose rate group ``g`` runs at."""
        return min(self.layers.groups[g], key=self.layer_lr)

    def group_c(self, g: int) -> float:
        return float(self.owner.c[self.binding(g)])

    def all_groups(self) -> list[float]:
        return [self.group_lr(g) for g in range(len(self.layers.groups))]

    def vector_exponent(self, j: int) -> float:
        """The ``c`` of weighted layer ``j``'s biases and gains (:mod:`maxp_core.biases`)."""
        layers = self.layers
        k = layers.weighted[j]
        a, _, c_now = layers.abc(j, float(self.owner.c[j]))
        a = 0.0 if layers.modules[k].folded else a
        c_full = layers.abc(j, self.full_alignment_c()[j])[2]
        return vector_exponent(
            self.bias_rule, layers.optimizer_type, layers.modules[k].layer_type, a, c_now, c_full
        )

    def full_alignment_c(self) -> list[float]:
        """Each weighted layer's ``c`` under full alignment (solved once, for SGD's vector rule)."""
        if self._c_full is None:
            if self.bias_rule == "layer" or self.layers.optimizer_type != "sgd":
                self._c_full = [float(c) for c in self.owner.c]
            else:
                lp = self.owner.lp
                solution = lp.solve(**full_alignment([n.name for n in lp.graph.nodes]))
                self._c_full = [solution.c[self.layers.names[k]] for k in self.layers.weighted]
        return self._c_full

    def vector_owners(self, g: int) -> list[int]:
        """The weighted layers of group ``g`` that hold biases or gains (of a tied weight, the
        uses whose module has a bias: a readout's, not the embedding's); found once."""
        if g not in self._owners:
            members = self.layers.groups[g]
            modules = [self.layers.modules[self.layers.weighted[j]] for j in members]
            self._owners[g] = [
                j
                for j, module in zip(members, modules, strict=True)
                if any(p is not module.weight for p in module.parameters())
            ]
        return self._owners[g]

    def vector_lr(self, g: int) -> float:
        """The rate of group ``g``'s biases and gains: the smallest the layers holding them ask for."""
        layers = self.layers
        return min(
            self.owner.lr_prefactor
            * float(layers.ratio(layers.weighted[j]) ** -self.vector_exponent(j))
            * layers.depth(layers.weighted[j])[1]
            for j in self.vector_owners(g)
        )

    def vector_rates(self) -> list[float]:
        return [self.vector_lr(g) for g in self.vector_groups]

    def vector_exponents(self) -> list[float]:
        return [max(self.vector_exponent(j) for j in self.vector_owners(g)) for g in self.vector_groups]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """One group per weight (``layer_name``, ``c``, ``fan_in``, ``maxp_managed``; a tied
        weight's ``tied`` lists its layers), then the rest at ``lr_prefactor`` as ``"_other"``."""
        layers = self.layers
        groups = []
        vectors: list[tuple[int, list[nn.Parameter]]] = []
        taken: set[int] = set()
        for g, members in enumerate(layers.groups):
            ks = [layers.weighted[j] for j in members]
            params = []
            for p in (p for k in ks for p in layers.modules[k].parameters()):
                if id(p) not in taken:
                    taken.add(id(p))
                    params.append(p)
            if self.bias_rule != "layer":
                weight = layers.modules[ks[0]].weight
                vectors.append((g, [p for p in params if p is not weight]))
                params = [p for p in params if p is weight]
            lr = self.group_lr(g)
            group = {
                "params": params,
                "lr": lr,
                WRITTEN: lr,
                "layer_name": layers.names[ks[0]],
                "c": self.group_c(g),
                "fan_in": layers.width(layers.weighted[self.binding(g)]),
                "maxp_managed": True,
            }
            if len(ks) > 1:
                group["tied"] = [layers.names[k] for k in ks]
            groups.append(group)
        self.vector_groups = [g for g, params in vectors if params]
        for g, params in vectors:
            if params:
                lr = self.vector_lr(g)
                groups.append(
                    {
                        "params": params,
                        "lr": lr,
                        WRITTEN: lr,
                        "layer_name": f"{layers.names[layers.weighted[self.vector_owners(g)[0]]]}.bias",
                        "c": max(self.vector_exponent(j) for j in self.vector_owners(g)),
                        "maxp_managed": True,
                    }
                )
        rest = [p for p in model.parameters() if id(p) not in taken]
        if rest:
            prefactor = self.owner.lr_prefactor
            groups.append(
                {
                    "params": rest,
                    "lr": prefactor,
                    WRITTEN: prefactor,
                    "layer_name": "_other",
                    "maxp_managed": False,
                }
            )
        return groups

    def warn_on_tied_disagreement(self, std_prefactor: float) -> None:
        """Say when a tied weight's uses ask for different initial scales or rates."""
        layers = self.layers
        for members in layers.groups:
            if len(members) < 2:
                continue
            names = [layers.names[layers.weighted[j]] for j in members]
            stds = [
                std_prefactor
                * (
                    layers.width(layers.weighted[j]) ** -layers.applied_b(j)
                    if layers.base_width is None
                    else layers.init_scale(j)
                )
                for j in members
            ]
            lrs = [self.layer_lr(j) for j in members]
            message = tied_disagreement(names, stds, lrs, own_init=layers.base_width is not None)
            if message:
                warn_user(message)

    def lr_factors(self) -> np.ndarray:
        """``width^-c`` (``(width / base width)^-c``) per weighted layer (c folded for a bare parameter)."""
        layers = self.layers
        return np.array(
            [
                layers.ratio(k) ** -layers.abc(j, float(self.owner.c[j]))[2]
                for j, k in enumerate(layers.weighted)
            ]
        )
