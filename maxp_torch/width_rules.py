"""Rules read off two widths of one model: which axes of each weight grow says its role.

Build the same architecture at two widths (hidden size 32 and 64, say) and
:func:`rules_from_widths` compares them layer by layer, by name. For the layer kinds maxP
knows (:mod:`maxp_torch.layers`) the input and output axes of the weight decide:

==============  ===============  ============
input axis      output axis      role
==============  ===============  ============
fixed           grows            embedding
grows           grows            hidden
grows           fixed            readout
fixed           fixed            (no rule)
==============  ===============  ============

A bare parameter of two or more axes (a class token, a position embedding) whose last axis
grows is an embedding. With a sample input, the modules that call
``scaled_dot_product_attention`` get attention rules. The result is a list of ordinary
:class:`~maxp_torch.rules.Rule` objects, one per role, to print, edit and pass to
:class:`~maxp_torch.parametrization.Parametrization`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from maxp_core import MaxPError
from maxp_torch.layers import TABLE, LayerKind, kind_of
from maxp_torch.rules import Rule, layer_candidates
from maxp_torch.trace import call_model

#: Each role's rule, in this order (a hand-written rule set's).
ROLE_ORDER = ("embedding", "hidden", "readout", "attention")

#: (input grows, output grows) -> role; neither growing is no maxP layer.
ROLE_OF_GROWTH: dict[tuple[bool, bool], str | None] = {
    (False, True): "embedding",
    (True, True): "hidden",
    (True, False): "readout",
    (False, False): None,
}

#: How each kind lays out its weight, for messages.
LAYOUT = {
    "linear": "(out, in)",
    "transposed": "(in, out)",
    "conv": "(out, in, *kernel)",
    "table": "(entries, dim)",
    "parameter": "(..., dim)",
}

#: Kinds whose input is a feature vector (a table reads indices, a bare parameter nothing).
READS_FEATURES = ("linear", "transposed", "conv")


@dataclass(frozen=True)
class LayerGrowth:
    """One layer's weight at both widths and the role its growth gives it."""

    name: str
    kind: str
    small: tuple[int, ...]
    large: tuple[int, ...]
    input_grows: bool
    output_grows: bool
    input_size: int | None
    output_size: int

    @property
    def role(self) -> str | None:
        return ROLE_OF_GROWTH[(self.input_grows, self.output_grows)]

    @property
    def shapes(self) -> str:
        return f"weight {self.small} at the small width, {self.large} at the large one"


@dataclass(frozen=True)
class AttentionCall:
    """A ``scaled_dot_product_attention`` call: the innermost module that made it and ``q``'s shape."""

    module: str
    query: tuple[int, ...]


def rules_from_widths(small: nn.Module, large: nn.Module, sample_input: Any = None) -> list[Rule]:
    """The rules that give each layer of ``large`` the role its growth from ``small`` shows.

    Layers are compared by name (``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d/2d/3d``,
    transformers' ``Conv1D`` and bare parameters of two or more axes): input fixed and
    output growing is an embedding, both growing hidden, input growing and output fixed a
    readout, neither growing no maxP layer (no rule: it keeps the base rate, as biases and
    norms do). A tied weight (GPT-2's ``lm_head`` is ``wte``) gets both its uses' rules.
    Names are compacted: numeric indices become ``\\d+`` and siblings of one role share an
    alternation, each pattern checked to match exactly its role's layers among the large
    model's candidate names (else the exact names are kept).

    With ``sample_input`` both models run once (no gradients, torch's random state left as
    it was): each module that calls ``scaled_dot_product_attention`` (the innermost module
    running) gets an ``"attention"`` rule, and a readout-looking layer whose output reaches
    another layer's fixed-size input is refused. Without it no attention rule is given
    (the :class:`~maxp_torch.parametrization.Parametrization`'s own trace warns about an
    unmarked fused attention under muP), and a readout-looking layer whose output size is the
    fixed input size of a later layer in module order is refused.

    Args:
      small: the model at the smaller width.
      large: the same architecture at the larger width (the one to parametrize); the module
        and parameter names must be the same.
      sample_input: a tensor, a tuple of positional arguments or a dict of keyword arguments
        (Hugging Face style), as :class:`~maxp_torch.parametrization.Parametrization` takes it.

    Returns:
      One :class:`~maxp_torch.rules.Rule` per role present, in the order embedding, hidden,
      readout, attention.

    Raises:
      MaxPError: the names differ; a weight changes in another way than its input or output
        axis growing (a kernel size, a dimension that shrinks, a grouped convolution's
        groups); nothing grows; a fixed-size hidden dimension (a bottleneck) is found; an
        attention keeps its head dimension while the model grows. Each message names the
        layer, its two shapes and what would be valid.

    Examples:
      >>> def mlp(width: int) -> nn.Module:
      ...     return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
      ...                          nn.Linear(width, 4))
      >>> for rule in rules_from_widths(mlp(16), mlp(32), sample_input=torch.randn(2, 8)):
      ...     print(rule.role, rule.pattern)
      embedding 0
      hidden 2
      readout 4
    """
    check_same_architecture(small, large)
    growths = layer_growths(small, large)
    attention = [] if sample_input is None else attention_modules_checked(small, large, sample_input, growths)
    if sample_input is None:
        check_bottlenecks_by_order(growths)
    return layer_rules(large, growths) + attention_rules(large, attention)


def attention_modules_checked(
    small: nn.Module, large: nn.Module, sample_input: Any, growths: Sequence[LayerGrowth]
) -> list[str]:
    """Run both models once: the modules that call attention (each checked to grow its head
    dimension), after refusing a readout-looking layer whose output feeds a fixed-size input."""
    small_calls, _ = probe(small, sample_input, growths)
    large_calls, feeds = probe(large, sample_input, growths)
    attention = attention_modules(small_calls, large_calls)
    check_bottlenecks_by_flow(growths, feeds)
    return attention


def layer_rules(large: nn.Module, growths: Sequence[LayerGrowth]) -> list[Rule]:
    """One rule per role of the weighted layers, matched against the large model's candidates."""
    roles = {g.name: role for g in growths if (role := g.role) is not None}
    modules, bare = layer_candidates(large)
    return [Rule(pattern, role) for role, pattern in role_patterns(roles, [*modules, *bare]).items()]


def attention_rules(large: nn.Module, attention: Sequence[str]) -> list[Rule]:
    """The attention rule, matched against every module name (an attention rule may name any)."""
    if not attention:
        return []
    names = [name for name, _ in large.named_modules() if name]
    patterns = role_patterns(dict.fromkeys(attention, "attention"), names)
    return [Rule(pattern, "attention") for pattern in patterns.values()]


# --- the same architecture ----------------------------------------------------------------


def check_same_architecture(small: nn.Module, large: nn.Module) -> None:
    """Refuse two models whose module names, module types or parameter names differ."""
    pairs = (
        ("modules", _module_types(small), _module_types(large)),
        ("parameters", [n for n, _ in small.named_parameters()], [n for n, _ in large.named_parameters()]),
    )
    for what, left, right in pairs:
        if left != right:
            only_small, only_large = _listed(set(left) - set(right)), _listed(set(right) - set(left))
            raise MaxPError(
                f"the two models are not the same architecture: their {what} differ (only in the small "
                f"one: {only_small}; only in the large one: {only_large}); build both from one class and "
                "config with only the width changed (the depth and layer types the same)"
            )


def _module_types(model: nn.Module) -> list[str]:
    return [f"{name} ({type(module).__name__})" for name, module in model.named_modules() if name]


def _listed(names: Iterable[str], most: int = 6) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none (same names, another order or type)"
    return ", ".join(ordered[:most]) + (f" and {len(ordered) - most} more" if len(ordered) > most else "")


# --- growth and roles ---------------------------------------------------------------------


def layer_growths(small: nn.Module, large: nn.Module) -> list[LayerGrowth]:
    """Every known layer and bare parameter of ``large``, in model order, with its growth
    (refused if none grows)."""
    small_modules, small_bare = layer_candidates(small)
    large_modules, large_bare = layer_candidates(large)
    growths = []
    for name, module in large_modules.items():
        kind = kind_of(module)
        if kind is not None:
            growths.append(module_growth(name, small_modules[name], module, kind))
    for name, parameter in large_bare.items():
        if name not in small_bare:
            raise MaxPError(
                f"parameter {name!r} is a bare parameter in the large model but not in the small one; "
                "build both from one class and config with only the width changed"
            )
        growths.append(parameter_growth(name, tuple(small_bare[name].shape), tuple(parameter.shape)))
    if not any(g.input_grows or g.output_grows for g in growths):
        raise MaxPError(
            "no layer's weight differs between the two models; build them at two widths "
            "(e.g. hidden size 32 and 64) so that the growing axes show the roles"
        )
    return growths


def module_growth(name: str, small: nn.Module, large: nn.Module, kind: LayerKind) -> LayerGrowth:
    """How the weight of a known layer grows: its input and output axes, nothing else."""
    before = tuple(cast(torch.Tensor, small.weight).shape)
    after = tuple(cast(torch.Tensor, large.weight).shape)
    where = f"{type(large).__name__} {name!r} (weight {LAYOUT[kind.name]})"
    shapes = f"weight {before} at the small width, {after} at the large one"
    small_groups, large_groups = getattr(small, "groups", 1), getattr(large, "groups", 1)
    if small_groups != large_groups:
        raise MaxPError(
            f"{where}: groups {small_groups} at the small width, {large_groups} at the large one "
            f"({shapes}); a convolution whose groups grow (depthwise) has no input/output growth to read: "
            "give its rule by hand (and pin its alignment), or keep its groups fixed"
        )
    _check_rank(where, before, after, shapes)
    in_axis, out_axis = (0, 1) if kind.name in ("transposed", "table") else (1, 0)
    others = [axis for axis in range(len(before)) if axis not in (in_axis, out_axis)]
    if any(before[axis] != after[axis] for axis in others):
        raise MaxPError(
            f"{where}: {shapes}; axes other than the input and output (a kernel) change, which is no "
            "growth of the width: only the input and output axes may differ between the two widths"
        )
    input_grows = _grows(where, "input", before[in_axis], after[in_axis], shapes)
    output_grows = _grows(where, "output", before[out_axis], after[out_axis], shapes)
    if kind is TABLE and input_grows:
        raise MaxPError(
            f"{where}: {shapes}; the number of entries of a lookup table grows with the width: only its "
            "embedding dimension may grow (then it is an embedding); give its rule by hand if it is meant"
        )
    return LayerGrowth(
        name, kind.name, before, after, input_grows, output_grows, after[in_axis], after[out_axis]
    )


def parameter_growth(name: str, before: tuple[int, ...], after: tuple[int, ...]) -> LayerGrowth:
    """How a bare parameter grows: an embedding if its last axis grows and no other does."""
    where = f"parameter {name!r} (a bare parameter, {LAYOUT['parameter']})"
    shapes = f"weight {before} at the small width, {after} at the large one"
    _check_rank(where, before, after, shapes)
    if before[:-1] != after[:-1]:
        raise MaxPError(
            f"{where}: {shapes}; a bare parameter can only be an embedding, whose last axis grows and "
            "other axes stay fixed; wrap a weight that multiplies in nn.Linear or give its rule by hand"
        )
    output_grows = _grows(where, "last", before[-1], after[-1], shapes)
    return LayerGrowth(name, "parameter", before, after, False, output_grows, None, after[-1])


def _check_rank(where: str, before: tuple[int, ...], after: tuple[int, ...], shapes: str) -> None:
    if len(before) != len(after):
        raise MaxPError(f"{where}: {shapes}; the number of axes differs, so it cannot be the same layer")


def _grows(where: str, axis: str, small: int, large: int, shapes: str) -> bool:
    if large < small:
        raise MaxPError(
            f"{where}: {shapes}; its {axis} axis shrinks from {small} to {large}: pass the smaller model "
            "first, and make every width-dependent size grow or stay fixed"
        )
    return large > small


# --- undecidable: fixed-size hidden dimensions ---------------------------------------------


def check_bottlenecks_by_order(growths: Sequence[LayerGrowth]) -> None:
    """Refuse a readout-looking layer whose fixed output size a later layer reads as its fixed input."""
    for k, readout in enumerate(growths):
        if readout.role != "readout" or readout.kind not in READS_FEATURES:
            continue
        for later in growths[k + 1 :]:
            if _reads_fixed(later) and later.input_size == readout.output_size:
                raise _bottleneck(readout, later, f"a later layer, {later.name!r}, reads that size")


def check_bottlenecks_by_flow(growths: Sequence[LayerGrowth], feeds: Mapping[str, str]) -> None:
    """Refuse a readout-looking layer whose output the sample forward pass fed to a fixed-input layer."""
    by_name = {g.name: g for g in growths}
    if feeds:
        readout, layer = next(iter(feeds.items()))
        raise _bottleneck(by_name[readout], by_name[layer], f"its output feeds {layer!r}")


def _reads_fixed(growth: LayerGrowth) -> bool:
    return growth.kind in READS_FEATURES and not growth.input_grows


def _bottleneck(readout: LayerGrowth, layer: LayerGrowth, how: str) -> MaxPError:
    return MaxPError(
        f"{readout.name!r} looks like a readout ({readout.shapes}: its input grows, its output stays "
        f"{readout.output_size}) but {how} ({layer.shapes}): a fixed-size hidden dimension (a bottleneck), "
        "not the model's output, whose role the widths cannot decide; write the rules by hand: "
        f"Rule({re.escape(readout.name)!r}, 'readout') and Rule({re.escape(layer.name)!r}, 'embedding') keep "
        "the bottleneck at a fixed size, 'hidden' with width= scales it"
    )


# --- one forward pass: attention calls and where readouts flow ----------------------------


class _Probe(TorchFunctionMode):
    """Watches one forward pass: which module calls attention, and where readouts' outputs go."""

    def __init__(self) -> None:
        super().__init__()
        self.scope: list[str] = []  # names of the modules running, innermost last
        self.calls: list[AttentionCall] = []
        self.sources: dict[int, frozenset[str]] = {}  # id(tensor) -> readouts it derives from
        self.alive: list[torch.Tensor] = []  # keeps ids unique while watching
        self.feeds: dict[str, str] = {}  # readout -> the first fixed-input layer its output reached

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            query = args[0] if args else kwargs["query"]
            self.calls.append(AttentionCall(self.scope[-1] if self.scope else "", tuple(query.shape)))
        if self.sources:
            self.mark(out, self.derived(tree_flatten((args, kwargs))[0]))
        return out

    def derived(self, values: Iterable[Any]) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for value in values:
            if isinstance(value, torch.Tensor):
                found |= self.sources.get(id(value), frozenset())
        return found

    def mark(self, value: Any, readouts: frozenset[str]) -> None:
        if not readouts:
            return
        for leaf in tree_flatten(value)[0]:
            if isinstance(leaf, torch.Tensor):
                self.sources[id(leaf)] = self.sources.get(id(leaf), frozenset()) | readouts
                self.alive.append(leaf)


def probe(
    model: nn.Module, sample_input: Any, growths: Sequence[LayerGrowth]
) -> tuple[list[AttentionCall], dict[str, str]]:
    """Run ``model`` once on ``sample_input``: its attention calls, and for each readout-looking
    layer whose output reached a layer with a fixed-size input, that layer."""
    watcher = _Probe()
    named = dict(model.named_modules())
    handles = []
    for g in growths:
        if g.role == "readout" and g.kind in READS_FEATURES:
            handles.append(named[g.name].register_forward_hook(_marker(watcher, g.name)))
        if _reads_fixed(g):
            handles.append(
                named[g.name].register_forward_pre_hook(_checker(watcher, g.name), with_kwargs=True)
            )
    try:
        with _random_state_kept(model), torch.no_grad(), watcher, _module_stack(model, watcher.scope):
            call_model(model, sample_input)
    finally:
        for handle in handles:
            handle.remove()
    return watcher.calls, watcher.feeds


def _marker(watcher: _Probe, name: str) -> Any:
    def mark(module: nn.Module, args: Any, output: Any) -> None:
        watcher.mark(output, frozenset({name}))

    return mark


def _checker(watcher: _Probe, name: str) -> Any:
    def check(module: nn.Module, args: Any, kwargs: Any) -> None:
        for readout in sorted(watcher.derived(tree_flatten((args, kwargs))[0]) - {name}):
            watcher.feeds.setdefault(readout, name)

    return check


@contextmanager
def _module_stack(model: nn.Module, scope: list[str]) -> Iterator[None]:
    """Keep ``scope`` naming the modules of ``model`` running, innermost last."""
    names = {id(m): n for n, m in model.named_modules()}

    def push(module: nn.Module, args: Any) -> None:
        scope.append(names.get(id(module), ""))

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        if scope:
            scope.pop()

    handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _random_state_kept(model: nn.Module) -> Iterator[None]:
    """Leave torch's random state as it was before (dropout in training mode draws from it)."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield


def attention_modules(small: Sequence[AttentionCall], large: Sequence[AttentionCall]) -> list[str]:
    """The modules that call attention, once each, checked to grow their head dimension."""
    if [c.module for c in small] != [c.module for c in large]:
        raise MaxPError(
            "the two models call scaled_dot_product_attention in different modules (small: "
            f"{_listed({c.module for c in small})}; large: {_listed({c.module for c in large})}); build both "
            "from one class and config with only the width changed"
        )
    for small_call, large_call in zip(small, large, strict=True):
        _check_head_dimension(small_call, large_call)
    return list(dict.fromkeys(c.module for c in large))


def _check_head_dimension(small: AttentionCall, large: AttentionCall) -> None:
    shapes = f"q of shape {small.query} at the small width, {large.query} at the large one"
    if not large.module:
        raise MaxPError(
            f"the model's own forward calls scaled_dot_product_attention ({shapes}); an attention rule "
            "names a submodule: move the call into one, or scale it by hand"
        )
    if large.query[-1] > small.query[-1]:
        return
    if large.query[-1] < small.query[-1]:
        raise MaxPError(
            f"attention in {large.module!r} shrinks its head dimension ({shapes}): pass the smaller model "
            "first, and grow the head dimension with the width"
        )
    raise MaxPError(
        f"attention in {large.module!r} keeps its head dimension at {large.query[-1]} ({shapes}) while the "
        "model grows (the head count grows instead), so the width of its scale n^-a is not the head "
        "dimension: give an attention rule with width= by hand, "
        f"Rule({re.escape(large.module)!r}, 'attention', width=...), or grow the head dimension (keep the "
        "head count fixed)"
    )


# --- compact patterns ----------------------------------------------------------------------


@dataclass
class _Trie:
    """Name segments (already regular expressions) as a tree; ``end``: a name stops here."""

    children: dict[str, _Trie] = field(default_factory=dict)
    end: bool = False

    def add(self, segments: Sequence[str]) -> None:
        node = self
        for segment in segments:
            node = node.children.setdefault(segment, _Trie())
        node.end = True

    def pattern(self) -> str:
        """The alternation of every path below this node."""
        branches = [child.branch(segment) for segment, child in self.children.items()]
        return branches[0] if len(branches) == 1 else f"({'|'.join(branches)})"

    def branch(self, segment: str) -> str:
        if not self.children:
            return segment
        rest = rf"\.{self.pattern()}"
        return f"{segment}({rest})?" if self.end else segment + rest


def role_patterns(roles: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    r"""One pattern per role (in :data:`ROLE_ORDER`) that fully matches exactly that role's
    names among ``names``: numeric indices generalized to ``\d+`` where no name of another
    role (or of none) is caught, siblings merged into alternations.

    Examples:
      >>> names = ["h.0.q", "h.0.k", "h.0.norm", "h.1.q", "h.1.k", "h.1.norm", "head", "head.extra"]
      >>> roles = {"h.0.q": "hidden", "h.0.k": "hidden", "h.1.q": "hidden", "h.1.k": "hidden",
      ...          "head": "readout", "head.extra": "readout"}
      >>> for role, pattern in role_patterns(roles, names).items():
      ...     print(role, pattern)
      hidden h\.\d+\.(q|k)
      readout head(\.extra)?
      >>> print(role_patterns({"0": "embedding", "2": "hidden"}, ["0", "1", "2"]))  # 1 has no role
      {'embedding': '0', 'hidden': '2'}
    """
    patterns = {}
    generalized = _Generalizer(roles, names)
    for role in ROLE_ORDER:
        members = [name for name in names if roles.get(name) == role]
        if not members:
            continue
        trie = _Trie()
        for name in members:
            trie.add(generalized.segments(name))
        pattern = trie.pattern()
        if not _matches_exactly(pattern, members, names):  # the union of checked paths: never expected
            pattern = "|".join(re.escape(name) for name in members)
        patterns[role] = pattern
    return patterns


class _Generalizer:
    """A name's segments with numeric indices as ``\\d+``, if that catches no name of another role."""

    def __init__(self, roles: Mapping[str, str], names: Sequence[str]) -> None:
        self.roles = roles
        self.names = names
        self.safe: dict[tuple[str, str], bool] = {}

    def segments(self, name: str) -> list[str]:
        exact = [re.escape(s) for s in name.split(".")]
        general = [r"\d+" if s.isdigit() else re.escape(s) for s in name.split(".")]
        key = (r"\.".join(general), self.roles[name])
        if key not in self.safe:
            caught = re.compile(key[0])
            self.safe[key] = all(self.roles.get(n) == key[1] for n in self.names if caught.fullmatch(n))
        return general if self.safe[key] else exact


def _matches_exactly(pattern: str, members: Sequence[str], names: Sequence[str]) -> bool:
    compiled = re.compile(pattern)
    return {n for n in names if compiled.fullmatch(n)} == set(members)
