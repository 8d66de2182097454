"""The data-flow graph between maxP layers, read from the jaxpr of ``apply_fn(params, x)``.

The jaxpr is walked symbolically (nothing is computed). A weight leaf becomes its
layer's node where it first meets a ``dot_general``, a convolution or a gather (an
embedding lookup); the predecessors are the provenances of the other operands. Adds of
different provenances become ``min`` merges and products ``sum`` merges
(:mod:`maxp_core.tracing`, the rules the PyTorch tracer uses too). Parameter-free
products such as attention scores enter the graph when wrapped by :func:`activation`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from maxp_jax import MaxPSpec, Rule
  >>> params = {"w_in": jnp.zeros((4, 16)), "w_h": jnp.zeros((16, 16)), "w_out": jnp.zeros((16, 2))}
  >>> def apply(p, x):
  ...     h = x @ p["w_in"]
  ...     h = h + jax.nn.relu(h @ p["w_h"])      # a residual block
  ...     return h @ p["w_out"]
  >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_h", "hidden"), Rule("w_out", "readout")],
  ...                 apply_fn=apply, sample_input=jnp.ones((1, 4)))
  >>> [(n.name, n.preds) for n in spec.graph.nodes]
  [('w_in', ()), ('w_h', ('w_in',)), ('add1', ('w_in', 'w_h')), ('w_out', ('add1',))]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

from maxp_core import MaxPError, OpGraph
from maxp_core.tracing import GraphRecorder
from maxp_jax.jaxpr_tools import CALL_PRIMITIVES, is_literal, open_jaxpr, sub_jaxpr

if TYPE_CHECKING:
    from maxp_jax.spec import MaxPSpec

_PREFIX = "maxp_op__"
_ACTIVATION_A: dict[str, float] = {}
_VIEWS = {
    "convert_element_type",
    "copy",
    "copy_p",
    "transpose",
    "reshape",
    "squeeze",
    "expand_dims",
    "reduce_precision",
}
_LAYER_USES = {"dot_general", "conv_general_dilated", "gather", "dynamic_slice"}
_PRODUCTS = {"mul", "div", "dot_general", "conv_general_dilated"}


def activation(name: str, fn: Callable[..., Any], *, a: float = 1.0) -> Callable[..., Any]:
    """Mark a parameter-free op (``q @ k^T``) as an activation-only node with exponent ``a``.

    The op is computed unchanged (the model applies its own scaling, e.g. ``1/d``); the
    graph gets a node ``name`` whose inputs multiply. Names must be unique per call site.

    Example:
      >>> scores = activation("block0.scores", lambda q, k: q @ k.T / q.shape[-1], a=1.0)
    """
    _ACTIVATION_A[name] = float(a)

    def marked(*args: Any) -> Any:
        return fn(*args)

    marked.__name__ = _PREFIX + name
    return jax.jit(marked)


class _Walk:
    def __init__(self, spec: MaxPSpec, recorder: GraphRecorder) -> None:
        self.spec = spec
        self.rec = recorder

    def run(self, jaxpr: Any, provenance: list[Any]) -> list[Any]:
        env: dict[int, Any] = {id(v): p for v, p in zip(jaxpr.invars, provenance, strict=True)}

        def read(v: Any) -> Any:
            return None if is_literal(v) else env.get(id(v))

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self._eqn(eqn, ins)
            for v, p in zip(eqn.outvars, outs, strict=True):
                env[id(v)] = p
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn: Any, ins: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        op_name = str(eqn.params.get("name", ""))
        if name in ("jit", "pjit") and op_name.startswith(_PREFIX):
            label = op_name[len(_PREFIX) :]
            node = self.rec.layer(
                label, [p for p in ins if isinstance(p, str)], a=_ACTIVATION_A[label], has_weight=False
            )
            return [node] * n_out
        sub = sub_jaxpr(eqn)
        if sub is not None and name in CALL_PRIMITIVES:
            inner, _ = open_jaxpr(sub)
            offset = len(ins) - len(inner.invars)
            return self.run(inner, ins[offset:])[:n_out] + [None] * max(0, n_out - len(inner.outvars))
        weights = [p for p in ins if isinstance(p, tuple)]
        activations = [p for p in ins if isinstance(p, str)]
        if weights:
            k = weights[0][1]
            if name in _VIEWS:
                return [weights[0]] * n_out
            if name in _LAYER_USES:
                layer = self.spec.layers[k]
                node = self.rec.layer(layer.name, activations, a=layer.a, b=layer.b, role=layer.role)
                return [node] * n_out
            raise MaxPError(
                f"{self.spec.layers[k].weight_path}: the weight first meets {name!r}, not a matrix product, "
                "convolution or lookup; the graph cannot place this layer"
            )
        kind = "mul" if name in _PRODUCTS else "add"
        return [self.rec.combine(kind, activations)] * n_out


def discover_graph(spec: MaxPSpec, apply_fn: Callable[[Any, Any], Any], params: Any, x: Any) -> OpGraph:
    """The graph between the spec's layers in ``apply_fn(params, x)``."""
    from maxp_jax.spec import leaf_key, path_string

    closed = jax.make_jaxpr(apply_fn)(params, x)
    weight_index = {leaf_key(layer.weight_path): k for k, layer in enumerate(spec.layers)}
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    provenance: list[Any] = [None] * len(closed.jaxpr.invars)
    for pos, (path, _) in enumerate(leaves):
        k = weight_index.get(leaf_key(path_string(path)))
        if k is not None:
            provenance[pos] = ("weight", k)
    recorder = GraphRecorder()
    _Walk(spec, recorder).run(closed.jaxpr, provenance)
    seen = {n.name for n in recorder.nodes}
    missing = [layer.name for layer in spec.layers if layer.name not in seen]
    if missing:
        raise MaxPError(f"apply_fn never used the weights of {missing} on the sample input")
    return recorder.graph()
