"""Rules read off one model's params at two widths.

:func:`rules_from_widths` pairs the leaves of the params at a small and a large width by
path and reads each weight's role from which of its axes grow: a fixed input and a
growing output is an embedding, both growing a hidden layer, a growing input and a fixed
output the readout, and a weight with neither growing keeps the base rate. Which axis is
the input comes from, in order:

- with ``apply_fn`` and ``sample_input``, how the large model uses the leaf: a leaf it
  looks up (a gather) is an embedding table, and the axis a ``dot_general`` or a
  convolution contracts is the input; a leaf a ``scan`` slices is stacked layers, its
  leading axis no layer axis;
- an equinox module: the ``weight`` of ``eqx.nn.Embedding`` is a ``(num, dim)`` table, that
  of ``eqx.nn.Linear`` or ``eqx.nn.Conv`` is ``(out, in, ...)``;
- the leaf's name: flax ``kernel`` ``(..., in, out)``, flax ``embedding`` ``(vocab, d)``,
  torch-style ``weight`` ``(out, in, ...)``.

A bias or a gain (one axis, or one besides a stacked axis) beside a weight joins that
weight's rule; other vectors (norm scales) match no rule and keep the base rate. The rules
are ordinary :class:`~maxp_jax.spec.Rule` objects whose patterns generalize numbered path
components (``Dense_[1-6]``, ``blocks_\\d+``) and merge siblings of the same role
(``(q|k|v)``), each checked to match exactly its leaves of the large params.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

from maxp_core import MaxPError
from maxp_jax.jaxpr_tools import VALUE_VIEWS, Interpreter
from maxp_jax.spec import Rule, leaf_key, path_string
from maxp_jax.stacking import LOOKUPS

#: The layout a weight's own name implies: flax ``kernel`` and ``embedding``, torch-style ``weight``.
NAME_LAYOUTS = {"kernel": "dense", "embedding": "embedding", "weight": "torch"}
#: ``(input grows, output grows)`` -> role.
_ROLES = {(False, True): "embedding", (True, True): "hidden", (True, False): "readout"}
_ROLE_ORDER = ("embedding", "hidden", "readout")
_LAYOUT_HELP = "layout='dense' (..., in, out), 'torch' (out, in, ...) or 'embedding' (vocab, width)"
#: Ops after which a leaf is still the leaf, but its axes are no longer known.
_RESHAPES = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim"})
#: Ops that keep a leaf the leaf when every other operand is a scalar (a multiplier).
_SCALINGS = frozenset({"mul", "div", "neg"})
Template = tuple[frozenset[str], ...]


@dataclass(frozen=True)
class _Leaf:
    """One array leaf, at both widths."""

    index: int
    keypath: tuple[Any, ...]
    path: str
    keystr: str
    small: tuple[int, ...]
    large: tuple[int, ...]

    @property
    def segments(self) -> list[str]:
        return leaf_key(self.path).split("/")

    @property
    def parent(self) -> str:
        return "/".join(self.segments[:-1])

    @property
    def grows(self) -> set[int]:
        return {axis for axis, (s, n) in enumerate(zip(self.small, self.large, strict=True)) if n > s}

    def shapes(self) -> str:
        return f"shape {self.small} at the small width, {self.large} at the large"


@dataclass(frozen=True)
class _Ref:
    """A value that is parameter leaf ``leaf``; ``axes[i]``: the leaf axis of its axis ``i``
    (``None`` once a reshape has lost them)."""

    leaf: int
    axes: tuple[int, ...] | None


@dataclass
class _Uses:
    """How ``apply_fn`` uses the leaves (by flat index)."""

    looked_up: set[int] = field(default_factory=set)
    #: Per product use: (the leaf axes it contracts, the leaf axes it outputs), or None.
    products: dict[int, list[tuple[frozenset[int], frozenset[int]] | None]] = field(default_factory=dict)
    #: The leaf axis a scan slices.
    scanned: dict[int, int] = field(default_factory=dict)
    #: The leaves whose products the output of a leaf's product or lookup flows into.
    feeds: dict[int, set[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Member:
    """A weight with a role and the vectors that follow it."""

    weight: _Leaf
    role: str
    layout: str
    stacked: bool
    vectors: tuple[_Leaf, ...]

    @property
    def paths(self) -> set[str]:
        return {self.weight.path, *(v.path for v in self.vectors)}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(leaf.segments[-1] for leaf in (self.weight, *self.vectors))


def rules_from_widths(
    small_params: Any,
    large_params: Any,
    *,
    apply_fn: Callable[[Any, Any], Any] | None = None,
    sample_input: Any = None,
    rules: Sequence[Rule] = (),
) -> list[Rule]:
    """The maxP rules of a model, read from its params at two widths.

    Args:
      small_params: the params pytree at a smaller width (arrays or ``jax.ShapeDtypeStruct``;
        flax linen or nnx state, an equinox module, a dict).
      large_params: the same model's params at a larger width, with the same paths.
      apply_fn, sample_input: the large model's forward, ``apply_fn(large_params, sample_input)``
        as :class:`~maxp_jax.spec.MaxPSpec` takes it; give both to read from the jaxpr which
        axis of each weight is its input, which leaf is a looked-up table, which leaves a
        ``scan`` stacks and which weight's output is the model's.
      rules: rules of your own, for the leaves the widths cannot tell (the error says which);
        the leaves they match are left to them, and they are returned with the others.

    Returns:
      The rules, embeddings first and readouts last (``rules`` first within their role): one
      per role, layout and stacking where one pattern covers them, a stacked leaf's rule with
      ``stacked=True``.

    Raises:
      MaxPError: the paths of the two params differ; a leaf loses or gains axes, shrinks, or
        grows in an axis that is neither its input nor its output; a growing weight's input
        axis cannot be told from its output axis; or a readout-looking weight feeds another
        growing layer (a fixed-size hidden dimension). The message names the leaf and its
        shapes and asks for a :class:`~maxp_jax.spec.Rule`.

    Examples:
      >>> import jax.numpy as jnp
      >>> def mlp(d):  # flax-style params: Dense_0 (4 -> d), Dense_1 and Dense_2 (d -> d), Dense_3 (d -> 3)
      ...     sizes = [(4, d), (d, d), (d, d), (d, 3)]
      ...     return {"params": {f"Dense_{i}": {"kernel": jnp.zeros(s), "bias": jnp.zeros(s[1])}
      ...                        for i, s in enumerate(sizes)}}
      >>> print(format_rules(rules_from_widths(mlp(8), mlp(16))))
      Rule(r"params/Dense_0/(bias|kernel)", "embedding")
      Rule(r"params/Dense_[12]/(bias|kernel)", "hidden")
      Rule(r"params/Dense_3/(bias|kernel)", "readout")
    """
    if (apply_fn is None) != (sample_input is None):
        raise MaxPError("give both apply_fn and sample_input (the large model's forward), or neither")
    given = list(rules)
    if not all(isinstance(rule, Rule) for rule in given):
        raise MaxPError(f"rules must be a list of Rule, got {given!r}")
    leaves, entries = _paired_leaves(small_params, large_params)
    taken = set().union(*(_hits(rule.pattern, entries) for rule in given))
    uses = None if apply_fn is None else _trace(apply_fn, large_params, sample_input, len(entries))
    members = _members(leaves, taken, uses, large_params)
    groups: dict[tuple[str, str, bool], list[_Member]] = {}
    for member in members:
        groups.setdefault((member.role, member.layout, member.stacked), []).append(member)
    ordered = sorted(
        groups.items(), key=lambda item: (_ROLE_ORDER.index(item[0][0]), _natural_key(item[1][0].weight.path))
    )
    found = [
        Rule(pattern, role, layout=layout, stacked=True if stacked else None)  # type: ignore[arg-type]
        for (role, layout, stacked), group in ordered
        for pattern in _patterns(group, entries)
    ]
    return sorted(given + found, key=lambda rule: _ROLE_ORDER.index(rule.role))  # stable: given first


def format_rules(rules: Iterable[Rule]) -> str:
    """The rules as the Python lines that write them, one per line (defaults left out).

    Examples:
      >>> print(format_rules([Rule(r"layers/\\d+/weight", "hidden", layout="torch")]))
      Rule(r"layers/\\d+/weight", "hidden", layout="torch")
    """
    lines = []
    for rule in rules:
        extra = "" if rule.layout == "dense" else f', layout="{rule.layout}"'
        extra += ", stacked=True" if rule.stacked else ""
        raw = '"' not in rule.pattern and not rule.pattern.endswith("\\")
        pattern = f'r"{rule.pattern}"' if raw else repr(rule.pattern)
        lines.append(f'Rule({pattern}, "{rule.role}"{extra})')
    return "\n".join(lines)


# --- the leaves at both widths ------------------------------------------------------


def _paired_leaves(small: Any, large: Any) -> tuple[list[_Leaf], list[tuple[str, str]]]:
    """The array leaves at both widths, and ``(path, keystr)`` of every large leaf (in
    flattening order, the order of the jaxpr's inputs)."""
    flat_small = {path_string(p): x for p, x in jax.tree_util.tree_flatten_with_path(small)[0]}
    flat_large = jax.tree_util.tree_flatten_with_path(large)[0]
    entries = [(path_string(p), jax.tree_util.keystr(tuple(p))) for p, _ in flat_large]
    large_arrays = {path_string(p) for p, x in flat_large if hasattr(x, "shape")}
    small_arrays = {path for path, x in flat_small.items() if hasattr(x, "shape")}
    if large_arrays != small_arrays:
        only_small, only_large = sorted(small_arrays - large_arrays), sorted(large_arrays - small_arrays)
        raise MaxPError(
            "the small and large params must be the same model at two widths, with the same leaf paths; "
            f"only in the small params: {only_small[:5]}, only in the large: {only_large[:5]}. Build both "
            "from one model class and config with only the width changed (same depth, same layers)"
        )
    leaves = []
    for index, (keypath, x) in enumerate(flat_large):
        path = entries[index][0]
        if path not in large_arrays:
            continue
        leaf = _Leaf(index, tuple(keypath), path, entries[index][1], _shape(flat_small[path]), _shape(x))
        if len(leaf.small) != len(leaf.large) or any(
            n < s for s, n in zip(leaf.small, leaf.large, strict=True)
        ):
            raise MaxPError(
                f"{path}: {leaf.shapes()}; a leaf may only grow between the two widths, keeping its "
                "axes; give params of the same model at a smaller and a larger width"
            )
        leaves.append(leaf)
    if not any(leaf.grows for leaf in leaves):
        raise MaxPError("no leaf grows between the two params; give the model at two different widths")
    return leaves, entries


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


# --- how apply_fn uses the leaves ---------------------------------------------------


class _Follow(Interpreter):
    """Follows each parameter leaf through views to its lookups and products, and the
    output of every product to the products it reaches."""

    evaluates = False

    def __init__(self) -> None:
        self.uses = _Uses()

    def slice_note(self, note: Any, step: int) -> Any:
        if isinstance(note, _Ref) and note.axes:
            self.uses.scanned.setdefault(note.leaf, note.axes[0])
            return _Ref(note.leaf, note.axes[1:])
        return _Ref(note.leaf, None) if isinstance(note, _Ref) else note

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        out = [None] * len(eqn.outvars)
        refs = [(k, note) for k, note in enumerate(notes) if isinstance(note, _Ref)]
        if len(refs) == 1:
            kept = _view(eqn, *refs[0])
            if kept is not None:
                return [kept, *out[1:]]
        if name in LOOKUPS and isinstance(notes[0], _Ref):
            self.uses.looked_up.add(notes[0].leaf)
        if name == "dot_general":
            contract, batch = eqn.params["dimension_numbers"]
            for side in (0, 1):
                if isinstance(notes[side], _Ref):
                    self._product(notes[side], set(contract[side]), set(batch[side]))
        if name == "conv_general_dilated" and isinstance(notes[1], _Ref):
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial ...)
            self._product(notes[1], {spec[1]}, set(), out_axis=spec[0])
        used = frozenset(ref.leaf for _, ref in refs) if name in LOOKUPS or _is_product(name) else frozenset()
        flows: frozenset[int] = frozenset().union(*(n for n in notes if isinstance(n, frozenset)))
        if _is_product(name):
            for source in flows:
                self.uses.feeds.setdefault(source, set()).update(used)
        return [flows | used or None] * len(out)

    def _product(self, ref: _Ref, contract: set[int], batch: set[int], out_axis: int | None = None) -> None:
        uses = self.uses.products.setdefault(ref.leaf, [])
        if ref.axes is None:
            uses.append(None)
            return
        outputs = {out_axis} if out_axis is not None else set(range(len(ref.axes))) - contract - batch
        uses.append((frozenset(ref.axes[d] for d in contract), frozenset(ref.axes[d] for d in outputs)))


def _is_product(name: str) -> bool:
    return name in ("dot_general", "conv_general_dilated")


def _view(eqn: Any, position: int, ref: _Ref) -> _Ref | None:
    """The note of the result of ``eqn`` on a leaf that stays the leaf (a cast, transpose,
    reshape or scalar multiple), else ``None``."""
    name = eqn.primitive.name
    if name in VALUE_VIEWS:
        return ref
    if name == "transpose":
        return _Ref(
            ref.leaf, None if ref.axes is None else tuple(ref.axes[p] for p in eqn.params["permutation"])
        )
    if name in _RESHAPES:
        return _Ref(ref.leaf, None)
    others = [v for k, v in enumerate(eqn.invars) if k != position]
    if name in _SCALINGS and all(not getattr(getattr(v, "aval", None), "shape", ()) for v in others):
        return ref
    return None


def product_axes(
    apply_fn: Callable[[Any, Any], Any], params: Any, x: Any, closed: Any = None
) -> dict[int, list[tuple[frozenset[int], frozenset[int]] | None]]:
    """For each params leaf (by flat index) that ``apply_fn(params, x)`` multiplies: per
    product, ``(the leaf axes it contracts, the leaf axes it outputs)``, or ``None`` where a
    reshape on the way hides them. ``closed``: the jaxpr of that call, if already traced."""
    return _trace(apply_fn, params, x, len(jax.tree_util.tree_leaves(params)), closed).products


def _trace(
    apply_fn: Callable[[Any, Any], Any], params: Any, x: Any, n_leaves: int, closed: Any = None
) -> _Uses:
    """How the jaxpr of ``apply_fn(params, x)`` uses each of the ``n_leaves`` params leaves."""
    closed = jax.make_jaxpr(apply_fn)(params, x) if closed is None else closed
    flat = jax.tree_util.tree_leaves(params)
    notes: list[Any] = [_Ref(k, tuple(range(len(leaf.shape)))) for k, leaf in enumerate(flat[:n_leaves])]
    notes += [None] * (len(closed.jaxpr.invars) - len(notes))
    walk = _Follow()
    walk.run(closed.jaxpr, list(closed.consts), [None] * len(notes), notes)
    return walk.uses


# --- roles ----------------------------------------------------------------------------


def _members(leaves: list[_Leaf], taken: set[str], uses: _Uses | None, root: Any) -> list[_Member]:
    """Every growing weight that no given rule took (``taken``: the leaves they match), with
    its role, layout and the vectors beside it."""
    stack = {leaf.index: (uses.scanned.get(leaf.index) if uses else None) for leaf in leaves}
    core = {leaf.index: [a for a in range(len(leaf.large)) if a != stack[leaf.index]] for leaf in leaves}
    weights = [leaf for leaf in leaves if len(core[leaf.index]) >= 2]
    decided = {}
    for leaf in weights:
        if leaf.path in taken:
            continue
        if stack[leaf.index] is not None and stack[leaf.index] in leaf.grows:
            raise MaxPError(
                f"{leaf.path}: {leaf.shapes()}; a scan slices its axis {stack[leaf.index]} (stacked "
                "layers), which must not grow; give it rules=[Rule(...)]"
            )
        role_layout = _role(leaf, core[leaf.index], uses, root)
        if role_layout is not None:
            decided[leaf.index] = role_layout
    _check_ends(leaves, decided, {w.index for w in weights if w.grows}, uses)
    members = []
    for leaf in weights:
        if leaf.index not in decided:
            continue
        stacked = stack[leaf.index] is not None
        beside = [w for w in weights if w.parent == leaf.parent]
        vectors = tuple(
            v
            for v in leaves
            if len(beside) == 1
            and v.parent == leaf.parent
            and len(core[v.index]) < 2
            and (stack[v.index] is not None) == stacked
            and v.path not in taken
        )
        members.append(_Member(leaf, *decided[leaf.index], stacked, vectors))
    return members


def _role(leaf: _Leaf, core: list[int], uses: _Uses | None, root: Any) -> tuple[str, str] | None:
    """``(role, layout)`` of a weight whose input or output grows, ``None`` if neither does."""
    grows = leaf.grows
    if not grows:
        return None
    layout, source = _layout(leaf, core, uses, root)
    if layout is None:
        name = leaf.segments[-1]
        unused = ", and no product or lookup of apply_fn shows it" if uses is not None else ""
        hint = "" if uses is not None else "give apply_fn and sample_input, or "
        raise MaxPError(
            f"{leaf.path} ({leaf.shapes()}): cannot tell its input axis from its output axis (its name "
            f"{name!r} is none of {sorted(NAME_LAYOUTS)}{unused}); {hint}give it "
            f"rules=[Rule(..., {_LAYOUT_HELP})]"
        )
    in_axis, out_axis = _in_out(core, layout)
    stray = sorted(grows - {in_axis, out_axis})
    if stray:
        raise MaxPError(
            f"{leaf.path} ({leaf.shapes()}): axes {stray} grow, but read with layout {layout!r} only its "
            f"input axis {in_axis} and output axis {out_axis} may; give it rules=[Rule(..., {_LAYOUT_HELP})]"
        )
    role = _ROLES[(in_axis in grows, out_axis in grows)]
    if source == "name" and layout == "torch" and role == "readout":
        raise MaxPError(
            f"{leaf.path} ({leaf.shapes()}) reads as a readout (out, in) but may be an embedding table "
            "(num, dim), as equinox stores one; give apply_fn and sample_input, or rules=[Rule(...)] with "
            "layout='torch' (a readout) or layout='embedding' (a table)"
        )
    return role, layout


def _layout(leaf: _Leaf, core: list[int], uses: _Uses | None, root: Any) -> tuple[str | None, str]:
    """The weight's layout and what told it: ``"use"``, ``"module"`` or ``"name"``."""
    if uses is not None:
        if leaf.index in uses.looked_up:
            return "embedding", "use"
        read = {layout for use in uses.products.get(leaf.index, []) if (layout := _read_layout(core, use))}
        if len(read) > 1:
            raise MaxPError(
                f"{leaf.path} ({leaf.shapes()}): apply_fn contracts different axes of it in different "
                f"products (read as {sorted(read)}); give it rules=[Rule(..., {_LAYOUT_HELP})]"
            )
        if read:
            return read.pop(), "use"
    module = _module_layout(root, leaf.keypath)
    if module is not None:
        return module, "module"
    return NAME_LAYOUTS.get(leaf.segments[-1]), "name"


def _read_layout(core: list[int], use: tuple[frozenset[int], frozenset[int]] | None) -> str | None:
    """The layout under which a product's contracted and output axes are the weight's input and output."""
    if use is None:
        return None
    contracted, outputs = use
    if outputs == {core[-1]} and core[-2] in contracted:
        return "dense"
    if outputs == {core[0]} and core[1] in contracted:
        return "torch"
    return None


def _in_out(core: list[int], layout: str) -> tuple[int, int]:
    """The input and output axes of a weight read with ``layout`` (as ``maxp_jax.spec`` reads them)."""
    if layout == "dense":
        return core[-2], core[-1]
    if layout == "torch":
        return core[1], core[0]
    return core[0], core[-1]


def _module_layout(root: Any, keypath: tuple[Any, ...]) -> str | None:
    """The layout of an equinox ``Embedding``, ``Linear`` or ``Conv`` weight, from its module."""
    eqx = sys.modules.get("equinox")
    if eqx is None:
        return None
    node = root
    for key in keypath[:-1]:
        node = _child(node, key)
    if isinstance(node, eqx.nn.Embedding):
        return "embedding"
    if isinstance(node, eqx.nn.Linear | eqx.nn.Conv):
        return "torch"
    return None


def _child(node: Any, key: Any) -> Any:
    try:
        if isinstance(key, jax.tree_util.GetAttrKey):
            return getattr(node, key.name)
        if isinstance(key, jax.tree_util.SequenceKey):
            return node[key.idx]
        if isinstance(key, jax.tree_util.DictKey):
            return node[key.key]
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    return None


def _check_ends(
    leaves: list[_Leaf], decided: dict[int, tuple[str, str]], growing: set[int], uses: _Uses | None
) -> None:
    """Readout-looking weights must end the model and embedding-looking ones start it: refuse
    one whose output feeds, or whose input comes from, a growing weight (a fixed-size hidden
    dimension between growing layers), or several readouts without a graph to tell."""
    by_index = {leaf.index: leaf for leaf in leaves}
    readouts = [by_index[k] for k, (role, _) in decided.items() if role == "readout"]
    if uses is None:
        if len(readouts) > 1:
            raise MaxPError(
                f"{', '.join(f'{r.path} ({r.shapes()})' for r in readouts)} all look like readouts (the "
                "input grows, the output does not); without apply_fn there is no telling the model's output "
                "from a fixed-size hidden dimension; give apply_fn and sample_input, or rules=[Rule(...)] "
                "for them"
            )
        return
    for k, (role, _) in decided.items():
        if role == "readout":
            others = uses.feeds.get(k, set()) & growing - {k}
            how, looks = "its output reaches", "a readout (its input grows, its output does not)"
        elif role == "embedding" and k not in uses.looked_up:
            others = {s for s, fed in uses.feeds.items() if k in fed} & growing - {k}
            how, looks = "its input depends on", "an embedding (its output grows, its input does not)"
        else:
            continue
        if others:
            leaf, other = by_index[k], min((by_index[o].path for o in others), key=_natural_key)
            raise MaxPError(
                f"{leaf.path} ({leaf.shapes()}) looks like {looks}, but {how} {other}: a fixed-size "
                "hidden dimension between growing layers, which the widths give no role; give it "
                f"rules=[Rule(...)] with a role, a width and {_LAYOUT_HELP}"
            )


# --- patterns ---------------------------------------------------------------------------


def _patterns(group: list[_Member], entries: list[tuple[str, str]]) -> list[str]:
    """Patterns that together match exactly the leaves of ``group``, as few as found."""
    want = set().union(*(m.paths for m in group))
    templates = _merge([t for cluster in _clusters(group) for t in _generalize(cluster, entries)])
    patterns = [_pattern(t) for t in templates]
    hits = [_hits(p, entries) for p in patterns]
    if set().union(*hits) != want or sum(map(len, hits)) != len(want):  # never expected: be exact
        patterns = [_pattern(_exact(m)) for m in group]
    return sorted(patterns, key=lambda p: _natural_key(min(_hits(p, entries), key=_natural_key)))


def _clusters(group: list[_Member]) -> list[list[_Member]]:
    """The members that differ only in the numbers that end their path components."""
    clusters: dict[Any, list[_Member]] = {}
    for member in group:
        parents = [_split_number(s)[0] for s in member.weight.segments[:-1]]
        clusters.setdefault((tuple(parents), member.names), []).append(member)
    return list(clusters.values())


def _generalize(cluster: list[_Member], entries: list[tuple[str, str]]) -> list[Template]:
    """One template for a cluster (its varying numbers as ``\\d+``, else as a set), or one per member."""
    exact = [_exact(m) for m in cluster]
    if len(cluster) == 1:
        return exact
    want = set().union(*(m.paths for m in cluster))
    rows = [[_split_number(s) for s in m.weight.segments[:-1]] for m in cluster]
    names = frozenset(re.escape(n) for n in cluster[0].names)
    for numbers in (lambda _: r"\d+", _number_set):
        parts = []
        for i, (prefix, number) in enumerate(rows[0]):
            found = {row[i][1] for row in rows}
            varies = len(found) > 1
            text = re.escape(prefix) + (numbers(found) if varies else re.escape(number or ""))  # type: ignore[arg-type]
            parts.append(frozenset({text}))
        template = (*parts, names)
        if _hits(_pattern(template), entries) == want:
            return [template]
    return exact


def _merge(templates: list[Template]) -> list[Template]:
    """Merge templates that differ in one component into one alternation there (which
    matches exactly what the two matched)."""
    merged = list(templates)
    while True:
        pair = next(
            (
                (i, j, diff[0])
                for i, a in enumerate(merged)
                for j, b in enumerate(merged[i + 1 :], i + 1)
                if len(a) == len(b) and len(diff := [k for k in range(len(a)) if a[k] != b[k]]) == 1
            ),
            None,
        )
        if pair is None:
            return merged
        i, j, k = pair
        a, b = merged[i], merged[j]
        merged[i] = (*a[:k], a[k] | b[k], *a[k + 1 :])
        del merged[j]


def _exact(member: _Member) -> Template:
    parents = member.weight.segments[:-1]
    return (*(frozenset({re.escape(s)}) for s in parents), frozenset(re.escape(n) for n in member.names))


def _pattern(template: Template) -> str:
    return "/".join(_alternation(part) for part in template)


def _alternation(parts: Iterable[str]) -> str:
    ordered = sorted(parts, key=_natural_key)
    return ordered[0] if len(ordered) == 1 else "(" + "|".join(ordered) + ")"


def _split_number(segment: str) -> tuple[str, str | None]:
    """``("Dense_", "3")`` for ``"Dense_3"``, ``(segment, None)`` without a trailing number."""
    found = re.fullmatch(r"(.*?)(\d+)", segment)
    return (found[1], found[2]) if found else (segment, None)


def _number_set(numbers: Iterable[str]) -> str:
    """A pattern for exactly these numbers: ``[1-6]``, ``[02]``, ``([1-9]|10|11)``."""
    ordered = sorted(set(numbers), key=lambda s: (len(s), s))
    digits = [int(s) for s in ordered if len(s) == 1]
    parts = [s for s in ordered if len(s) > 1]
    if len(digits) == 1:
        parts.insert(0, str(digits[0]))
    elif digits:
        parts.insert(0, "[" + "".join(_digit_runs(digits)) + "]")
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def _digit_runs(digits: Sequence[int]) -> list[str]:
    """``[1, 2, 3, 5]`` -> ``["1-3", "5"]`` (runs of three or more as ranges)."""
    runs: list[list[int]] = []
    for d in digits:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return [f"{r[0]}-{r[-1]}" if len(r) >= 3 else "".join(map(str, r)) for r in runs]


def _hits(pattern: str, entries: list[tuple[str, str]]) -> set[str]:
    """The leaves a pattern matches, as :class:`~maxp_jax.spec.MaxPSpec` matches them (the
    ``/`` path with or without a flax nnx ``/value``, or the ``keystr`` form)."""
    compiled = re.compile(pattern)
    return {
        path for path, key in entries if any(compiled.fullmatch(text) for text in (path, leaf_key(path), key))
    }


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]
