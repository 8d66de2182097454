"""Depth and topology scaling: learning rates and initialisation that follow the architecture.

The LP scales learning rates with width. Two rules here scale them with depth; they do not
combine (each accounts for depth on its own, applying both would count it twice):

* :class:`ChenScaling`, the rule of Chen, Wu, Wang and Hanin ("Principled
  Architecture-aware Scaling of Hyperparameters", ICLR 2024) for networks **without**
  branch multipliers (MLPs, CNNs, DAG cells). Every input-to-output path ``p`` of the op
  graph has a depth ``L_p``, the number of weighted layers on it (plus a fixed ``offset``
  for layers outside the graph). The maximal learning rate scales as
  ``(sum_p L_p^3)^(-1/2)``, so relative to a base architecture every rate is multiplied by
  ``sqrt(sum_base L^3 / sum_target L_p^3) * (q_base / q)``, ``q`` the convolution kernel
  size. A chain of ``L`` layers gets ``(L / L_base)^(-3/2)``. The initial standard
  deviation of a layer is divided by ``sqrt(d_in)``, the in-degree of the sum it belongs
  to (see :func:`init_in_degrees` for the two conventions).
* :class:`BranchScaling`, the residual-branch rule used for transformers: each residual
  branch's output is multiplied by ``(L / L_base)^-alpha`` (``L`` blocks) and hidden
  layers' learning rates by ``(L / L_base)^(alpha - 1)`` under Adam
  (``(L / L_base)^(2 alpha - 1)`` under SGD). ``alpha = 1/2`` is depth-muP, ``alpha = 1``
  CompleteP. Use it where the network is a residual stream with one branch per block
  (pre-LN transformers); use Chen's rule for plain or DAG-shaped networks.

Both compose with the width exponents: ``lr = lr_prefactor * n^-c * depth factor``. Each
rule turns a graph into :class:`DepthFactors`, three numbers per weighted layer (learning
rate, initial standard deviation and output multiplier), which both adapters apply.

Path statistics are computed by dynamic programming in topological order: the path count
and the sums of ``L_p``, ``L_p^2`` and ``L_p^3`` over paths, never the paths themselves (a
dense graph of ``k`` nodes has ``2^(k-2)`` paths).

Examples:
  >>> from maxp_core import chain
  >>> round(ChenScaling(base=3).lr_factor(chain(7)), 4)     # (7/3)^(-3/2)
  0.2806
  >>> path_statistics(chain(7)).cube_sum
  343
  >>> rule = BranchScaling(alpha=1.0, depth=8, base_depth=2)
  >>> rule.branch_multiplier, rule.hidden_lr_factor("adam")
  (0.25, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from maxp_core import validate
from maxp_core.errors import GraphError, MaxPError
from maxp_core.formulation import parse_optimizer
from maxp_core.graph import OpGraph
from maxp_core.resolve import warn_user
from maxp_core.roles import Role

InitConvention = Literal["target", "source"]
INIT_CONVENTIONS: tuple[str, ...] = ("target", "source")


@dataclass(frozen=True)
class PathStats:
    """Statistics of the input-to-output paths of a graph.

    Attributes:
      count: number of paths from a source to a sink.
      depth_sum: ``sum_p L_p``.
      square_sum: ``sum_p L_p^2``.
      cube_sum: ``sum_p L_p^3``, what the learning rate scales with.
      shortest: the smallest ``L_p``.
      longest: the largest ``L_p``.

    All are exact integers (the count grows exponentially with depth in dense graphs).
    """

    count: int
    depth_sum: int
    square_sum: int
    cube_sum: int
    shortest: int
    longest: int

    @property
    def mean_depth(self) -> float:
        """The mean path depth."""
        return float(Fraction(self.depth_sum, self.count))


@dataclass(frozen=True)
class _Moments:
    """Path count and power sums of the paths ending at one node, and their depth range."""

    count: int = 0
    s1: int = 0
    s2: int = 0
    s3: int = 0
    shortest: int = 0
    longest: int = 0

    def extended(self, w: int) -> _Moments:
        """The same paths, each ``w`` layers deeper (binomial expansion of ``(L + w)^k``)."""
        n, s1, s2, s3 = self.count, self.s1, self.s2, self.s3
        return _Moments(
            n,
            s1 + w * n,
            s2 + 2 * w * s1 + w * w * n,
            s3 + 3 * w * s2 + 3 * w * w * s1 + w**3 * n,
            self.shortest + w,
            self.longest + w,
        )

    def __add__(self, other: _Moments) -> _Moments:
        if not self.count:
            return other
        if not other.count:
            return self
        return _Moments(
            self.count + other.count,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.s3 + other.s3,
            min(self.shortest, other.shortest),
            max(self.longest, other.longest),
        )


def path_statistics(graph: OpGraph, offset: int = 0) -> PathStats:
    """Count the source-to-sink paths of ``graph`` and sum the powers of their depths.

    A path's depth ``L_p`` is the number of weight-bearing nodes on it plus ``offset``
    (layers every path passes outside the graph, such as a stem). Activation-only nodes
    (pooling, attention scores) add no depth. A node with several predecessors is reached
    along each of them: a skip connection is a second predecessor.

    Args:
      graph: the op graph.
      offset: a non-negative integer added to every path's depth.

    Returns:
      The :class:`PathStats`.

    Examples:
      >>> from maxp_core import Node, OpGraph
      >>> g = OpGraph([Node("a", a=-0.5), Node("b", a=0.0, preds=("a",)),
      ...              Node("c", a=0.5, preds=("a", "b"))])     # a skip from a to c
      >>> s = path_statistics(g)
      >>> s.count, s.shortest, s.longest, s.cube_sum      # depths 2 and 3
      (2, 2, 3, 35)
    """
    if not isinstance(graph, OpGraph):
        raise MaxPError(f"path_statistics needs an OpGraph, got {type(graph).__name__}")
    offset = validate.integer(offset, "offset", 0)
    ending: list[_Moments] = [_Moments()] * len(graph)
    for i in graph.topological_order:
        w = 1 if graph.nodes[i].has_weight else 0
        arriving = _Moments(count=1) if graph.is_source(i) else _Moments()
        for p in graph.pred_indices(i):
            arriving = arriving + ending[p]
        ending[i] = arriving.extended(w)
    total = _Moments()
    for s in graph.sinks:
        total = total + ending[s]
    total = total.extended(offset)
    return PathStats(total.count, total.s1, total.s2, total.s3, total.shortest, total.longest)


def _cube_sum(base: int | OpGraph, offset: int) -> int:
    if isinstance(base, OpGraph):
        return path_statistics(base, offset).cube_sum
    depth = validate.integer(base, "base depth", 1)
    return (depth + offset) ** 3


def chen_lr_factor(
    graph: OpGraph,
    base: int | OpGraph = 3,
    *,
    offset: int = 0,
    kernel_size: int = 1,
    base_kernel_size: int = 1,
) -> float:
    """Chen et al.'s learning-rate multiplier of ``graph`` relative to ``base``.

    ``sqrt(sum_base L^3 / sum_p L_p^3) * base_kernel_size / kernel_size``.

    Args:
      graph: the target architecture's op graph.
      base: the architecture whose maximal rate is known: an :class:`OpGraph`, or an
        integer, the number of weighted layers of a chain (3: input, hidden, output
        layer, the paper's base).
      offset: added to every path depth of both architectures.
      kernel_size, base_kernel_size: convolution kernel sizes ``q`` (1 for dense layers).

    Examples:
      >>> from maxp_core import chain
      >>> round(chen_lr_factor(chain(12), base=6), 4)       # twice as deep: 2^(-3/2)
      0.3536
    """
    stats = path_statistics(graph, offset)
    base_cubes = _cube_sum(base, validate.integer(offset, "offset", 0))
    q = validate.integer(kernel_size, "kernel_size", 1)
    q_base = validate.integer(base_kernel_size, "base_kernel_size", 1)
    for cubes, what in ((stats.cube_sum, "the graph"), (base_cubes, f"the base ({_describe_base(base)})")):
        if cubes == 0:
            raise MaxPError(
                f"Chen's factor is undefined: {what} has no weighted layer on any path (every path "
                "depth is 0), so the rate would be scaled by 0 or infinity; give a graph with weighted "
                "layers, or an offset for the layers outside it"
            )
    try:
        factor = math.sqrt(float(Fraction(base_cubes, stats.cube_sum))) * q_base / q
    except OverflowError:
        factor = math.inf
    if not 0.0 < factor < math.inf:
        raise MaxPError(
            f"Chen's factor of the graph against {_describe_base(base)} is {factor:g}: out of range of a "
            "learning-rate multiplier; the base and the graph must be of comparable depth"
        )
    return factor


def _is_add(graph: OpGraph, i: int) -> bool:
    """Whether node ``i`` is a parameter-free addition of two or more inputs (a traced ``+``)."""
    node = graph.nodes[i]
    return not node.has_weight and not node.multiplies and len(node.preds) > 1


def _flatten(graph: OpGraph, start: tuple[int, ...], step: str) -> list[int]:
    """Walk from ``start`` through parameter-free additions (``step``: "preds" or "succs"),
    returning the nodes beyond them: a sum traced as nested ``+`` is one sum of all its terms."""
    found, stack = [], list(reversed(start))
    while stack:
        i = stack.pop()
        nxt = graph.pred_indices(i) if step == "preds" else graph.succ_indices(i)
        if _is_add(graph, i) and nxt:
            stack.extend(reversed(nxt))
        else:
            found.append(i)
    return found


def _sum_terms(graph: OpGraph, i: int) -> int:
    """How many terms node ``i``'s input adds up (1 where it multiplies its inputs)."""
    if graph.nodes[i].multiplies:
        return 1
    return max(len(_flatten(graph, graph.pred_indices(i), "preds")), 1)


def _consumers(graph: OpGraph, i: int) -> list[int]:
    """The nodes that read node ``i``'s output, past any additions it goes through."""
    return _flatten(graph, graph.succ_indices(i), "succs")


def init_in_degrees(graph: OpGraph, convention: InitConvention = "target") -> dict[str, int]:
    """The in-degree ``d_in`` each weighted layer's initial variance is divided by.

    Chen et al.'s initialisation draws a weight with variance ``2 / (d_in * fan_in)``
    (``std * d_in^-1/2`` here, on top of the width exponent ``b``). In the op graph a node's
    input is the sum of its predecessors' outputs, and two readings of ``d_in`` differ:

    * ``"target"``: the number of terms in the sum the layer's **output** joins (the
      in-degree of its successors). Each term then carries ``1/d_in`` of the variance and
      the sum keeps the scale of one term. This holds exactly where the summed terms are
      independent and zero-mean: a node that sums **pre-activations**
      (``x_j = relu(sum_i W_ij x_i)``, the paper's network, eq. 1, and the in-degree its
      appendix derives), or linear branches. A layer whose successors sum different numbers
      of terms (a residual stream, or an identity skip that carries its output into a
      second sum) has no single ``d_in`` and is refused.
    * ``"source"``: the number of terms in the sum at the layer's own **input** (its own
      in-degree), the convention of the paper's eq. 4 and of its released code, whose nodes
      sum branch outputs after the ReLU (``x_j = sum_i relu(W_ij x_i)``). Each layer's output
      keeps the scale of one branch, the sum at its input grows as ``sqrt(d_in)``. ReLU
      outputs have a positive mean, so summed branches are correlated and, in a dense DAG,
      activations still grow with the in-degree (by about 2x over a dense 8-node DAG at
      width 1024).

    A sink (the readout), a layer feeding a product (a gate, attention) and a layer with a
    single input count as ``1``. Parameter-free additions (a sum traced as nested ``+``)
    are looked through: ``a + b + c`` is one sum of three terms.

    Args:
      graph: the op graph.
      convention: ``"target"`` or ``"source"``.

    Returns:
      ``{name: d_in}`` for every weighted node.

    Examples:
      >>> from maxp_core import Node, OpGraph
      >>> g = OpGraph([Node("x", a=-0.5), Node("h1", a=0.0, preds=("x",)),
      ...              Node("h2", a=0.0, preds=("x",)),
      ...              Node("y", a=0.5, preds=("h1", "h2"))])   # y reads h1 + h2
      >>> init_in_degrees(g, "target"), init_in_degrees(g, "source")
      ({'x': 1, 'h1': 2, 'h2': 2, 'y': 1}, {'x': 1, 'h1': 1, 'h2': 1, 'y': 2})
    """
    convention = validate.choice(convention, "init convention", INIT_CONVENTIONS)  # type: ignore[assignment]
    degrees: dict[str, int] = {}
    for i in graph.weighted:
        node = graph.nodes[i]
        if convention == "source":
            degrees[node.name] = _sum_terms(graph, i)
            continue
        sums = {graph.nodes[s].name: _sum_terms(graph, s) for s in _consumers(graph, i)}
        found = set(sums.values()) or {1}
        if len(found) > 1:
            raise GraphError(
                f"layer {node.name!r} feeds sums of different in-degree ({sums}): the 'target' "
                "initialisation needs one; use init='source' (the in-degree at each layer's own "
                "input) or init=None (no in-degree scaling)"
            )
        degrees[node.name] = found.pop()
    return degrees


def residual_branch_outputs(graph: OpGraph) -> tuple[str, ...]:
    """Hidden layers whose output is added to other values: the ends of residual branches.

    A weighted hidden node feeding a node that sums two or more inputs (a residual stream)
    is a branch output (a transformer's attention output and MLP down projections).
    """
    found = []
    for i in graph.weighted:
        if graph.role(graph.nodes[i].name) is not Role.HIDDEN:
            continue
        if any(_sum_terms(graph, s) > 1 for s in _consumers(graph, i)):
            found.append(graph.nodes[i].name)
    return tuple(found)


@dataclass(frozen=True)
class DepthFactors:
    """What a depth rule asks of each weighted layer, by node name.

    Attributes:
      lr: multiplier on the layer's learning rate (on top of ``n^-c``).
      init: multiplier on the layer's initial standard deviation (on top of ``n^-b``).
      multiplier: multiplier on the layer's output (on top of ``n^-a``).
      rule: a one-line description of the rule that made them.
    """

    lr: Mapping[str, float]
    init: Mapping[str, float]
    multiplier: Mapping[str, float]
    rule: str = ""

    def folded(self, name: str, optimizer: str) -> tuple[float, float]:
        """``(init, lr)`` multipliers of a layer whose output multiplier is folded away.

        A layer without a multiplier applies its output multiplier ``m`` through the abc
        symmetry: initial weights times ``m``, learning rate times ``m`` (Adam) or ``m^2``
        (SGD).
        """
        m = self.multiplier[name]
        power = 1 if parse_optimizer(optimizer) == "adam" else 2
        return self.init[name] * m, self.lr[name] * m**power


@dataclass(frozen=True)
class ChenScaling:
    """Chen et al.'s architecture-aware learning rate and initialisation.

    Every weighted layer's rate is multiplied by :func:`chen_lr_factor` of the graph
    relative to ``base``; each initial standard deviation is divided by
    ``sqrt(d_in)`` (:func:`init_in_degrees`, ``init`` the convention, ``None`` to keep the
    initialisation). For networks without residual-branch multipliers; do not combine with
    :class:`BranchScaling`.

    Attributes:
      base: the base architecture: a chain's number of weighted layers, or an OpGraph.
      offset: layers every path passes outside the graph.
      kernel_size, base_kernel_size: convolution kernel sizes (1 for dense layers).
      init: ``"target"``, ``"source"`` or ``None``.

    Examples:
      >>> from maxp_core import chain
      >>> f = ChenScaling(base=3).factors(chain(6), "adam")
      >>> round(f.lr["layer0"], 4), f.init["layer3"], f.multiplier["layer5"]
      (0.3536, 1.0, 1.0)
    """

    base: int | OpGraph = 3
    offset: int = 0
    kernel_size: int = 1
    base_kernel_size: int = 1
    init: InitConvention | None = "target"

    def __post_init__(self) -> None:
        if not isinstance(self.base, OpGraph):
            validate.integer(self.base, "ChenScaling base (a chain's number of weighted layers)", 1)
        validate.integer(self.offset, "ChenScaling offset", 0)
        validate.integer(self.kernel_size, "ChenScaling kernel_size", 1)
        validate.integer(self.base_kernel_size, "ChenScaling base_kernel_size", 1)
        if self.init is not None:
            validate.choice(self.init, "ChenScaling init", INIT_CONVENTIONS)

    def lr_factor(self, graph: OpGraph) -> float:
        """The one multiplier every layer's learning rate gets."""
        return chen_lr_factor(
            graph,
            self.base,
            offset=self.offset,
            kernel_size=self.kernel_size,
            base_kernel_size=self.base_kernel_size,
        )

    def factors(self, graph: OpGraph, optimizer: str) -> DepthFactors:
        """Per-layer factors for ``graph`` (the same under Adam and SGD)."""
        if not isinstance(graph, OpGraph):
            raise MaxPError(f"ChenScaling.factors needs an OpGraph, got {type(graph).__name__}")
        parse_optimizer(optimizer)
        names = [graph.nodes[i].name for i in graph.weighted]
        lr = self.lr_factor(graph)
        degrees = init_in_degrees(graph, self.init) if self.init is not None else dict.fromkeys(names, 1)
        stats = path_statistics(graph, self.offset)
        return DepthFactors(
            lr=dict.fromkeys(names, lr),
            init={name: 1.0 / math.sqrt(degrees[name]) for name in names},
            multiplier=dict.fromkeys(names, 1.0),
            rule=(
                f"Chen et al.: {stats.count} paths of depth {stats.shortest}..{stats.longest}, "
                f"lr x {lr:.4g} against {_describe_base(self.base)}, init / sqrt(in-degree, {self.init})"
            ),
        )


def _describe_base(base: int | OpGraph) -> str:
    if not isinstance(base, int):
        return f"a base graph of {len(base)} nodes"
    return (
        f"a chain of {base} layers"
        if base < 10**12
        else f"a chain of about 10^{int(math.log10(base))} layers"
    )


#: Past this, ``exp`` of a log-factor leaves float64 (to 0 or to inf).
LOG_FLOAT_RANGE = 708.0


def _count(n: int) -> str:
    """An integer as written, or as ``about 10^k`` when it is too long to read."""
    return str(n) if n < 10**15 else f"about 10^{int(math.log10(n))}"


@dataclass(frozen=True)
class BranchScaling:
    """Residual-branch depth scaling: depth-muP (``alpha = 1/2``) or CompleteP (``alpha = 1``).

    Each residual branch's output layer (:func:`residual_branch_outputs`) is multiplied by
    ``(depth / base_depth)^-alpha``; every hidden layer's learning rate by
    ``(depth / base_depth)^(alpha - 1)`` under Adam, ``^(2 alpha - 1)`` under SGD. The
    embedding and readout keep theirs; initialisation is unchanged. Parameters outside the
    maxP layers (LayerNorm gains, biases of other layers) are left to the user.

    Attributes:
      alpha: the branch exponent, in ``[1/2, 1]``.
      depth: the model's number of residual blocks ``L``.
      base_depth: the number of blocks the base learning rate was tuned at.

    Examples:
      >>> round(BranchScaling(alpha=0.5, depth=8, base_depth=2).hidden_lr_factor("adam"), 4)
      0.5
    """

    alpha: float
    depth: int
    base_depth: int = 1
    _ratio: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        alpha = validate.real_number(self.alpha, "BranchScaling alpha")
        if not 0.5 <= alpha <= 1.0:
            raise MaxPError(
                f"BranchScaling alpha must lie in [0.5, 1] (0.5: depth-muP, 1: CompleteP), got {alpha:g}"
            )
        depth = validate.integer(self.depth, "BranchScaling depth (number of residual blocks)", 1)
        base = validate.integer(self.base_depth, "BranchScaling base_depth", 1)
        # Every factor is the ratio to a power in [-1, 1], so all are floats when the ratio is;
        # in logs, integers past float range do not overflow on the way.
        if abs(math.log(depth) - math.log(base)) >= LOG_FLOAT_RANGE:
            raise MaxPError(
                f"BranchScaling: depth / base_depth = {_count(depth)} / {_count(base)} is out of a float's "
                "range, and so would be the branch multiplier and rate factor it gives; give the model's "
                "number of blocks and the base's"
            )
        object.__setattr__(self, "_ratio", depth / base)

    @property
    def branch_multiplier(self) -> float:
        """``(depth / base_depth)^-alpha``, on each residual branch's output."""
        return float(self._ratio**-self.alpha)

    def hidden_lr_factor(self, optimizer: str) -> float:
        """The multiplier on hidden layers' learning rates."""
        power = self.alpha - 1.0 if parse_optimizer(optimizer) == "adam" else 2.0 * self.alpha - 1.0
        return float(self._ratio**power)

    def factors(self, graph: OpGraph, optimizer: str) -> DepthFactors:
        """Per-layer factors for ``graph``; refuses a graph without residual branches."""
        found = residual_branch_outputs(graph)
        if not found:
            raise GraphError(
                "BranchScaling found no residual branch in the graph (a hidden layer whose output is "
                "added to the stream); trace the model's graph (sample_input / apply_fn) or use "
                "ChenScaling for networks without residual branches"
            )
        if len(found) % self.depth:
            raise GraphError(
                f"BranchScaling(depth={self.depth}) does not match the graph: its {len(found)} residual "
                f"branches {list(found)} do not split evenly into {self.depth} blocks; give the model's "
                "number of blocks"
            )
        branches = set(found)
        names = [graph.nodes[i].name for i in graph.weighted]
        hidden = self.hidden_lr_factor(optimizer)
        return DepthFactors(
            lr={n: hidden if graph.role(n) is Role.HIDDEN else 1.0 for n in names},
            init=dict.fromkeys(names, 1.0),
            multiplier={n: self.branch_multiplier if n in branches else 1.0 for n in names},
            rule=(
                f"residual branches x {self.branch_multiplier:.4g} (alpha {self.alpha:g}, {self.depth} / "
                f"{self.base_depth} blocks) on {len(branches)} layers, hidden lr x {hidden:.4g}"
            ),
        )


DepthScaling = ChenScaling | BranchScaling


def warn_if_untraced(rule: DepthScaling | None, traced: bool, how: str) -> None:
    """Warn that Chen's rule on a graph built from layer order alone assumes a chain.

    Without tracing, the adapters take the layers as a chain in order; a model with skips or
    parallel branches would get a chain's factor. ``how`` says how to trace.
    """
    if isinstance(rule, ChenScaling) and not traced:
        warn_user(
            "ChenScaling on an untraced graph: the layers are taken as a chain in their order, so the "
            f"depth factor is a chain's; if the model has skips or parallel branches, {how}"
        )


def depth_factors(rule: DepthScaling | None, graph: OpGraph, optimizer: str) -> DepthFactors:
    """The rule's factors for ``graph``; all ones without a rule."""
    if rule is None:
        names = [graph.nodes[i].name for i in graph.weighted]
        ones = dict.fromkeys(names, 1.0)
        return DepthFactors(lr=ones, init=ones, multiplier=ones, rule="none")
    if not isinstance(rule, ChenScaling | BranchScaling):
        raise MaxPError(
            f"depth must be a ChenScaling or BranchScaling (or None), got {type(rule).__name__} {rule!r}"
        )
    return rule.factors(graph, optimizer)


__all__ = [
    "INIT_CONVENTIONS",
    "BranchScaling",
    "ChenScaling",
    "DepthFactors",
    "DepthScaling",
    "PathStats",
    "chen_lr_factor",
    "depth_factors",
    "init_in_degrees",
    "path_statistics",
    "residual_branch_outputs",
    "warn_if_untraced",
]
