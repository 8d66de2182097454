"""The data-flow graph of a PyTorch model, from one forward pass on a sample input.

Every torch function call is watched (``TorchFunctionMode``): outputs inherit the
provenance of their inputs, and additions or products of values from different layers
become merge nodes (:mod:`maxp_core.tracing`). Inside a ``ParametrizedModule`` nothing
is watched; its output is tagged with its own name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from maxp_core import MaxPError, OpGraph
from maxp_core.tracing import GraphRecorder, Provenance

#: Functions whose inputs multiply: a ``product`` merge.
PRODUCTS = frozenset(
    {
        "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__",
        "__itruediv__", "matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "einsum", "mm",
        "scaled_dot_product_attention", "linear", "conv1d", "conv2d", "conv3d",
    }
)  # fmt: skip


#: Quotients: the position of the numerator among the positional arguments.
NUMERATOR = {"div": 0, "div_": 0, "__truediv__": 0, "__itruediv__": 0, "__rtruediv__": 1}


class _Watcher(TorchFunctionMode):
    def __init__(self, recorder: GraphRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.tags: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.inside = 0

    def tag_of(self, value: Any) -> Provenance:
        return self.tags.get(id(value)) if isinstance(value, torch.Tensor) else None

    def tag(self, value: Any, provenance: Provenance) -> None:
        if provenance is None:
            return
        for leaf in tree_flatten(value)[0]:
            if isinstance(leaf, torch.Tensor):
                self.tags[id(leaf)] = provenance
                self.alive.append(leaf)

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside:
            return out
        leaves = tree_flatten((args, kwargs))[0]
        provenances = [self.tag_of(v) for v in leaves]
        if any(p is not None for p in provenances):
            name = getattr(func, "__name__", "")
            if name in PRODUCTS:
                # A quotient multiplies by its numerator only: a zero denominator is no zero factor.
                factors = [args[NUMERATOR[name]]] if name in NUMERATOR and len(args) > 1 else leaves
                self.tag(out, self.recorder.combine("mul", provenances, self.zero_factors(factors)))
            else:
                self.tag(out, self.recorder.combine("add", provenances))
        return out

    def zero_factors(self, values: Sequence[Any]) -> list[Provenance]:
        """Provenances of the values that are exactly zero and come from a zero-initialised layer."""
        zero = []
        for value in values:
            provenance = self.tag_of(value)
            if self.recorder.starts_at_zero(provenance) and not bool(torch.any(value != 0)):
                zero.append(provenance)
        return zero


def trace_graph(
    model: nn.Module,
    layers: Sequence[tuple[str, Any]],
    exponents: Sequence[tuple[float, float]],
    sample_input: Any,
) -> OpGraph:
    """Run ``model(sample_input)`` once and return the graph between its layers."""
    recorder = GraphRecorder()
    watcher = _Watcher(recorder)
    info = {id(module): (name, ab) for (name, module), ab in zip(layers, exponents, strict=True)}

    def tracer(
        module: Any, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        name, (a, b) = info[id(module)]
        leaves = tree_flatten((args, kwargs))[0]
        inputs = [watcher.tag_of(v) for v in leaves]
        zero = watcher.zero_factors(leaves)
        watcher.inside += 1
        try:
            out = forward(*args, **kwargs)
        finally:
            watcher.inside -= 1
        has_weight = module.weight is not None
        node = recorder.layer(name, inputs, a=a, b=b, has_weight=has_weight, role=module.role, zero=zero)
        watcher.tag(out, node)
        return out

    for _, module in layers:
        module._tracer = tracer
    try:
        with torch.no_grad(), watcher:
            inputs = sample_input if isinstance(sample_input, tuple) else (sample_input,)
            model(*inputs)
    finally:
        for _, module in layers:
            module._tracer = None
    seen = {n.name for n in recorder.nodes}
    missing = [name for name, _ in layers if name not in seen]
    if missing:
        raise MaxPError(
            f"the sample forward pass never called {missing}; pass a sample_input that reaches them"
        )
    return recorder.graph()
