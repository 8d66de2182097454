"""Which parameter leaves are maxP layers, with their roles, widths and exponents.

A :class:`Rule` assigns a role to the leaves whose path matches a regular expression.
Paths are ``/``-joined keys (``"params/Dense_1/kernel"``, as
``jax.tree_util.keystr(path, simple=True, separator="/")`` writes them) or, equally,
the full ``jax.tree_util.keystr`` form (``"['params']['Dense_1']['kernel']"``).
Every matched leaf with two or more axes is the weight of one layer; a matched leaf
with fewer axes (a bias, a scale) joins the layer whose weight sits under the same
parent path and shares its learning rate. Leaves no rule matches keep the base
learning rate.

The layers form a chain, in rule order and, within a rule, in natural order of their
paths (``Dense_2`` before ``Dense_10``): the first is the embedding, the last the
readout. The LP of :mod:`maxp_core` then gives each layer its ``c``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import jax
import numpy as np

from maxp_core import (
    SOLVERS,
    MaxPError,
    OpGraph,
    Role,
    StabilityLP,
    alignment_preset,
    check_init_stability,
    default_ab,
    validate,
    warn_user,
)
from maxp_core.base_width import BaseWidth, check_base_width, describe_base, init_rescale, width_ratios
from maxp_core.biases import check_bias_rule, full_alignment, vector_exponent
from maxp_core.depth import DepthFactors, DepthScaling, depth_factors, warn_if_untraced
from maxp_core.formulation import parse_optimizer
from maxp_core.graph import flattened_inputs, graph_by_roles
from maxp_core.initial import forward_gain, std_correction
from maxp_core.lp import DEFAULT_TIE_RULE
from maxp_core.parametrizations import parse_parametrization
from maxp_core.rules import assign_rules, report_uncovered, rule_numbers, tied_disagreement
from maxp_core.scores import scores_slowdown
from maxp_core.symmetry import fold_multiplier
from maxp_core.tables import AlignmentTable, resolve_overrides
from maxp_jax.stacking import LeafUses, leaf_uses

Layout = Literal["dense", "embedding", "torch"]
LAYOUTS: tuple[str, ...] = ("dense", "embedding", "torch")
"""How a rule reads a weight leaf: ``"dense"`` ``(in, out)``, ``"embedding"`` ``(vocab, width)``,
``"torch"`` ``(out, in)``."""
ROLES: tuple[str, ...] = tuple(role.value for role in Role)
MultiplierMode = Literal["folded", "explicit"]


@dataclass(frozen=True)
class Rule:
    """Assign a role to the parameter leaves whose path matches ``pattern``.

    Args:
      pattern: a regular expression, matched in full against each leaf's path.
      role: ``"embedding"``, ``"hidden"`` or ``"readout"``.
      layout: how the weight's axes read: ``"dense"`` (flax ``Dense``/``Conv`` kernels,
        ``(..., in, out)``), ``"embedding"`` (a ``(vocab, d)`` table) or ``"torch"``
        (``(out, in, ...)``).
      width: the ``n`` of ``n^-a, n^-b, n^-c``; default: the output size for an
        embedding, the input size otherwise.
      a, b: override the parametrization's exponents for these layers; ``b=math.inf``
        declares a zero initial weight (:func:`~maxp_jax.abc_init` gives zeros, and the
        graph drops the terms of the initial weight).
      c: pin the learning-rate exponent (the LP solves the others around it).
      alignment: ``(alpha, omega, u)`` for these layers instead of the preset.
      stacked: the leading axis of each matched leaf indexes layers (``nn.scan``,
        ``nnx.scan``, ``lax.scan`` over stacked blocks): a ``(L, d_in, d_out)`` kernel is
        ``L`` layers named ``<name>[0]`` ... ``<name>[L-1]``, each with its own graph node,
        alignment and factor, and a ``(L, d)`` bias joins them slice by slice. ``None``
        (the default) decides from the graph: a leaf that a ``scan`` slices is stacked.
        Without ``apply_fn`` nothing is stacked unless the rule says so.

    Raises:
      MaxPError: an argument has the wrong type or lies out of range; the message names
        the rule's pattern, the argument and the value.

    Examples:
      >>> Rule("params/out/.*", "readout", width=np.int64(256)).width
      256
      >>> Rule("params/out/.*", "readout", alignment=(1.0, 0.5, 2.0))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: rule 'params/out/.*': alignment: u = 2.0 is out of range; ...
    """

    pattern: str
    role: str
    layout: Layout = "dense"
    width: int | None = None
    a: float | None = None
    b: float | None = None
    c: float | None = None
    alignment: tuple[float, float, float] | None = None
    stacked: bool | None = None

    def __post_init__(self) -> None:
        pattern = validate.text(self.pattern, "rule pattern")
        where = f"rule {pattern!r}"
        role = self.role.value if isinstance(self.role, Role) else self.role
        checked: dict[str, Any] = {
            "role": validate.choice(role, f"{where}: role", ROLES),
            "layout": validate.choice(self.layout, f"{where}: layout", LAYOUTS),
            **rule_numbers(where, self.width, self.a, self.b, self.c, self.alignment),
        }
        if self.stacked is not None:
            checked["stacked"] = validate.boolean(self.stacked, f"{where}: stacked")
        for name, value in checked.items():
            object.__setattr__(self, name, value)


class TiedUses(NamedTuple):
    """The two layers of a tied table: its lookup (embedding) and its product (readout).

    The table has one initial standard deviation and one learning rate: the smaller of
    the two layers' (after folding), which keeps both uses stable.
    """

    lookup: int
    readout: int


@dataclass(frozen=True)
class Layer:
    """One maxP layer: a weight leaf (or one slice of a stacked leaf, ``stack_index``)
    and the leaves that share its learning rate."""

    name: str
    role: Role
    weight_path: str
    shape: tuple[int, ...]
    width: int
    fan_in: int
    a: float
    b: float
    layout: str
    extra_paths: tuple[str, ...] = ()
    c_fixed: float | None = None
    alignment: tuple[float, float, float] | None = None
    stack_index: int | None = None
    #: The kernel window a convolution contracts besides its input channels (1 for dense).
    window: int = 1

    @property
    def paths(self) -> tuple[str, ...]:
        """Every leaf the layer owns: its weight first, then the other leaves a rule gave it."""
        return (self.weight_path, *self.extra_paths)

    def weight_of(self, leaf: Any) -> Any:
        """This layer's weight in the array of its weight leaf (its slice, if stacked)."""
        return leaf if self.stack_index is None else leaf[self.stack_index]


def path_string(path: Sequence[Any]) -> str:
    """``/``-joined form of a key path."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def leaf_key(path: str) -> str:
    """The key a leaf is looked up by: its path without the ``/value`` of a flax nnx
    variable, so ``nnx.state(model)`` and the plain arrays ``nnx.Optimizer`` hands to
    optax find the same layer."""
    return path.removesuffix("/value")


def _matches(pattern: re.Pattern[str], slash_path: str, key_path: str) -> bool:
    """Whether ``pattern`` matches a leaf's path, in full, as written either way (and, for a
    flax nnx variable, with or without its ``/value``)."""
    candidates = (slash_path, leaf_key(slash_path), key_path)
    return any(pattern.fullmatch(candidate) is not None for candidate in candidates)


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _dims(path: str, shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """``(in, fan_in, out)`` of a weight: the input size, the contracted size, the output size."""
    if len(shape) < 2 or min(shape) < 1:
        raise MaxPError(
            f"{path}: cannot read a fan-in from shape {shape} with layout {layout!r}; "
            "a weight needs at least two non-empty axes"
        )
    if layout == "dense":
        return shape[-2], math.prod(shape[:-1]), shape[-1]
    if layout == "embedding":
        return shape[0], shape[0], shape[-1]
    if layout == "torch":
        return shape[1], math.prod(shape[1:]), shape[0]
    raise MaxPError(f"{path}: unknown layout {layout!r}; expected one of {list(LAYOUTS)}")


@dataclass
class MaxPSpec:
    """The maxP layers of a params pytree and their learning-rate exponents.

    Args:
      params: the params pytree (arrays or ``jax.ShapeDtypeStruct``).
      rules: the :class:`Rule` list.
      parametrization: ``"mup"``, ``"sp"``, ``"ntk"`` or ``"mfp"``: default ``(a, b)`` per role.
      optimizer: ``"adam"`` or ``"sgd"`` (the LP differs).
      alignment: the preset the initial LP is solved with: ``"full"`` or ``"no"``.
      multipliers: ``"folded"`` (the model is untouched: each output multiplier
        ``n^-a`` is moved into init and learning rate, see
        :mod:`maxp_core.symmetry`) or ``"explicit"`` (the model multiplies each
        layer's output by :meth:`multiplier`; this reproduces the PyTorch backend to
        float precision, since Adam's ``eps`` and weight decay see the same weights).
      feature_learning: require ``r = 0`` for the layer before the readout.
      solver: the LP solver of :mod:`maxp_core`.
      apply_fn, sample_input: give both to read the graph between the layers from
        ``apply_fn(params, sample_input)`` (:mod:`maxp_jax.graph`: residual adds, gates,
        marked activation ops); without them the layers form a chain in rule order.
      depth: a depth rule of :mod:`maxp_core.depth` on top of the width exponents:
        :class:`~maxp_core.ChenScaling` (every rate times the graph's depth/topology factor,
        initial scales divided by ``sqrt(in-degree)``) or :class:`~maxp_core.BranchScaling`
        (depth-muP / CompleteP: residual-branch outputs times ``(L/L_base)^-alpha``, hidden
        rates times ``(L/L_base)^(alpha-1)``). With ``multipliers="folded"`` a branch
        multiplier is folded into the branch layer's init and rate; with ``"explicit"`` it is
        part of :meth:`multiplier`. Both rules read the graph, so give ``apply_fn`` and
        ``sample_input`` unless the layers form a chain.
      alignment_overrides: fixed ``(alpha, omega, u)`` over the rules' and the preset's:
        a mapping ``{layer name, name suffix after '/' or role: triple}`` or a
        :class:`maxp_core.tables.AlignmentTable` (each layer takes its kind's entry, see
        :func:`maxp_core.tables.layer_kind`), as in ``maxp_torch.Parametrization``.
      tie_rule: which optimal ``c`` the LP returns where several are optimal (see
        :mod:`maxp_core.lp`): ``"preset"`` (nearest the preset's ``c``) or ``"later"``.
      base_width: the model width at which your learning rate was tuned (or a mapping of
        layer name to base width; see :mod:`maxp_core.base_width`). Rates become
        ``learning_rate * (n / n_base)^-c`` and multipliers ``(n / n_base)^-a``, and
        :func:`~maxp_jax.abc_init` keeps the params' own initial weights, scaled by
        ``(n / n_base)^-(b - b_standard)``: at the base width the model is your own, trained
        at one learning rate, and away from it it scales as maxP says. ``None`` (default):
        powers of the width itself (``n_base = 1``) and ``abc_init`` draws ``n^-b``.
      bias_rule: the rate of each layer's other leaves (biases, gains):
        ``"layer"`` (its layer's factor, the default) or ``"constant-input"`` (the factor
        that keeps their contribution's updates width-independent; see
        :mod:`maxp_core.biases` and :meth:`vector_factors`).
      strict: a weight-like leaf (two or more axes, not counting a ``scan``'s layer axis)
        that no rule covers is an error; by default it is a warning naming every such leaf,
        since it would train at the base learning rate.

    Raises:
      MaxPError: an argument is not of the documented kind, a rule matches nothing or a
        leaf twice, or the LP has no answer; the message names the rule, path or argument.

    Examples:
      >>> import jax.numpy as jnp
      >>> params = {"params": {f"Dense_{i}": {"kernel": jnp.zeros((64, 64)), "bias": jnp.zeros(64)}
      ...                      for i in range(3)}}
      >>> spec = MaxPSpec(params, [Rule(r"params/Dense_0/.*", "embedding"),
      ...                          Rule(r"params/Dense_1/.*", "hidden"),
      ...                          Rule(r"params/Dense_2/.*", "readout")])
      >>> [(layer.name, layer.width, round(float(c), 6)) for layer, c in zip(spec.layers, spec.c)]
      [('params/Dense_0', 64, 0.5), ('params/Dense_1', 64, 1.0), ('params/Dense_2', 64, 0.5)]
    """

    params: Any
    rules: Sequence[Rule]
    parametrization: str = "mup"
    optimizer: str = "adam"
    alignment: str = "full"
    multipliers: MultiplierMode = "folded"
    feature_learning: bool = False
    solver: str = "highs"
    apply_fn: Any = None
    sample_input: Any = None
    depth: DepthScaling | None = None
    alignment_overrides: Mapping[str, Any] | AlignmentTable | None = None
    tie_rule: str = DEFAULT_TIE_RULE
    base_width: BaseWidth = None
    strict: bool = False
    bias_rule: str = "layer"
    layers: tuple[Layer, ...] = field(init=False)
    c: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._jaxpr: Any = None
        self._check_arguments()
        self.layers = self._with_overrides(self._find_layers())
        self.width_ratios = width_ratios({layer.name: layer.width for layer in self.layers}, self.base_width)
        self.graph = self._build_graph()
        self._check_layouts()  # after the graph, whose own errors name the cause more precisely
        warn_if_untraced(self.depth, self.apply_fn is not None, "give apply_fn and sample_input to trace it")
        self.depth_factors: DepthFactors = depth_factors(self.depth, self.graph, self.optimizer)
        self.lp = StabilityLP(
            self.graph,
            self.optimizer,
            feature_learning=self.feature_learning,
            c_fixed={layer.name: layer.c_fixed for layer in self.layers if layer.c_fixed is not None},
            solver=self.solver,
            tie_rule=self.tie_rule,
            reference_alignment=alignment_preset(self.alignment),
        )
        solution = self.lp.solve()
        self.c = np.array([solution.c[layer.name] for layer in self.layers])
        self._warn_on_tied_disagreement()
        slowdown = scores_slowdown(self.lp, solution.c)
        if slowdown is not None:
            width = next(layer.width for layer in self.layers if layer.name == slowdown.layer)
            ratio = None if self.base_width is None else self.width_ratios[slowdown.layer]
            warn_user(slowdown.message(width, ratio=ratio))

    def _warn_on_tied_disagreement(self) -> None:
        """A tied table takes the smaller std and rate of its two uses: say so where they differ."""
        stds = self.init_std() if self.base_width is None else self.init_scale()
        factors = self.factors()
        for uses in self.leaf_layer_index().values():
            if not isinstance(uses, TiedUses):
                continue
            pair = (uses.lookup, uses.readout)
            message = tied_disagreement(
                [self.layers[i].name for i in pair],
                [stds[i] for i in pair],
                [factors[i] for i in pair],
                own_init=self.base_width is not None,
            )
            if message:
                warn_user(
                    f"{message} (with multipliers='explicit', the model multiplies the lookup and the "
                    "logits by spec.multiplier of each)"
                )

    def _with_overrides(self, layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
        """The layers with ``alignment_overrides`` applied over their rules' alignments."""
        layer_roles = [(layer.name, layer.role.value) for layer in layers]
        fixed = resolve_overrides(layer_roles, self.alignment_overrides)
        self.alignment_sources = [
            "alignment_overrides" if k in fixed else "rule" if layer.alignment is not None else "preset"
            for k, layer in enumerate(layers)
        ]
        return tuple(
            dataclasses.replace(layer, alignment=fixed[k]) if k in fixed else layer
            for k, layer in enumerate(layers)
        )

    def _check_arguments(self) -> None:
        self.parametrization = parse_parametrization(validate.text(self.parametrization, "parametrization"))
        self.optimizer = parse_optimizer(validate.text(self.optimizer, "optimizer"))
        alignment_preset(validate.text(self.alignment, "alignment"))
        self.multipliers = validate.choice(self.multipliers, "multipliers", ("folded", "explicit"))  # type: ignore[assignment]
        self.feature_learning = validate.boolean(self.feature_learning, "feature_learning")
        self.solver = validate.choice(self.solver, "solver", SOLVERS)
        self.base_width = check_base_width(self.base_width)
        self.strict = validate.boolean(self.strict, "strict")
        self.bias_rule = check_bias_rule(self.bias_rule)
        if isinstance(self.rules, str | bytes) or not isinstance(self.rules, Sequence):
            raise MaxPError(f"rules must be a list of Rule, got {type(self.rules).__name__} {self.rules!r}")
        for k, rule in enumerate(self.rules):
            if not isinstance(rule, Rule):
                raise MaxPError(f"rules[{k}] must be a Rule, got {type(rule).__name__} {rule!r}")
        if self.apply_fn is not None and not callable(self.apply_fn):
            raise MaxPError(f"apply_fn must be callable, got {type(self.apply_fn).__name__}")

    # --- discovery -----------------------------------------------------------------

    def _find_layers(self) -> tuple[Layer, ...]:
        leaves = jax.tree_util.tree_flatten_with_path(self.params)[0]
        entries = [
            (path_string(p), jax.tree_util.keystr(tuple(p)), tuple(int(d) for d in np.shape(x)))
            for p, x in leaves
        ]
        owner = self._rule_of_leaf(entries)
        shapes = {slash: shape for slash, _, shape in entries}
        uses = self._leaf_uses([slash for slash, _, _ in entries])
        self._check_coverage(shapes, owner, uses.scanned)
        stacked = {p: _is_stacked(self.rules[k], p, shapes[p], uses.scanned) for p, k in owner.items()}
        layers: list[Layer] = []
        extras: dict[str, list[str]] = {}
        for k, rule in enumerate(self.rules):
            role = Role.parse(rule.role, layer=rule.pattern)
            paths = sorted((p for p, owner_k in owner.items() if owner_k == k), key=_natural_key)
            core = {p: shapes[p][1:] if stacked[p] else shapes[p] for p in paths}
            weights = [p for p in paths if len(core[p]) >= 2]
            for path in weights:
                if stacked[path]:
                    layers += [
                        self._make_layer(rule, role, path, core[path], t) for t in range(shapes[path][0])
                    ]
                elif leaf_key(path) in uses.tied:
                    layers += self._tied_layers(rule, role, path, core[path])
                else:
                    if rule.stacked is None and self.apply_fn is None and rule.layout == "dense":
                        _warn_if_ambiguous(path, shapes[path])
                    layers.append(self._make_layer(rule, role, path, core[path]))
            for path in (p for p in paths if len(core[p]) < 2):
                home = _home_weight(path, shapes, stacked, {layer.weight_path for layer in layers}, rule)
                extras.setdefault(home, []).append(path)
        if len(layers) < 2:
            raise MaxPError(
                f"maxP needs at least two layers (embedding and readout); the rules found {len(layers)}"
            )
        return tuple(
            Layer(**{**layer.__dict__, "extra_paths": tuple(extras.get(layer.weight_path, ()))})
            for layer in layers
        )

    def _check_layouts(self) -> None:
        """With the forward: every product of a layer's weight must contract the axis its
        layout reads as the input and output only the axis it reads as the output, else the
        width and fan-in it gets would be wrong (a kernel that splits its output into heads)."""
        if self.apply_fn is None or self.sample_input is None:
            return
        from maxp_jax.width_rules import product_axes

        paths = [path_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(self.params)[0]]
        products = product_axes(self.apply_fn, self.params, self.sample_input, self._jaxpr)
        position = {leaf_key(path): k for k, path in enumerate(paths)}
        for layer in self.layers:
            k = position[leaf_key(layer.weight_path)]
            shape = tuple(int(d) for d in np.shape(jax.tree_util.tree_leaves(self.params)[k]))
            if layer.layout == "embedding" or len(shape) < 2:
                continue
            stack = 1 if layer.stack_index is not None else 0  # a scan's layer axis comes first
            axis_in, axis_out = (
                (stack + 1, stack) if layer.layout == "torch" else (len(shape) - 2, len(shape) - 1)
            )
            for use in products.get(k, []):
                if use is None or (axis_in in use[0] and use[1] == {axis_out}):
                    continue
                contracted = sorted(use[0])
                raise MaxPError(
                    f"{layer.weight_path} (shape {shape}): apply_fn contracts its axes {contracted} and "
                    f"outputs its axes {sorted(use[1])}, but layout {layer.layout!r} reads axis {axis_in} as "
                    f"its input and axis {axis_out} as its output, so its width and fan-in would be wrong. A "
                    "kernel that splits its output into heads (flax's DenseGeneral, as in "
                    "MultiHeadDotProductAttention) is not a maxP layer yet: use a Dense of heads * head_dim "
                    "features and a reshape, or give the rule the layout that reads it"
                )

    def _check_coverage(
        self, shapes: Mapping[str, tuple[int, ...]], owner: Mapping[str, int], scanned: Mapping[str, int]
    ) -> None:
        """Name every weight-like leaf no rule covers (an error with ``strict``)."""
        uncovered = [
            f"{path} {shape} trains at the base rate"
            for path, shape in shapes.items()
            if path not in owner and len(shape) - (1 if path in scanned else 0) >= 2
        ]
        report_uncovered(uncovered, self.strict, "Give them a Rule (an exact path or a pattern)")

    def _rule_of_leaf(self, entries: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, int]:
        """The index of the rule that matches each matched leaf (by ``/`` path)."""
        keys = {slash: key for slash, key, _ in entries}
        return assign_rules(
            [rule.pattern for rule in self.rules],
            list(keys),
            lambda pattern, slash: _matches(pattern, slash, keys[slash]),
        )

    def _leaf_uses(self, paths: list[str]) -> LeafUses:
        """How ``apply_fn`` uses the leaves: stacked, tied (nothing known without it)."""
        if self.apply_fn is None or self.sample_input is None:
            return LeafUses()
        self._jaxpr = jax.make_jaxpr(self.apply_fn)(self.params, self.sample_input)
        found = leaf_uses(self._jaxpr, [leaf_key(p) for p in paths])
        by_key = {leaf_key(p): p for p in paths}
        return LeafUses(
            scanned={by_key[k]: n for k, n in found.scanned.items()},
            looked_up=found.looked_up,
            multiplied=found.multiplied,
        )

    def _tied_layers(self, rule: Rule, role: Role, path: str, shape: tuple[int, ...]) -> list[Layer]:
        """The two layers of a table that is looked up and multiplied: its embedding (named
        as the table) and its readout (``<name>.readout``); the rule's own role takes the
        rule's exponents, the other use the parametrization's."""
        if rule.layout != "embedding" or len(shape) != 2 or role is Role.HIDDEN:
            raise MaxPError(
                f"{path} (shape {shape}) is both looked up and multiplied (a tied embedding and readout); "
                f"match it with an embedding or readout rule with layout='embedding', "
                f"not role {role.value!r} and layout {rule.layout!r}"
            )
        plain = Rule(rule.pattern, "embedding", layout="embedding")
        as_table = rule if role is Role.EMBEDDING else plain
        as_readout = Rule(
            rule.pattern, "readout", layout="torch", **({} if role is Role.EMBEDDING else _overrides(rule))
        )
        lookup = self._make_layer(as_table, Role.EMBEDDING, path, shape)
        readout = self._make_layer(as_readout, Role.READOUT, path, shape)
        return [lookup, dataclasses.replace(readout, name=f"{lookup.name}.readout")]

    def _make_layer(
        self, rule: Rule, role: Role, path: str, shape: tuple[int, ...], stack_index: int | None = None
    ) -> Layer:
        in_dim, fan_in, out_dim = _dims(path, shape, rule.layout)
        width = rule.width if rule.width is not None else (out_dim if role is Role.EMBEDDING else in_dim)
        if not isinstance(width, int) or width < 1:
            raise MaxPError(f"{path}: width must be a positive integer, got {width!r}")
        a0, b0 = default_ab(self.parametrization, role)
        a = a0 if rule.a is None else float(rule.a)
        b = b0 if rule.b is None else float(rule.b)
        if b != math.inf:  # a zero initial weight is stable whatever its multiplier
            check_init_stability(path, role, a, b)
        leaf_name = leaf_key(path).rsplit("/", 1)[-1]
        name = (_parent(path) if leaf_name in ("kernel", "embedding", "weight", "w") else path) or path
        return Layer(
            name=name if stack_index is None else f"{name}[{stack_index}]",
            role=role,
            weight_path=path,
            shape=shape,
            width=width,
            fan_in=fan_in,
            a=a,
            b=b,
            layout=rule.layout,
            c_fixed=None if rule.c is None else float(rule.c),
            alignment=None if rule.alignment is None else tuple(float(v) for v in rule.alignment),  # type: ignore[arg-type]
            stack_index=stack_index,
            window=fan_in // in_dim,
        )

    def _build_graph(self) -> OpGraph:
        preset = alignment_preset(self.alignment)
        if (self.apply_fn is None) != (self.sample_input is None):
            raise MaxPError("give both apply_fn and sample_input to discover the graph, or neither")
        if self.apply_fn is not None:
            from maxp_jax.graph import discover_graph

            graph = discover_graph(self, self.apply_fn, self.params, self.sample_input, self._jaxpr)
        else:
            graph = graph_by_roles(
                [layer.name for layer in self.layers],
                [layer.role for layer in self.layers],
                [(layer.a, layer.b) for layer in self.layers],
                trace_hint="give MaxPSpec apply_fn and sample_input",
            )
        if self.apply_fn is not None:
            _warn_on_flattened_inputs(graph, self.layers)
        numbers = {layer.name: layer.alignment or preset for layer in self.layers}
        return graph.with_numbers(
            alpha={n: t[0] for n, t in numbers.items()},
            omega={n: t[1] for n, t in numbers.items()},
            u={n: t[2] for n, t in numbers.items()},
        )

    # --- exponents -----------------------------------------------------------------

    def layer_alignment_presets(self) -> np.ndarray:
        """``(layers, 3)``: each layer's ``(alpha, omega, u)`` in the graph (preset or override)."""
        return np.array(
            [[n.alpha, n.omega, n.u] for n in (self.graph.node(layer.name) for layer in self.layers)]
        )

    def solve(self, alignment: np.ndarray) -> np.ndarray:
        """The LP's ``c`` per layer for per-layer alignments ``(layers, 3)``."""
        names = [layer.name for layer in self.layers]
        numbers = {
            key: dict(zip(names, alignment[:, j], strict=True))
            for j, key in enumerate(("alpha", "omega", "u"))
        }
        solution = self.lp.solve(**numbers)
        return np.array([solution.c[name] for name in names])

    def effective_abc(
        self, c: Sequence[float] | np.ndarray | None = None
    ) -> list[tuple[float, float, float]]:
        """``(a, b, c)`` per layer as the model and optimizer apply them (after folding)."""
        cs = self.c if c is None else np.asarray(c, dtype=np.float64)
        out = []
        for layer, ci in zip(self.layers, cs, strict=True):
            if self.multipliers == "folded":
                out.append(fold_multiplier(layer.a, layer.b, float(ci), self.optimizer))
            else:
                out.append((layer.a, layer.b, float(ci)))
        return out

    def _depth(self, layer: Layer) -> tuple[float, float]:
        """``(init, lr)`` multipliers the depth rule gives ``layer`` (its branch multiplier
        folded in unless the model applies it)."""
        f = self.depth_factors
        if self.multipliers == "folded":
            return f.folded(layer.name, self.optimizer)
        return f.init[layer.name], f.lr[layer.name]

    def factors(self, c: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """Learning-rate factor ``n^-c`` per layer (``(n / n_base)^-c`` with a base width; after
        folding, times the depth rule's), float64."""
        effective = self.effective_abc(c)
        return np.array(
            [
                self.width_ratios[layer.name] ** -abc[2] * self._depth(layer)[1]
                for layer, abc in zip(self.layers, effective, strict=True)
            ]
        )

    def vector_factors(self, c: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """The learning-rate factor of each layer's biases and gains under :attr:`bias_rule`
        (``"layer"``: :meth:`factors`), float64; see :mod:`maxp_core.biases`."""
        if self.bias_rule == "layer":
            return self.factors(c)
        effective = self.effective_abc(c)
        if self.optimizer == "sgd":
            solution = self.lp.solve(**full_alignment([n.name for n in self.graph.nodes]))
            full = self.effective_abc([solution.c[layer.name] for layer in self.layers])
        else:
            full = effective
        out = []
        for layer, (a, _, c_now), (_, _, c_full) in zip(self.layers, effective, full, strict=True):
            exponent = vector_exponent(self.bias_rule, self.optimizer, layer.role, a, c_now, c_full)
            out.append(self.width_ratios[layer.name] ** -exponent * self._depth(layer)[1])
        return np.array(out)

    def init_std(self, std_prefactor: float = 1.0) -> np.ndarray:
        """Initial standard deviation ``std_prefactor * n^-b`` per layer (after folding, times
        the depth rule's; a convolution's and a flattened input's constant counts their whole
        fan-in, :mod:`maxp_core.initial`); without a base width only (with one, see
        :meth:`init_scale`)."""
        if self.base_width is not None:
            raise MaxPError(
                "with a base width the initial weights are the params' own, scaled by spec.init_scale(); "
                "there is no std of maxP's own to report"
            )
        return np.array(
            [
                std_prefactor
                * std_correction(layer.role, layer.fan_in, layer.width, layer.window)
                * layer.width ** -abc[1]
                * self._depth(layer)[0]
                for layer, abc in zip(self.layers, self.effective_abc(), strict=True)
            ]
        )

    def forward_gains(self, std_prefactor: float = 1.0) -> np.ndarray:
        """Each layer's ``fan_in * (std * multiplier)^2`` at initialisation (without a base width)."""
        stds = self.init_std(std_prefactor)
        multipliers = [
            1.0 if self.multipliers == "folded" else self.multiplier(layer.name) for layer in self.layers
        ]
        return np.array(
            [
                forward_gain(layer.fan_in, std, m)
                for layer, std, m in zip(self.layers, stds, multipliers, strict=True)
            ]
        )

    def init_scale(self, std_prefactor: float = 1.0) -> np.ndarray:
        """With a base width: what each layer's own initial weight is multiplied by,
        ``std_prefactor * (n / n_base)^-(b - b_standard)`` (after folding, times the depth
        rule's); see :mod:`maxp_core.base_width`."""
        if self.base_width is None:
            raise MaxPError("init_scale needs a base width: MaxPSpec(..., base_width=...)")
        return np.array(
            [
                std_prefactor
                * init_rescale(self.width_ratios[layer.name], abc[1], layer.role)
                * self._depth(layer)[0]
                for layer, abc in zip(self.layers, self.effective_abc(), strict=True)
            ]
        )

    def multiplier(self, name: str) -> float:
        """Output multiplier ``n^-a`` of a layer (times a depth rule's branch multiplier when
        ``multipliers="explicit"``), for ``multipliers="explicit"`` models."""
        for layer in self.layers:
            if name in (layer.name, layer.weight_path):
                branch = self.depth_factors.multiplier[layer.name] if self.multipliers == "explicit" else 1.0
                return float(self.width_ratios[layer.name] ** -layer.a * branch)
        raise MaxPError(f"no maxP layer named {name!r}; layers: {[layer.name for layer in self.layers]}")

    def leaf_layer_index(self) -> dict[str, int | tuple[int, ...] | TiedUses]:
        """Layer index of every parametrized leaf, keyed by :func:`leaf_key`; for a stacked
        leaf, the indices of the layers of its slices, in slice order; for a tied table,
        its :class:`TiedUses`."""
        slices: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for path in layer.paths:
                slices.setdefault(leaf_key(path), []).append(i)
        return {key: _leaf_index(found, self.layers) for key, found in slices.items()}

    def describe(self, opt_state: Any = None) -> str:
        """The layers and every leaf's learning-rate factor, as a text table.

        One row per layer: role, width, ``a``, ``b``, ``c``, learning-rate factor, initial
        standard deviation (with a base width: the scale of the params' own init), the
        alignment ``(alpha, omega, u)`` and where it comes from (``preset``, ``rule``,
        ``alignment_overrides``, or ``measured`` once a dynamic run re-solved). Then each
        layer's other leaves (biases, gains) with the factor they share, and the leaves no
        layer owns, which train at the base rate (factor 1).

        Args:
          opt_state: an optimizer state holding this spec's maxP state: ``c``, factors and
            alignments are then the state's (after the re-solves) instead of the preset's.
        """
        from maxp_core.text import format_table

        c, factors, alignment, sources = self._current(opt_state)
        base = self.base_width is not None
        init = self.init_scale() if base else self.init_std()
        rows = [
            (layer.name, layer.role.value, layer.width, layer.a, layer.b, float(ci), float(f), float(s),
             *(float(v) for v in al), source)
            for layer, ci, f, s, al, source in zip(
                self.layers, c, factors, init, alignment, sources, strict=True
            )
        ]  # fmt: skip
        header = ("layer", "role", "width", "a", "b", "c", "lr factor", "init scale" if base else "init std")
        lines = [format_table(rows, (*header, "alpha", "omega", "u", "alignment from"))]
        base_line = describe_base({layer.name: layer.width for layer in self.layers}, self.base_width)
        lines += [base_line] if base_line else []
        lines += [f"depth: {self.depth_factors.rule}"] if self.depth is not None else []
        lines += self._leaf_lines(factors)
        return "\n".join(lines)

    def _current(self, opt_state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``(c, factors, alignments, sources)``: the preset's, or an optimizer state's."""
        presets = self.layer_alignment_presets()
        if opt_state is None:
            return self.c, self.factors(), presets, list(self.alignment_sources)
        from maxp_jax.transform import find_maxp_state

        state = jax.device_get(find_maxp_state(opt_state))
        alignment = np.asarray(state.alignment, dtype=np.float64)
        measured = int(state.solves) > 0
        sources = [
            "measured" if measured and source == "preset" and layer.role is not Role.EMBEDDING else source
            for layer, source in zip(self.layers, self.alignment_sources, strict=True)
        ]
        return np.asarray(state.c), np.asarray(state.factors), alignment, sources

    def _leaf_lines(self, factors: np.ndarray) -> list[str]:
        """Each layer's other leaves with their factor, then the leaves at the base rate."""
        lines = []
        own = None if self.bias_rule == "layer" else self.vector_factors()
        shared = [
            f"  {path}: {float(factors[i] if own is None else own[i]):.4g} "
            + (f"(as {layer.name})" if own is None else f"(bias rule {self.bias_rule!r}, layer {layer.name})")
            for i, layer in enumerate(self.layers)
            for path in layer.extra_paths
        ]
        if shared:
            title = "leaves that share their layer's factor:" if own is None else "biases and gains:"
            lines += [title, *shared]
        owned = {leaf_key(path) for layer in self.layers for path in layer.paths}
        others = [
            path_string(p)
            for p, _ in jax.tree_util.tree_flatten_with_path(self.params)[0]
            if leaf_key(path_string(p)) not in owned
        ]
        if others:
            lines += [f"leaves at the base rate (factor 1): {', '.join(others)}"]
        return lines


def _leaf_index(found: list[int], layers: Sequence[Layer]) -> int | tuple[int, ...] | TiedUses:
    if layers[found[0]].stack_index is not None:
        return tuple(found)
    return TiedUses(*found) if len(found) == 2 else found[0]


def _overrides(rule: Rule) -> dict[str, Any]:
    """The exponents and numbers a rule sets for its layers."""
    keys = ("width", "a", "b", "c", "alignment")
    return {key: getattr(rule, key) for key in keys if getattr(rule, key) is not None}


def _is_stacked(rule: Rule, path: str, shape: tuple[int, ...], scanned: dict[str, int]) -> bool:
    """Whether the leading axis of the leaf at ``path`` indexes layers."""
    stacked = rule.stacked if rule.stacked is not None else path in scanned
    if stacked and len(shape) < 1:
        raise MaxPError(
            f"{path} (shape {shape}) is stacked by rule {rule.pattern!r} but has no leading (layers) "
            "axis; match it without stacked=True"
        )
    return stacked


def _warn_if_ambiguous(path: str, shape: tuple[int, ...]) -> None:
    """A dense kernel of three or more axes may be a convolution or stacked layers."""
    if len(shape) >= 3:
        warn_user(
            f"{path}: a kernel of shape {shape} is read as one layer with fan-in "
            f"{math.prod(shape[:-1])} (a convolution); if its leading axis stacks layers, give "
            "Rule(..., stacked=True) or apply_fn and sample_input; stacked=False silences this"
        )


def _home_weight(
    path: str, shapes: dict[str, tuple[int, ...]], stacked: dict[str, bool], weights: set[str], rule: Rule
) -> str:
    """The weight leaf beside a bias-like leaf, whose layers it joins (slice by slice when stacked)."""
    parent = _parent(path)
    homes = [w for w in weights if _parent(w) == parent]
    if len(homes) != 1:
        raise MaxPError(
            f"{path} (shape {shapes[path]}) is matched by rule {rule.pattern!r} but no single "
            f"weight sits beside it under {parent or 'the root'!r}; match it with its own rule "
            "or leave it out of the pattern"
        )
    home = homes[0]
    if stacked[path] != stacked[home] or (stacked[path] and shapes[path][0] != shapes[home][0]):
        raise MaxPError(
            f"{path} (shape {shapes[path]}) and its weight {home} (shape {shapes[home]}) must both be "
            "stacked over the same leading axis, or neither"
        )
    return home


def _warn_on_flattened_inputs(graph: OpGraph, layers: Sequence[Layer]) -> None:
    """Warn where a layer's input looks flattened (:func:`maxp_core.graph.flattened_inputs`);
    embeddings and layers whose rule sets the width are the user's choice."""
    dims = {layer.name: _dims(layer.weight_path, layer.shape, layer.layout) for layer in layers}
    paths = {layer.name: layer.weight_path for layer in layers}
    sizes = {name: (d[0], d[2]) for name, d in dims.items()}
    considered = {
        layer.name
        for layer in layers
        if layer.role is not Role.EMBEDDING and layer.width == dims[layer.name][0]
    }
    for name, in_dim, out, feeding in flattened_inputs(graph, sizes):
        if name not in considered:
            continue
        warn_user(
            f"{paths[name]}: fan-in {in_dim} = {in_dim // out} x the {out} outputs of {', '.join(feeding)} "
            f"(a flatten?); its width is taken as {in_dim}. If the {in_dim // out} is a fixed "
            f"spatial size, give its rule width={out} (its init std then scales with {out} too)"
        )


def _parent(path: str) -> str:
    """The module a leaf belongs to: its path without the leaf's own name (and without
    the ``/value`` that flax nnx variables add)."""
    path = leaf_key(path)
    return path.rsplit("/", 1)[0] if "/" in path else ""
