"""Building an op graph while a framework runs a model: the rules both adapters share.

A traced value carries the name of the graph node that produced it last (its
*provenance*) or ``None`` (model inputs, constants, parameters). A parametrized layer
becomes a node whose predecessors are its inputs' provenances. When values with
different provenances are added (a residual stream), a ``min`` merge node is created;
when they are multiplied (a gate, ``attn @ v``), a ``product`` merge node. Each merge gets
one node, so a residual stream becomes a chain of merges and the graph grows linearly
with depth. Everything else (activations, norms, reshapes) passes provenance through.
A parameter-free layer with two traced inputs (``q @ k^T``) is a contraction.

A factor counts as zero at initialization (``zero_inputs``) when the tracer saw it exactly
zero where it was multiplied *and* it comes straight from a layer whose weight starts at
zero (``b = inf``); zero values of any other origin (a zero sample) say nothing about width.

Examples:
  >>> rec = GraphRecorder()
  >>> x = rec.layer("emb", [None], a=-0.5, b=0.5)
  >>> h = rec.layer("fc", [x], a=0.0, b=0.5)
  >>> y = rec.layer("out", [rec.combine("add", [x, h])], a=0.5, b=0.5)
  >>> [(n.name, n.preds, n.merge) for n in rec.graph().nodes]
  [('emb', (), 'min'), ('fc', ('emb',), 'min'), ('add1', ('emb', 'fc'), 'min'), ('out', ('add1',), 'min')]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from maxp_core.errors import GraphError
from maxp_core.graph import Node, OpGraph
from maxp_core.roles import Role

Provenance = str | None
Combine = Literal["add", "mul"]


class GraphRecorder:
    """Collects the nodes of a traced forward pass."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._merges = 0
        self._merge_names: set[str] = set()
        self._zero_init: set[str] = set()

    def _distinct(self, inputs: Sequence[Provenance]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in inputs if p is not None))

    def starts_at_zero(self, provenance: Provenance) -> bool:
        """Whether ``provenance`` is a layer whose weight starts at zero (``b = inf``).

        Tracers check a factor's value only for these provenances.
        """
        return provenance is not None and provenance in self._zero_init

    def _zero_inputs(self, preds: tuple[str, ...], zero: Iterable[Provenance]) -> tuple[str, ...]:
        seen_zero = {p for p in zero if self.starts_at_zero(p)}
        return tuple(p for p in preds if p in seen_zero)

    def layer(
        self,
        name: str,
        inputs: Sequence[Provenance],
        *,
        a: float,
        b: float = 0.5,
        has_weight: bool = True,
        role: Role | str | None = None,
        zero: Iterable[Provenance] = (),
    ) -> str:
        """Record a parametrized op.

        A weighted layer's distinct inputs multiply (``product``). A parameter-free layer
        with two traced inputs (one provenance twice is ``x @ x^T``) is a contraction over
        its width; with one it scales its input. ``zero`` lists the inputs seen exactly
        zero.
        """
        if name in self._names:
            raise GraphError(
                f"layer {name!r} ran twice in one forward pass; a layer used at several places "
                "needs one ParametrizedModule (or parameter) per use"
            )
        traced = [p for p in inputs if p is not None]
        preds = self._distinct(traced)
        contraction = not has_weight and len(traced) >= 2
        if contraction and len(traced) > 2:
            raise GraphError(
                f"parameter-free layer {name!r} takes {len(traced)} traced inputs {traced}; such a "
                "layer contracts two (x @ y^T, as attention scores do)"
            )
        role_value = Role.parse(role, layer=name) if role is not None and has_weight else None
        multiplies = contraction or len(preds) > 1
        self.nodes.append(
            Node(
                name=name,
                a=a,
                b=b,
                has_weight=has_weight,
                preds=preds,
                merge="product" if multiplies else "min",
                role=role_value,
                zero_inputs=self._zero_inputs(preds, zero) if multiplies else (),
                contraction=contraction,
            )
        )
        self._names.add(name)
        if has_weight and b == math.inf:
            self._zero_init.add(name)
        return name

    def combine(
        self, kind: Combine, inputs: Sequence[Provenance], zero: Iterable[Provenance] = ()
    ) -> Provenance:
        """Provenance of a value computed from several traced values (``zero``: seen exactly zero)."""
        preds = self._distinct(inputs)
        if len(preds) <= 1:
            return preds[0] if preds else None
        self._merges += 1
        name = f"{kind}{self._merges}"
        while name in self._names:
            name += "_"
        multiplies = kind == "mul"
        self.nodes.append(
            Node(
                name=name,
                a=0.0,
                has_weight=False,
                preds=preds,
                merge="product" if multiplies else "min",
                zero_inputs=self._zero_inputs(preds, zero) if multiplies else (),
            )
        )
        self._names.add(name)
        self._merge_names.add(name)
        return name

    def graph(self, **kwargs: bool) -> OpGraph:
        """The recorded graph, validated; merges nothing consumed are dropped."""
        used = {p for n in self.nodes for p in n.preds}
        keep = [n for n in self.nodes if n.name in used or n.name not in self._merge_names]
        return OpGraph(keep, **kwargs)
