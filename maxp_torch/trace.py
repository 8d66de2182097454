"""The data-flow graph of a PyTorch model, from one forward pass on a sample input.

Every torch function call is watched (``TorchFunctionMode``): outputs inherit the
provenance of their inputs, and additions or products of values from different layers
become merge nodes (:mod:`maxp_core.tracing`). Inside a ``ParametrizedModule`` nothing
is watched; its output is tagged with its own name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from maxp_core import MaxPError, OpGraph
from maxp_core.tracing import GraphRecorder, Provenance
from maxp_torch.layers import ACTIVE_SCOPES

#: Functions whose inputs multiply: a ``product`` merge.
PRODUCTS = frozenset(
    {
        "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__rtruediv__",
        "__itruediv__", "matmul", "__matmul__", "__rmatmul__", "bmm", "baddbmm", "einsum", "mm",
        "scaled_dot_product_attention", "linear", "conv1d", "conv2d", "conv3d",
    }
)  # fmt: skip


#: The first three arguments of ``scaled_dot_product_attention``.
SDPA_ARGUMENTS = ("query", "key", "value")

#: Quotients: the position of the numerator among the positional arguments.
NUMERATOR = {"div": 0, "div_": 0, "__truediv__": 0, "__itruediv__": 0, "__rtruediv__": 1}


class _Watcher(TorchFunctionMode):
    def __init__(self, recorder: GraphRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.tags: dict[int, str] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.inside = 0
        self.scope: list[str] = []  # names of the modules running, innermost last
        self.attention: list[tuple[str, int, float, float]] = []  # (node, head dim, scale, a)

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
            if name == "scaled_dot_product_attention" and self.attend(args, kwargs, out):
                return out
            if name in PRODUCTS:
                # A quotient multiplies by its numerator only: a zero denominator is no zero factor.
                factors = [args[NUMERATOR[name]]] if name in NUMERATOR and len(args) > 1 else leaves
                self.tag(out, self.recorder.combine("mul", provenances, self.zero_factors(factors)))
            else:
                self.tag(out, self.recorder.combine("add", provenances))
        return out

    def attend(self, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> bool:
        """``softmax(q @ k^T * scale) @ v`` as a scores contraction, then a product with ``v``.

        The scores node's ``a`` is read from the scale the call used (given, or PyTorch's
        default ``d^-1/2``) against the head dimension ``d``, which is taken to grow with
        the width. Returns whether the call was recorded (``q`` or ``k`` traced).
        """
        q, k, v = (args[i] if len(args) > i else kwargs.get(key) for i, key in enumerate(SDPA_ARGUMENTS))
        if self.tag_of(q) is None and self.tag_of(k) is None:
            return False
        head = int(cast(Any, q).shape[-1])
        given = args[6] if len(args) > 6 else kwargs.get("scale")
        scale = float(given) if given is not None else head**-0.5
        a = -math.log(scale) / math.log(head) if head > 1 else 0.0
        if ACTIVE_SCOPES and ACTIVE_SCOPES[-1].ratio is not None:
            a = ACTIVE_SCOPES[-1].a  # a base width's scale is standard at the base: read a from the rule
        where = self.scope[-1] if self.scope else ""
        name = f"{where}.scores" if where else "scores"
        while name in {n.name for n in self.recorder.nodes}:
            name += "'"
        scores = self.recorder.layer(
            name, [self.tag_of(q), self.tag_of(k)], a=a, has_weight=False, zero=self.zero_factors([q, k])
        )
        self.attention.append((name, head, scale, a))
        self.tag(out, self.recorder.combine("mul", [scores, self.tag_of(v)], self.zero_factors([v])))
        return True

    def zero_factors(self, values: Sequence[Any]) -> list[Provenance]:
        """Provenances of the values that are exactly zero and come from a zero-initialised layer."""
        zero = []
        for value in values:
            provenance = self.tag_of(value)
            if self.recorder.starts_at_zero(provenance) and not bool(torch.any(value != 0)):
                zero.append(provenance)
        return zero


class _LayerTracer:
    """Turns each maxP layer's call into a graph node: its inputs' provenances in, its name out."""

    def __init__(self, watcher: _Watcher, info: dict[int, tuple[str, tuple[float, float]]]) -> None:
        self.watcher = watcher
        self.recorder = watcher.recorder
        self.info = info
        self._pending: list[tuple[list[Provenance], list[Provenance]]] = []

    def enter(self, layer: Any, inputs: Any) -> None:
        leaves = tree_flatten(inputs)[0]
        self._pending.append(([self.watcher.tag_of(v) for v in leaves], self.watcher.zero_factors(leaves)))
        self.watcher.inside += 1

    def leave(self, layer: Any, out: Any) -> Any:
        self.watcher.inside -= 1
        inputs, zero = self._pending.pop()
        name, (a, b) = self.info[id(layer)]
        has_weight = layer.weight is not None
        node = self.recorder.layer(name, inputs, a=a, b=b, has_weight=has_weight, role=layer.role, zero=zero)
        self.watcher.tag(out, node)
        return out

    def __call__(
        self, layer: Any, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.enter(layer, (args, kwargs))
        try:
            out = forward(*args, **kwargs)
        except BaseException:
            self.watcher.inside -= 1
            self._pending.pop()
            raise
        return self.leave(layer, out)


@contextlib.contextmanager
def _module_names(model: nn.Module, watcher: _Watcher) -> Iterator[None]:
    """Keep ``watcher.scope`` naming the innermost module running, for the nodes it creates."""
    names = {id(m): n for n, m in model.named_modules()}

    def push(module: nn.Module, args: Any) -> None:
        watcher.scope.append(names.get(id(module), ""))

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        if watcher.scope:
            watcher.scope.pop()

    handles = [
        register_module_forward_pre_hook(push),
        register_module_forward_hook(pop, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace_graph(
    model: nn.Module,
    layers: Sequence[tuple[str, Any]],
    exponents: Sequence[tuple[float, float]],
    sample_input: Any,
    attention: list[tuple[str, int, float, float]] | None = None,
) -> OpGraph:
    """Run ``model`` once on ``sample_input`` and return the graph between its layers.

    ``sample_input`` is a tensor, a tuple of positional arguments or a dict of keyword
    arguments (Hugging Face style: ``{"input_ids": ids}``). Each
    ``scaled_dot_product_attention`` call becomes a scores node named after the module
    that made it (``<module>.scores``); ``attention``, if given, receives
    ``(node, head dim, scale, a)`` for each.
    """
    recorder = GraphRecorder()
    watcher = _Watcher(recorder)
    info = {id(layer): (name, ab) for (name, layer), ab in zip(layers, exponents, strict=True)}
    tracer = _LayerTracer(watcher, info)
    for name, layer in layers:
        if layer.kind.name == "parameter":  # read, not called: a node with no inputs
            a, b = info[id(layer)][1]
            watcher.tag(layer.weight, recorder.layer(name, [], a=a, b=b, role=layer.role))
        else:
            layer._tracer = tracer
    try:
        with torch.no_grad(), watcher, _module_names(model, watcher):
            call_model(model, sample_input)
    finally:
        for _, layer in layers:
            layer._tracer = None
    if attention is not None:
        attention.extend(watcher.attention)
    seen = {n.name for n in recorder.nodes}
    missing = [name for name, _ in layers if name not in seen]
    if missing:
        raise MaxPError(
            f"the sample forward pass never called {missing}; pass a sample_input that reaches them"
        )
    return recorder.graph()


def call_model(model: nn.Module, sample_input: Any) -> Any:
    """``model(**x)`` for a dict of keyword arguments, ``model(*x)`` for a tuple, else ``model(x)``."""
    if isinstance(sample_input, Mapping):
        return model(**sample_input)
    if isinstance(sample_input, tuple):
        return model(*sample_input)
    return model(sample_input)
