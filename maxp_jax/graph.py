"""The data-flow graph between maxP layers, read from the jaxpr of ``apply_fn(params, x)``.

The jaxpr is walked equation by equation, following where each value comes from
(:mod:`maxp_core.tracing`, the rules the PyTorch tracer uses too). A weight leaf becomes
its layer's node where it first meets a ``dot_general``, a convolution or a gather (an
embedding lookup); the predecessors are the provenances of the other operands. Adds of
different provenances become ``min`` merges and products (``mul``, the numerator of
``div``, parameter-free matrix products) ``product`` merges. Parameter-free ops such as
attention scores enter the graph when wrapped by :func:`activation`; one with two traced
inputs (``q @ k^T``) is a contraction.

The values tell which factors are zero at initialization: the weights (and biases) of a
layer declared ``b = math.inf`` are replaced by zeros, as :func:`~maxp_jax.abc_init` makes
them, and a factor that comes from such a layer and is exactly zero where it is
multiplied is listed in the node's ``zero_inputs`` (``silu`` keeps a zero gate zero,
``sigmoid`` does not). Zeros of any other origin (a zero sample) are not recorded. Only
then is the jaxpr evaluated on the sample input; without such a layer the walk computes
nothing.

Examples:
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

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from maxp_core import MaxPError, OpGraph, warn_user
from maxp_core.tracing import GraphRecorder
from maxp_jax.jaxpr_tools import VALUE_VIEWS, Interpreter, unentered_advice
from maxp_jax.stacking import LOOKUPS, PRODUCTS

if TYPE_CHECKING:
    from maxp_jax.spec import MaxPSpec

_PREFIX = "maxp_op__"
_ACTIVATION_A: dict[str, float] = {}
# Ops that keep which value a weight or activation is (a layout change, a cast).
_VIEWS = VALUE_VIEWS | {"transpose", "reshape", "squeeze", "expand_dims"}
_LAYER_USES = LOOKUPS | PRODUCTS
_PRODUCTS = PRODUCTS | {"mul", "div"}


def activation(name: str, fn: Callable[..., Any], *, a: float = 1.0) -> Callable[..., Any]:
    """Mark a parameter-free op (``q @ k^T``) as an activation-only node with exponent ``a``.

    The op is computed unchanged (the model applies its own scaling, e.g. ``1/d``); the
    graph gets a node ``name`` whose inputs multiply. Names must be unique per call site;
    inside a scan, iteration ``t`` gets the node ``name[t]``.

    Examples:
      >>> scores = activation("block0.scores", lambda q, k: q @ k.T / q.shape[-1], a=1.0)
    """
    _ACTIVATION_A[name] = float(a)

    def marked(*args: Any) -> Any:
        return fn(*args)

    marked.__name__ = _PREFIX + name
    return jax.jit(marked)


class _Walk(Interpreter):
    """Evaluates the jaxpr on concrete values; a value's note is its provenance.

    A weight leaf's note is ``("weight", layer index)`` until it meets its layer's op;
    an activation's is the name of the graph node that produced it last (``None`` for
    the model's inputs, constants and other parameters).
    """

    def __init__(self, spec: MaxPSpec, recorder: GraphRecorder) -> None:
        self.spec = spec
        self.rec = recorder
        #: Matrix products of two activations not marked with :func:`activation`, and the marked ops.
        self.unmarked: list[Any] = []
        self.marked: set[Any] = set()

    def enters(self, eqn: Any, notes: list[Any]) -> bool:
        return super().enters(eqn, notes) and _marked(eqn) is None

    def run_scan(self, eqn: Any, values: list[Any], notes: list[Any]) -> tuple[list[Any], list[Any]]:
        head = eqn.params["num_consts"] + eqn.params["num_carry"]
        length = int(eqn.params["length"])
        for note in notes[:head]:
            if isinstance(note, tuple):  # a weight every iteration uses: one layer run L times
                k = note[1][0] if note[0] == "stacked" else note[1]
                raise MaxPError(
                    f"{self.spec.layers[k].weight_path}: the weight is used by every iteration of a scan "
                    "(one layer run several times, or a stacked weight indexed inside the loop); scan over "
                    "the stacked weights instead, passing them as the scanned operand"
                )
        for note in notes[head:]:
            if isinstance(note, tuple) and note[0] != "stacked":
                k = note[1]
                raise MaxPError(
                    f"{self.spec.layers[k].weight_path}: a scan slices this weight, but it is not read as "
                    "stacked layers (its rule says stacked=False, or the layers axis is not its leading "
                    "one); stack the layers on axis 0 (variable_axes 0) and leave the rule's stacked unset"
                )
            if isinstance(note, tuple) and note[0] == "stacked" and len(note[1]) != length:
                path = self.spec.layers[note[1][0]].weight_path
                raise MaxPError(
                    f"{path}: {len(note[1])} stacked layers but the scan that slices it runs {length} "
                    "times; stack the layers on the leading axis (variable_axes 0)"
                )
        return super().run_scan(eqn, values, notes)

    def slice_note(self, note: Any, step: int) -> Any:
        # Iteration ``step`` of a scan sees slice ``step`` of a stacked weight: that layer's weight.
        if isinstance(note, tuple) and note[0] == "stacked":
            return ("weight", note[1][step])
        return note

    def zero(self, values: list[Any], ins: list[Any]) -> list[str]:
        """The provenances in ``ins`` of values that come from a zero-initialized layer and
        are exactly zero here."""
        return [
            p
            for v, p in zip(values, ins, strict=True)
            if isinstance(p, str) and self.rec.starts_at_zero(p) and not bool(jnp.any(v != 0))
        ]

    def notes_of(self, eqn: Any, values: list[Any], ins: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        activations = [p for p in ins if isinstance(p, str)]
        label = _marked(eqn)
        if label is not None:
            zero = self.zero(values, ins)
            # Inside a scan, iteration t is the node ``<name>[t]``, as a stacked weight's slice is.
            node_name = label + "".join(f"[{t}]" for t in self.steps)
            node = self.rec.layer(node_name, activations, a=_ACTIVATION_A[label], has_weight=False, zero=zero)
            self.marked.add(node)
            return [node] * n_out
        weights = [p for p in ins if isinstance(p, tuple)]
        stacks = [p for p in weights if p[0] == "stacked"]
        if stacks and name not in _VIEWS:
            path = self.spec.layers[stacks[0][1][0]].weight_path
            raise MaxPError(
                f"{path}: the stacked weight meets {name!r} before a scan slices it; the graph places "
                "the slices of a stacked weight inside lax.scan (nn.scan, nnx.scan) only"
                + unentered_advice(name)
            )
        if weights:
            note = weights[0]
            # A tied table is its embedding where it is looked up and its readout where multiplied.
            k = (note[1] if name in LOOKUPS else note[2]) if note[0] == "tied" else note[1]
            if name in _VIEWS:
                return [weights[0]] * n_out
            if name in _LAYER_USES:
                layer = self.spec.layers[k]
                zero = self.zero(values, ins)
                node = self.rec.layer(
                    layer.name, activations, a=layer.a, b=layer.b, role=layer.role, zero=zero
                )
                return [node] * n_out
            raise MaxPError(
                f"{self.spec.layers[k].weight_path}: the weight first meets {name!r}, not a matrix product, "
                "convolution or lookup; the graph cannot place this layer" + unentered_advice(name)
            )
        if name in _PRODUCTS:
            # A quotient multiplies by its numerator only: a zero denominator is no zero factor.
            factors = 1 if name == "div" else len(ins)
            merged = self.rec.combine("mul", activations, zero=self.zero(values[:factors], ins[:factors]))
            # q @ k^T not wrapped by activation() is no contraction (what multiplies its
            # softmax, attn @ v, is the product it should be).
            scores = name in PRODUCTS and len(set(activations)) > 1
            if scores and not set(activations) & (set(self.unmarked) | self.marked):
                self.unmarked.append(merged)
            return [merged] * n_out
        return [self.rec.combine("add", activations)] * n_out


def _marked(eqn: Any) -> str | None:
    """The name given to :func:`activation` if ``eqn`` is a call of a marked op."""
    op_name = str(eqn.params.get("name", ""))
    if eqn.primitive.name in ("jit", "pjit") and op_name.startswith(_PREFIX):
        return op_name[len(_PREFIX) :]
    return None


def _evaluation_inputs(spec: MaxPSpec, leaves: list[tuple[Any, Any]], x: Any) -> list[Any]:
    """Concrete values for the flat inputs ``(params, x)`` of the jaxpr.

    The leaves of a zero-initialized layer (``b = inf``) are zeros, as :func:`abc_init`
    leaves them (weight and bias); the other leaves are the given arrays. A leaf given
    only by its shape (``jax.ShapeDtypeStruct``) or traced gets standard normal values
    if it is floating (a value not known is not taken for zero) and zeros otherwise.
    """
    from maxp_jax.spec import leaf_key, path_string

    zero_init = {leaf_key(path) for layer in spec.layers if layer.b == math.inf for path in layer.paths}
    rng = np.random.default_rng(0)

    def concrete(leaf: Any) -> Any:
        if not isinstance(leaf, jax.ShapeDtypeStruct | jax.core.Tracer):
            return leaf
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return np.asarray(rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    values = [
        jnp.zeros(jnp.shape(leaf), leaf.dtype) if leaf_key(path_string(path)) in zero_init else concrete(leaf)
        for path, leaf in leaves
    ]
    return values + [concrete(leaf) for leaf in jax.tree_util.tree_leaves(x)]


def discover_graph(
    spec: MaxPSpec, apply_fn: Callable[[Any, Any], Any], params: Any, x: Any, closed: Any = None
) -> OpGraph:
    """The graph between the spec's layers in ``apply_fn(params, x)`` (``closed``: its
    ClosedJaxpr, if already traced).

    A scan is walked once per iteration, so scan-stacked layers give the graph of the
    unrolled model, slice ``t`` of a stacked weight being the layer ``<name>[t]``.
    """
    from maxp_jax.spec import leaf_key, path_string

    if closed is None:
        closed = jax.make_jaxpr(apply_fn)(params, x)
    slices: dict[str, list[int]] = {}
    for k, layer in enumerate(spec.layers):
        slices.setdefault(leaf_key(layer.weight_path), []).append(k)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    provenance: list[Any] = [None] * len(closed.jaxpr.invars)
    for pos, (path, _) in enumerate(leaves):
        found = slices.get(leaf_key(path_string(path)))
        if found is not None:
            if spec.layers[found[0]].stack_index is not None:
                provenance[pos] = ("stacked", tuple(found))
            elif len(found) == 2:
                provenance[pos] = ("tied", *found)
            else:
                provenance[pos] = ("weight", found[0])
    recorder = GraphRecorder()
    walk = _Walk(spec, recorder)
    if any(layer.b == math.inf for layer in spec.layers):
        with jax.ensure_compile_time_eval():
            values = _evaluation_inputs(spec, leaves, x)
            walk.run(closed.jaxpr, list(closed.consts), values, provenance)
    else:
        # No layer starts at zero, so no factor can be a zero one: the notes alone suffice.
        walk.evaluates = False
        walk.run(closed.jaxpr, list(closed.consts), [None] * len(closed.jaxpr.invars), provenance)
    seen = {n.name for n in recorder.nodes}
    missing = [layer.name for layer in spec.layers if layer.name not in seen]
    if missing:
        raise MaxPError(f"apply_fn never used the weights of {missing} on the sample input")
    graph = recorder.graph()
    unmarked = sorted({n for n in walk.unmarked if n in graph.names})
    if unmarked:
        warn_user(
            f"apply_fn multiplies two activations in a matrix product at {unmarked} (attention "
            "scores, as jax.nn.dot_product_attention computes them?); the graph reads it as a plain "
            "product, so the LP sees neither the sum over the head dimension nor the scale the model "
            "applies (1/sqrt(d) by default) and the rates do not account for them. Wrap the scores in "
            "maxp_jax.activation(name, fn, a=...) (a=1 with a 1/d scale for muP; a=0.5 for 1/sqrt(d), "
            "which slows every layer upstream) to make them a contraction node"
        )
    return graph
