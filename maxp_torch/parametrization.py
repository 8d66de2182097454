"""``Parametrization``: abc-parametrize a PyTorch model and keep its per-layer learning rates maximal."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maxp_core import (
    CallOrderError,
    MaxPError,
    OpGraph,
    Resolver,
    Role,
    SolveSchedule,
    StabilityLP,
    alignment_of_layers,
    alignment_of_stacks,
    alignment_preset,
    check_ema_decay,
    default_ab,
    groups_of_equal_shape,
    unused_alignments,
    validate,
    warn_user,
)
from maxp_core.alignment import MODES
from maxp_core.depth import DepthFactors, DepthScaling, depth_factors, warn_if_untraced
from maxp_core.formulation import parse_optimizer
from maxp_core.graph import graph_by_roles
from maxp_core.lp import DEFAULT_TIE_RULE
from maxp_core.metrics import MetricsLog, metrics_record
from maxp_core.parametrizations import attention_exponent, parse_parametrization
from maxp_core.rules import tied_disagreement
from maxp_core.symmetry import fold_multiplier
from maxp_core.tables import AlignmentTable, resolve_overrides
from maxp_torch import sharding
from maxp_torch.group_rates import WRITTEN, StepTracker, check_sole_writer, watch_optimizer_steps, write_rates
from maxp_torch.layers import CONV, TRANSPOSED, kind_of
from maxp_torch.module import ParametrizedModule
from maxp_torch.optimizers import innermost_optimizer, known_kind, optimizer_kind
from maxp_torch.rules import Rule, RuledLayers, apply_rules
from maxp_torch.trace import call_model, trace_graph

Triple = tuple[float, float, float]


def synthetic_graph(
    names: list[str], modules: list[ParametrizedModule], exponents: list[tuple[float, float]]
) -> OpGraph:
    """The LP graph of modules by their order and types (:func:`maxp_core.graph.graph_by_roles`)."""
    return graph_by_roles(
        names, [m.role for m in modules], exponents, [m.weight is not None for m in modules]
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` or ``torch.compile`` wrappers.

    maxP's own no-grad passes run on it: they need no gradient sync, and running them
    through a compiled module would make it recompile each time recording is toggled.
    """
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _exponent_overrides(table: Mapping[str, Any] | None, what: str, pair: bool) -> dict[str, Any]:
    """``ab_overrides`` or ``c_overrides`` by layer type, each value checked."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise MaxPError(f"{what} must be a mapping {{layer type: value}}, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in ("embedding", "hidden", "readout"):
            raise MaxPError(
                f"{what} are keyed by layer type (embedding, hidden, readout); unknown key {key!r}"
            )
        if pair:
            if isinstance(value, str) or not isinstance(value, tuple | list) or len(value) != 2:
                raise MaxPError(f"{what}[{key!r}] must be a pair (a, b), got {value!r}")
            a, b = value
            out[key] = (
                validate.exponent(a, f"{what}[{key!r}]: a"),
                validate.init_exponent(b, f"{what}[{key!r}]: b"),
            )
        else:
            out[key] = validate.exponent(value, f"{what}[{key!r}]")
    return out


@contextlib.contextmanager
def measurement_mode(model: nn.Module, devices: list[torch.device]) -> Iterator[None]:
    """Run maxP's own forward passes without side effects on training.

    The model is put in eval mode (dropout off, so its noise does not enter the alignments)
    and every module's own train/eval flag is restored afterwards; the global random number
    generators (CPU and the CUDA devices in use) are restored too, so turning maxP on does
    not change the training's dropout or sampling sequence.
    """
    flags = [(module, module.training) for module in model.modules()]
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        model.eval()
        try:
            yield
        finally:
            for module, training in flags:
                module.training = training


class Parametrization:
    """Re-initialise a model's :class:`ParametrizedModule` layers and give each its learning rate.

    At construction: find the modules, re-initialise their weights with
    ``std = std_prefactor * width_dim^-b`` (biases zero), set each output scale to
    ``width_dim^-a``, solve the LP for ``c`` and build :attr:`param_groups` (one per
    parametrized layer at ``lr_prefactor * width_dim^-c``, the rest at ``lr_prefactor``).
    During training, :meth:`step` re-measures the alignments on the sample given to
    :meth:`capture_initial`, re-solves on schedule and writes the learning rates into the
    optimizer. Arguments follow the published maxP; ``solver`` names a
    :mod:`maxp_core` solver (``"highs"`` or ``"clarabel"``), and ``warm_start`` is
    accepted for compatibility (the HiGHS model always starts from its last basis).
    Initial weights are drawn from one seeded generator per layer, so ``resample_w0``
    redraws them exactly instead of storing them. With ``seed=None`` (the default) the seed is
    drawn once from torch's global generator, so ``torch.manual_seed`` decides the initial
    weights as it does for any torch model (same seed, same weights; another seed, other
    weights); an integer ``seed`` pins them whatever the global state. ``layers`` replaces
    the discovery of ``ParametrizedModule``s (``maxp_torch.scheduler`` passes plain
    ``nn.Linear`` layers this way) and ``reinit=False`` keeps the current weights.
    ``depth`` adds a depth rule of :mod:`maxp_core.depth` on top of the width exponents
    (:class:`~maxp_core.ChenScaling`: every rate times the graph's depth/topology factor and
    initial stds divided by ``sqrt(in-degree)``; :class:`~maxp_core.BranchScaling`:
    depth-muP or CompleteP, residual-branch outputs scaled by ``(L/L_base)^-alpha``, hidden
    rates by ``(L/L_base)^(alpha-1)``). Both read the traced graph, so pass
    ``sample_input`` unless the layers form a chain. With ``reinit=False`` the weights stay
    as they are: the rule's initial scales are not applied, its multipliers and rates are.

    ``measure_only=True`` measures the alignments on the usual schedule (same rules and
    smoothing as a dynamic run, kept in :meth:`metrics`) but never re-solves: the rates
    stay the preset's. ``alignment_overrides`` takes a mapping ``{layer name, name suffix or
    layer type: (alpha, omega, u)}`` or a :class:`maxp_core.tables.AlignmentTable` (each
    layer takes its kind's entry): a table measured that way at one width, applied at
    every width, is the published authors' "maxP-meas" workflow. ``tie_rule`` picks the
    ``c`` returned where several are optimal (:mod:`maxp_core.lp`): ``"preset"`` (nearest
    the preset's) or ``"later"``.

    Each layer's alignment is measured on the first ``sample_size`` rows of its input (rows
    are the flattened leading axes: tokens of a sequence model) on the first ``sample_size``
    samples of the batch given to :meth:`capture_initial`; where fewer samples already give
    those rows (sequences), only those are kept and run.

    Examples:
      >>> model = nn.Sequential(
      ...     ParametrizedModule(nn.Linear(16, 64), width_dim=64, layer_type="embedding"), nn.ReLU(),
      ...     ParametrizedModule(nn.Linear(64, 64), width_dim=64, layer_type="hidden"), nn.ReLU(),
      ...     ParametrizedModule(nn.Linear(64, 10), width_dim=64, layer_type="readout"))
      >>> param = Parametrization(model, lr_prefactor=0.1)
      >>> [round(lr, 6) for lr in param.get_last_lr()]
      [0.0125, 0.001563, 0.0125]
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_type: str | None = None,
        alignment: str = "full",
        lr_prefactor: float = 1e-3,
        std_prefactor: float = 1.0,
        ab_overrides: Mapping[str, tuple[float, float]] | None = None,
        c_overrides: Mapping[str, float] | None = None,
        alignment_overrides: Mapping[str, Triple] | AlignmentTable | None = None,
        sample_input: Any = None,
        warmup_steps: int = 0,
        solve_interval: int = 1,
        sample_size: int = 32,
        c_ema: float = 0.0,
        alignment_ema: float = 0.0,
        resample_w0: bool = False,
        use_training_activations: bool = False,
        solver: str | None = None,
        warm_start: bool = False,
        norm_mode: str = "rms",
        parametrization: str = "mup",
        feature_learning: bool = False,
        seed: int | None = None,
        *,
        rules: Sequence[Rule] | None = None,
        strict: bool = False,
        layers: list[tuple[str, Any]] | None = None,
        reinit: bool = True,
        depth: DepthScaling | None = None,
        measure_only: bool = False,
        tie_rule: str = DEFAULT_TIE_RULE,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise MaxPError(f"Parametrization needs an nn.Module, got {type(model).__name__}")
        self.model = model
        # Declared by the user, or "adam" by default: an optimizer class maxP does not know is
        # then refused at the first step instead of being taken for Adam.
        self._declared_optimizer = optimizer_type is not None
        self.optimizer_type = parse_optimizer("adam" if optimizer_type is None else optimizer_type)
        self.lr_prefactor = validate.positive_number(lr_prefactor, "lr_prefactor")
        self.std_prefactor = validate.positive_number(std_prefactor, "std_prefactor")
        self.schedule = SolveSchedule(warmup_steps, solve_interval)
        self.sample_size = validate.integer(sample_size, "sample_size", 1)
        self.c_ema = check_ema_decay("c_ema", c_ema)
        self.alignment_ema = check_ema_decay("alignment_ema", alignment_ema)
        if not isinstance(norm_mode, str) or norm_mode not in MODES:
            raise MaxPError(f"unknown norm_mode {norm_mode!r}; expected one of {list(MODES)}")
        self.norm_mode = norm_mode
        self.resample_w0 = validate.boolean(resample_w0, "resample_w0")
        self.use_training_activations = validate.boolean(use_training_activations, "use_training_activations")
        self.warm_start = validate.boolean(warm_start, "warm_start")
        self.measure_only = validate.boolean(measure_only, "measure_only")
        feature_learning = validate.boolean(feature_learning, "feature_learning")
        reinit = validate.boolean(reinit, "reinit")
        self._seed_given = seed is not None
        if seed is None:  # a reinitialising run draws it from the global generator, as torch's init does
            self.seed = draw_seed() if reinit else 0
        else:
            self.seed = validate.integer(seed, "seed", 0)
        if solver is not None and not isinstance(solver, str):
            warn_user(
                f"solver={type(solver).__name__}(...) is not used: this backend solves an exact LP with "
                "HiGHS, not the published MILP with PuLP; pass solver='highs' or 'clarabel' to choose"
            )
            solver = None

        self.parametrization = parse_parametrization(parametrization)
        self.strict = validate.boolean(strict, "strict")
        self._ruled: RuledLayers | None = None
        if rules is not None:
            if layers is not None:
                raise MaxPError("give rules or layers, not both")
            self._ruled = apply_rules(unwrap(model), rules, attention_a=attention_exponent(parametrization))
            layers = self._ruled.layers
        found = layers or [(n, m) for n, m in model.named_modules() if isinstance(m, ParametrizedModule)]
        if layers is not None and use_training_activations:
            raise MaxPError("use_training_activations needs ParametrizedModule layers")
        if not found:
            raise MaxPError(
                f"no ParametrizedModule in {type(model).__name__}: wrap the layers to parametrize, e.g. "
                "ParametrizedModule(nn.Linear(n, n), width_dim=n, layer_type='hidden')"
            )
        self.names = [n for n, _ in found]
        self.modules = [m for _, m in found]
        _refuse_meta(unwrap(model))
        ab_overrides = _exponent_overrides(ab_overrides, "ab_overrides", pair=True)
        c_overrides = _exponent_overrides(c_overrides, "c_overrides", pair=False)
        exponents = []
        for module in self.modules:
            a0, b0 = ab_overrides.get(module.layer_type, default_ab(parametrization, module.layer_type))
            exponents.append((a0 if module.a is None else module.a, b0 if module.b is None else module.b))
        self.exponents = exponents
        preset = alignment_preset(alignment)
        self.overrides: dict[int, Triple] = self._alignment_overrides(alignment_overrides)
        self.weighted = [k for k, m in enumerate(self.modules) if m.weight is not None]
        self.groups = _tied_groups([self.modules[k].weight for k in self.weighted])
        self._check_widths()
        self._check_coverage()
        self.depth = depth
        self.depth_factors: DepthFactors | None = None  # set once the graph is known
        # Initialise before tracing: the tracer reads which factors are zero at initialization.
        self._reinit_and_scale(reinit)
        if sample_input is not None:
            attention: list[tuple[str, int, float, float]] = []
            graph = trace_graph(unwrap(model), found, exponents, sample_input, attention)
            sharding.reshard(unwrap(model))
            self._check_attention(attention)
        else:
            graph = synthetic_graph(self.names, self.modules, exponents)
        numbers = {self.names[k]: self.overrides.get(k, preset) for k in range(len(self.modules))}
        self.graph = graph.with_numbers(
            alpha={n: t[0] for n, t in numbers.items()},
            omega={n: t[1] for n, t in numbers.items()},
            u={n: t[2] for n, t in numbers.items()},
        )
        self._row = {k: self.graph.index(name) for k, name in enumerate(self.names)}
        if depth is not None:
            warn_if_untraced(depth, sample_input is not None, "pass sample_input to trace it")
            self.depth_factors = depth_factors(depth, self.graph, self.optimizer_type)
            self._reinit_and_scale(reinit)  # the same draws, at the depth rule's scales
        pins = {}
        for name, module in zip(self.names, self.modules, strict=True):
            pin = module.c if module.c is not None else c_overrides.get(module.layer_type)
            if pin is not None and module.weight is not None:
                pins[name] = float(pin)
        self.lp = StabilityLP(
            self.graph,
            self.optimizer_type,
            feature_learning=feature_learning,
            c_fixed=pins,
            solver=solver or "highs",
            tie_rule=tie_rule,
            reference_alignment=preset,
        )
        self.alignment = np.array([[n.alpha, n.omega, n.u] for n in self.graph.nodes])
        solution = self.lp.solve()
        self.c = np.array([solution.c[self.names[k]] for k in self.weighted])
        self.param_groups = self._build_param_groups()
        self._warn_on_tied_disagreement()
        self.step_count = 0
        self.solves = 0
        self.failures = 0
        self.missing = 0
        self._resolver = Resolver(
            self.graph.names,
            self._solve,
            alignment_ema=self.alignment_ema,
            c_ema=self.c_ema,
            overrides={self._row[k]: triple for k, triple in self.overrides.items()},
            unused=unused_alignments(self.graph, self.graph.names),
            measure_only=self.measure_only,
        )
        self.solve_seconds = 0.0
        self._z0: dict[int, torch.Tensor] = {}
        self._w0: dict[int, torch.Tensor] = {}
        self._sample: torch.Tensor | None = None
        self._initial_model: nn.Module | None = None
        self._recorded: dict[int, torch.Tensor] = {}
        self._publish_alignments()
        #: The scheduler that steps this parametrization, if one does (then only it may).
        self._driver: Any = None
        self._stepped = StepTracker()
        watch_optimizer_steps(self)

    # --- setup ------------------------------------------------------------------------

    def _alignment_overrides(self, given: Mapping[str, Triple] | AlignmentTable | None) -> dict[int, Triple]:
        """Each overridden layer's ``(alpha, omega, u)``: the rules', then the user's mapping or table."""
        layers = [(name, module.layer_type) for name, module in zip(self.names, self.modules, strict=True)]
        if isinstance(given, AlignmentTable):  # a table describes weights: weightless products keep theirs
            weighted = [k for k, module in enumerate(self.modules) if module.weight is not None]
            found = resolve_overrides([layers[k] for k in weighted], given)
            fixed = {weighted[k]: triple for k, triple in found.items()}
        else:
            fixed = resolve_overrides(layers, given)
        ruled = resolve_overrides(layers, self._ruled.alignment) if self._ruled else {}
        return {**ruled, **fixed}

    def _check_widths(self) -> None:
        """A layer's ``width_dim`` must be one of its weight's axes: another number would scale
        its rate and initial scale by a width the layer does not have."""
        for k in self.weighted:
            module = self.modules[k]
            shape = tuple(getattr(module.weight, "shape", ()))
            if module.kind is CONV:  # a kernel's window never grows; a grouped one sees all inputs
                growing = (shape[0], shape[1] * getattr(module.inner, "groups", 1))
            else:
                growing = shape
            if shape and module.width_dim not in growing:
                raise MaxPError(
                    f"layer {self.names[k]!r}: width_dim={module.width_dim} is none of its weight's axes "
                    f"{shape} that can grow with width {growing}; give the size of the axis that grows "
                    "with the model's width (for nn.Linear(in, out), usually in_features; for a readout, "
                    "its input width; for a convolution, its input channels)"
                )

    def _check_coverage(self) -> None:
        """Weights no layer covers train at ``lr_prefactor``: list them (an error with ``strict``)."""
        covered = {id(p) for m in self.modules for p in m.parameters()}
        inner = {id(m.inner) for m in self.modules if m.inner is not None}
        weights = {id(self.modules[k].weight): self.names[k] for k in self.weighted}
        model = unwrap(self.model)
        problems = [
            f"{n} {tuple(p.shape)} would train at lr_prefactor"
            for n, p in model.named_parameters()
            if p.ndim >= 2 and id(p) not in covered
        ]
        problems += [
            f"{n} uses the weight of {weights[id(m.weight)]} (tied) but its own use is no maxP layer"
            for n, m in model.named_modules()
            if kind_of(m) is not None and id(m) not in inner and id(getattr(m, "weight", None)) in weights
        ]
        if not problems:
            return
        message = f"no maxP layer covers: {'; '.join(problems)}. Give them a Rule (or a ParametrizedModule)"
        if self.strict:
            raise MaxPError(message)
        warn_user(message + " (strict=True makes this an error)")

    def _check_attention(self, attention: list[tuple[str, int, float, float]]) -> None:
        """Warn where ``scaled_dot_product_attention`` runs at a scale the parametrization does not expect."""
        expected = attention_exponent(self.parametrization)
        scoped = [name for name, _ in self._ruled.attention] if self._ruled else []
        for node, head, scale, a in attention:
            module = node.rsplit(".scores", 1)[0]
            if any(module == s or module.startswith(s + ".") for s in scoped) or abs(a - expected) < 1e-6:
                continue
            warn_user(
                f"{node}: scaled_dot_product_attention runs at scale {scale:.4g} = {head}^-{a:.3g} (head "
                f"dimension {head}), but {self.parametrization} scales attention by d^-{expected:g}; give "
                f"Rule({module!r}, 'attention') to set it (or Rule(..., 'attention', a={a:.3g}) to keep it)"
            )

    def _width(self, k: int) -> int:
        return self.modules[k].width_dim

    def _depth(self, k: int) -> tuple[float, float, float]:
        """``(init, lr, output multiplier)`` the depth rule gives module ``k`` (ones without a
        rule); a bare parameter has its branch multiplier folded into init and rate."""
        f = self.depth_factors
        name = self.names[k]
        if f is None or name not in f.lr:
            return 1.0, 1.0, 1.0
        if self.modules[k].folded:
            return (*f.folded(name, self.optimizer_type), 1.0)
        return f.init[name], f.lr[name], f.multiplier[name]

    def _abc(self, j: int, c: float | None = None) -> tuple[float, float, float]:
        """``(a, b, c)`` of weighted layer ``j`` as applied (``c``: the latest solution unless
        given); a bare parameter's multiplier is folded into its ``b`` and ``c``."""
        k = self.weighted[j]
        a, b = self.exponents[k]
        c = float(self.c[j]) if c is None else c
        return fold_multiplier(a, b, c, self.optimizer_type) if self.modules[k].folded else (a, b, c)

    def _applied_b(self, j: int) -> float:
        return self._abc(j, c=0.0)[1]

    def _init_std(self, g: int) -> float:
        """Initial standard deviation of group ``g``'s weight: the smallest its layers ask for."""
        return min(
            self.std_prefactor
            * self._width(self.weighted[j]) ** -self._applied_b(j)
            * self._depth(self.weighted[j])[0]
            for j in self.groups[g]
        )

    def _group_of(self, k: int) -> int:
        j = self.weighted.index(k)
        return next(g for g, members in enumerate(self.groups) if j in members)

    def _generator(self, g: int, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + g)  # by weight, so parameter-free layers shift nothing
        return gen

    def _draw_initial_weight(self, g: int, like: torch.Tensor) -> torch.Tensor:
        """Group ``g``'s initial weight, drawn again from its own seeded generator.

        A transposed layout (``(in, out)``) is drawn as ``(out, in)`` and transposed, so it
        starts from the same matrix as its ``nn.Linear`` twin.
        """
        transposed = self.modules[self.weighted[self.groups[g][0]]].kind is TRANSPOSED
        shape = like.shape[::-1] if transposed else like.shape
        noise = torch.randn(
            shape, generator=self._generator(g, like.device), device=like.device, dtype=like.dtype
        )
        return (noise.T if transposed else noise) * self._init_std(g)

    @torch.no_grad()
    def _reinit_and_scale(self, reinit: bool) -> None:
        for k, module in enumerate(self.modules):
            multiplier = self._width(k) ** -self.exponents[k][0] * self._depth(k)[2]
            module.scale = 1.0 if module.folded else float(multiplier)
        for g, members in enumerate(self.groups):
            first = self.weighted[members[0]]
            weight = self.modules[first].weight
            assert weight is not None
            if not reinit:
                if math.isinf(self._init_std_exponent(g)) and bool(sharding.full(weight).any()):
                    raise MaxPError(
                        f"layer {self.names[first]!r} is declared zero-initialised (b = inf) but keeps its "
                        "current weights (reinit=False), which are not zero; zero them or give a finite b"
                    )
                continue
            sharding.assign(weight, self._draw_initial_weight(g, weight))
            for j in members:
                bias = getattr(self.modules[self.weighted[j]].inner, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()

    def _init_std_exponent(self, g: int) -> float:
        return min(self._applied_b(j) for j in self.groups[g])

    def _build_param_groups(self) -> list[dict[str, Any]]:
        groups = []
        taken: set[int] = set()
        for g, members in enumerate(self.groups):
            layers = [self.weighted[j] for j in members]
            params = []
            for p in (p for k in layers for p in self.modules[k].parameters()):
                if id(p) not in taken:
                    taken.add(id(p))
                    params.append(p)
            group = {
                "params": params,
                "lr": self._lr(g),
                WRITTEN: self._lr(g),
                "layer_name": self.names[layers[0]],
                "c": self._group_c(g),
                "fan_in": self._width(self.weighted[self._binding(g)]),
                "maxp_managed": True,
            }
            if len(layers) > 1:
                group["tied"] = [self.names[k] for k in layers]
            groups.append(group)
        rest = [p for p in self.model.parameters() if id(p) not in taken]
        if rest:
            other = {
                "params": rest,
                "lr": self.lr_prefactor,
                WRITTEN: self.lr_prefactor,
                "layer_name": "_other",
                "maxp_managed": False,
            }
            groups.append(other)
        return groups

    def _binding(self, g: int) -> int:
        """The weighted layer whose rate group ``g`` runs at (the smaller of a tied weight's uses)."""
        return min(self.groups[g], key=self._layer_lr)

    def _group_c(self, g: int) -> float:
        return float(self.c[self._binding(g)])

    def _layer_lr(self, j: int) -> float:
        """The rate weighted layer ``j`` asks for: ``lr_prefactor * width^-c`` (c folded if bare),
        times the depth rule's factor."""
        k = self.weighted[j]
        return self.lr_prefactor * float(self._width(k) ** -self._abc(j)[2]) * self._depth(k)[1]

    def _lr(self, g: int) -> float:
        """Group ``g``'s rate: the smallest its layers ask for (a tied weight keeps both uses stable)."""
        return min(self._layer_lr(j) for j in self.groups[g])

    def _warn_on_tied_disagreement(self) -> None:
        for members in self.groups:
            if len(members) < 2:
                continue
            names = [self.names[self.weighted[j]] for j in members]
            stds = [
                self.std_prefactor * self._width(self.weighted[j]) ** -self._applied_b(j) for j in members
            ]
            lrs = [self._layer_lr(j) for j in members]
            message = tied_disagreement(names, stds, lrs)
            if message:
                warn_user(message)

    # --- public -----------------------------------------------------------------------

    def get_layer_names(self) -> list[str]:
        """Names of the parameter groups maxP sets (one per weight; a tied weight's first layer)."""
        return [self.names[self.weighted[members[0]]] for members in self.groups]

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each group of :meth:`get_layer_names`."""
        return [self._lr(g) for g in range(len(self.groups))]

    def get_alignment(self) -> tuple[list[float], list[float], list[float]]:
        """``(alpha, omega, u)`` lists, one entry per group of :meth:`get_layer_names` (for a tied
        weight, the layer whose rate it takes)."""
        binding = [self._binding(g) for g in range(len(self.groups))]
        rows = self.alignment[[self._row[self.weighted[j]] for j in binding]]
        return rows[:, 0].tolist(), rows[:, 1].tolist(), rows[:, 2].tolist()

    def metrics(self) -> dict[str, float]:
        """A flat dict for any logger, one entry per layer and counter (:mod:`maxp_core.metrics`).

        Keys: ``maxp/lr/<layer>`` (the rate its group runs at), ``maxp/lr_factor/<layer>``
        (``width^-c``, what the layer alone asks for), ``maxp/c/<layer>``,
        ``maxp/alpha/<layer>``, ``maxp/omega/<layer>``, ``maxp/u/<layer>``, and
        ``maxp/step``, ``maxp/solves``, ``maxp/failures``, ``maxp/missing``,
        ``maxp/solve_seconds`` (the host's time for the last re-solve: rules and LP). The keys are those of
        ``maxp_jax.metrics``; :meth:`metrics_log` writes them to a JSONL file.

        Example:
          >>> param = Parametrization(nn.Sequential(
          ...     ParametrizedModule(nn.Linear(4, 16), width_dim=16, layer_type="embedding"),
          ...     ParametrizedModule(nn.Linear(16, 2), width_dim=16, layer_type="readout")), lr_prefactor=1.0)
          >>> param.metrics()["maxp/lr/1"], param.metrics()["maxp/solves"]
          (0.25, 0.0)
        """
        group_of = {j: g for g, members in enumerate(self.groups) for j in members}
        rows = self.alignment[[self._row[k] for k in self.weighted]]
        columns = {
            "lr": [self._lr(group_of[j]) for j in range(len(self.weighted))],
            "lr_factor": [self._width(k) ** -self._abc(j)[2] for j, k in enumerate(self.weighted)],
            "c": self.c,
            **{field: rows[:, i] for i, field in enumerate(("alpha", "omega", "u"))},
        }
        counters = {
            "step": self.step_count,
            "solves": self.solves,
            "failures": self.failures,
            "missing": self.missing,
            "solve_seconds": self.solve_seconds,
        }
        return metrics_record([self.names[k] for k in self.weighted], columns, counters)

    def metrics_log(self, path: str | Path) -> MetricsLog:
        """A :class:`maxp_core.metrics.MetricsLog` at ``path`` naming this model's layers.

        Example:
          >>> import tempfile, os
          >>> param = Parametrization(nn.Sequential(
          ...     ParametrizedModule(nn.Linear(4, 16), width_dim=16, layer_type="embedding"),
          ...     ParametrizedModule(nn.Linear(16, 2), width_dim=16, layer_type="readout")))
          >>> with param.metrics_log(os.path.join(tempfile.mkdtemp(), "run.jsonl")) as log:
          ...     written = log.write(param.metrics(), loss=2.3)
          >>> written["maxp/c/1"], written["loss"]
          (0.5, 2.3)
        """
        return MetricsLog(path, {self.names[k]: self.modules[k].layer_type for k in self.weighted})

    def describe(self) -> str:
        """The per-layer table: role, kind, width, a, b, c, alignments and learning rate.

        ``c`` and the alignments are the latest solution (the preset's before the first
        re-solve); a bare parameter shows its folded exponents.
        """
        from maxp_core.cli import format_table

        group_of = {j: g for g, members in enumerate(self.groups) for j in members}
        rows = []
        for j, k in enumerate(self.weighted):
            a, b, c = self._abc(j)
            alpha, omega, u = self.alignment[self._row[k]]
            kind = self.modules[k].kind
            rows.append(
                (self.names[k], self.modules[k].layer_type, kind.name, self._width(k),
                 a, b, c, float(alpha), float(omega), float(u), self._lr(group_of[j]))
            )  # fmt: skip
        header = ("layer", "role", "kind", "width", "a", "b", "c", "alpha", "omega", "u", "lr")
        table = format_table(rows, header)
        return table if self.depth_factors is None else f"{table}\ndepth: {self.depth_factors.rule}"

    def __repr__(self) -> str:
        return (
            f"Parametrization({type(self.model).__name__}, {len(self.weighted)} layers, "
            f"optimizer_type={self.optimizer_type!r}, parametrization={self.parametrization!r}, "
            f"lr_prefactor={self.lr_prefactor:g}, step={self.step_count}, solves={self.solves})"
        )

    def remove(self) -> None:
        """Take off the hooks that rules installed (the model is then as it was, weights aside)."""
        if self._ruled is not None:
            self._ruled.remove()
            self._ruled = None

    def _measured(self) -> list[int]:
        return [
            k
            for k in self.weighted
            if self.modules[k].role is not Role.EMBEDDING
            and k not in self.overrides
            and self.modules[k].kind.measurable
        ]

    def _record(
        self,
        keep: dict[int, torch.Tensor],
        sizes: dict[int, tuple[int, int]] | None = None,
        training_only: bool = False,
    ) -> None:
        """Keep each module's first input rows in ``keep`` (and ``(samples, rows)`` of its whole
        input in ``sizes``) on every forward until :meth:`_stop_recording`; with
        ``training_only``, only on forwards that build gradients (training, in train or eval
        mode), so that an evaluation under ``torch.no_grad()`` between the training step and
        :meth:`step` does not replace them."""
        index = {id(m): k for k, m in enumerate(self.modules)}

        def recorder(module: Any, args: tuple[Any, ...]) -> None:
            k = index[id(module)]
            if training_only and not torch.is_grad_enabled():
                return
            if args and isinstance(args[0], torch.Tensor):
                rows = module.kind.rows(module.inner, args[0].detach())
                keep[k] = leading_rows(rows, self.sample_size)
                if sizes is not None:
                    sizes[k] = (args[0].shape[0] if args[0].ndim else 0, rows.shape[0])

        for module in self.modules:
            module._recorder = recorder

    def _stop_recording(self) -> None:
        for module in self.modules:
            module._recorder = None

    def _devices(self) -> list[torch.device]:
        return list({p.device for m in self.modules for p in m.parameters()})

    def _inputs(
        self, model: nn.Module, x: torch.Tensor, sizes: dict[int, tuple[int, int]] | None = None
    ) -> dict[int, torch.Tensor]:
        """Each module's input on the first rows of ``x``, in :func:`measurement_mode`."""
        keep: dict[int, torch.Tensor] = {}
        self._record(keep, sizes)
        try:
            with measurement_mode(unwrap(model), self._devices()):
                call_model(unwrap(model), first_rows(x, self.sample_size))
        finally:
            self._stop_recording()
            sharding.reshard(unwrap(model))
        return keep

    def capture_initial(self, x: Any) -> None:
        """Record the inputs and weights of the measured layers before training.

        maxP's forward pass runs in eval mode and leaves the global random state untouched
        (:func:`measurement_mode`). Call it once, before the first step: a resumed run gets
        what it needs from :meth:`load_state_dict`.
        """
        if self.step_count > 0 or self._sample is not None:
            raise MaxPError(
                f"capture_initial after {'a loaded state' if self.step_count else 'an earlier capture'}: "
                "the initial state is already recorded, and capturing again would measure against the "
                "current weights instead of the initial ones; a resumed run only needs load_state_dict"
            )
        sharding.check_live(unwrap(self.model), self.param_groups, "capture_initial")
        self._sample = first_rows(x, self.sample_size, clone=True)
        if self.use_training_activations:
            self._initial_model = copy.deepcopy(unwrap(self.model))
            self._record(self._recorded, training_only=True)
            return
        sizes: dict[int, tuple[int, int]] = {}
        inputs = self._shrink_sample(self._inputs(self.model, self._sample, sizes), sizes)
        for k in self._measured():
            if k not in inputs:
                raise MaxPError(f"layer {self.names[k]!r} was not called by the model on the captured input")
            self._z0[k] = inputs[k].clone()
            if self.resample_w0:
                self._check_redraw(k)
            else:
                weight = self.modules[k].weight
                assert weight is not None
                self._w0[k] = weight.detach().clone()

    def _shrink_sample(
        self, inputs: dict[int, torch.Tensor], sizes: dict[int, tuple[int, int]]
    ) -> dict[int, torch.Tensor]:
        """Keep only the samples the measured rows come from, and their inputs.

        Each layer measures its first ``sample_size`` input rows; a sequence model gets many
        rows from each sample, so a forward pass over all ``sample_size`` samples would mostly
        compute rows nobody reads. The sample shrinks to the fewest leading samples that give
        every measured layer the same number of rows, found from the sizes seen on the whole
        sample (batch-first inputs only) and checked on the smaller one; the initial inputs are
        then those of the smaller sample, so both measurements see the same computation.
        """
        batch = leading_size(self._sample)
        measured = [k for k in self._measured() if k in sizes]
        needed = self._samples_needed(measured, sizes, batch)
        keep = batch if needed is None else needed
        shrinks = keep < batch
        if not any_rank(shrinks, self._devices()[0]):
            return inputs
        # Under FSDP a forward pass gathers weights with every rank: all ranks run the trial pass,
        # those that keep their sample on it whole, so each takes part in as many as the others.
        smaller = first_rows(self._sample, keep, clone=True)
        trial = self._inputs(self.model, smaller)
        if not shrinks or any(k not in trial or trial[k].shape != inputs[k].shape for k in measured):
            return inputs
        self._sample = smaller
        return trial

    def _samples_needed(
        self, measured: list[int], sizes: dict[int, tuple[int, int]], batch: int
    ) -> int | None:
        """The fewest leading samples giving each measured layer its rows; None when the rows
        do not come whole from batch-first samples (the sample then stays as it is)."""
        if not measured:
            return None
        needed = 1
        for k in measured:
            samples, rows = sizes[k]
            if samples != batch or rows < batch or rows % batch:
                return None
            needed = max(needed, -(-min(self.sample_size, rows) // (rows // batch)))
        return needed

    def _check_redraw(self, k: int) -> None:
        """``resample_w0`` redraws the initial weights: they must be what the layer holds now."""
        weight = self.modules[k].weight
        assert weight is not None
        if not torch.equal(self._initial_weight(k), weight.detach()):
            raise MaxPError(
                f"resample_w0=True redraws layer {self.names[k]!r}'s initial weight from seed={self.seed} "
                f"and std_prefactor={self.std_prefactor}, but that is not the weight it holds now: the "
                "weights were drawn with another seed, std_prefactor, device or dtype (or not by maxP); "
                "give those of the initialisation, or resample_w0=False to store the weights"
            )

    def step(self, x: torch.Tensor | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After ``optimizer.step()``: re-solve on schedule and write the learning rates.

        Args:
          x: the training batch (used with ``use_training_activations``; otherwise the
            alignments are measured on the sample given to :meth:`capture_initial`).
          optimizer: the optimizer built from :attr:`param_groups`. Without it the rates
            go to the optimizer last seen stepping this model's parameters (or, before any
            step, into :attr:`param_groups`, which are the optimizer's groups when it was
            built from them), so :meth:`get_last_lr` and the optimizer agree either way.

        Raises a :class:`~maxp_core.MaxPError` if something else changed the rates since
        maxP last wrote them (a torch scheduler stepped on its own: chain it with
        :meth:`lr_scheduler` instead), and if a scheduler steps this parametrization.
        """
        if self._driver is not None:
            raise MaxPError(
                f"this Parametrization is stepped by its {type(self._driver).__name__}; call that "
                "scheduler's step() (once per training step) instead of param.step()"
            )
        self._advance(x)
        self._write_rates(optimizer)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, *schedulers: Any) -> Any:
        """This parametrization as a ``torch.optim.lr_scheduler.LRScheduler`` on ``optimizer``.

        Any torch schedulers built on the same optimizer (``LinearLR``, ``CosineAnnealingLR``,
        ``LambdaLR``, ``SequentialLR``, ``OneCycleLR``, Hugging Face's
        ``get_cosine_schedule_with_warmup``, ...) are stepped by it, and every layer's rate is
        their factor times its maxP rate: see :class:`~maxp_torch.ChainedMaxPScheduler`.
        Call the returned scheduler's ``step()`` after each ``optimizer.step()`` in place of
        :meth:`step`.

        Example:
          >>> model = nn.Sequential(
          ...     ParametrizedModule(nn.Linear(4, 32), width_dim=32, layer_type="embedding"), nn.ReLU(),
          ...     ParametrizedModule(nn.Linear(32, 2), width_dim=32, layer_type="readout"))
          >>> param = Parametrization(model, lr_prefactor=0.1, seed=0)
          >>> optimizer = torch.optim.AdamW(param.param_groups)
          >>> warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
          >>> scheduler = param.lr_scheduler(optimizer, warmup)
          >>> [round(a / b, 6) for a, b in zip(scheduler.get_last_lr(), param.get_last_lr())]
          [0.5, 0.5]
        """
        from maxp_torch.chained import ChainedMaxPScheduler

        return ChainedMaxPScheduler(self, list(schedulers), optimizer=optimizer)

    def optimizer_stepped(self, optimizer: torch.optim.Optimizer) -> None:
        """Remember ``optimizer`` if it holds this model's parameters (called after every optimizer step)."""
        self._stepped.notice(optimizer, self.modules[self.weighted[0]].weight)

    def _advance(self, x: torch.Tensor | None) -> None:
        """Count a training step and re-solve if the schedule says so."""
        self.step_count += 1
        if self.schedule.should_solve(self.step_count):
            if self._sample is None:
                raise CallOrderError("step() before capture_initial(x): capture the initial state first")
            self._resolve(x)

    def _write_rates(self, optimizer: torch.optim.Optimizer | None) -> None:
        target = optimizer if optimizer is not None else self._stepped.optimizer
        if optimizer is None and target is not None and not self._built_from_groups(target):
            warn_user(
                f"the {type(innermost_optimizer(target)).__name__} stepping this model was not built from "
                "param.param_groups, so param.step(x) leaves its rates alone: the new rates are in "
                "param.param_groups and get_last_lr(); copy them over, or build it from param.param_groups"
            )
            target = None
        if target is None:
            check_sole_writer(self.param_groups, "param.param_groups")
            self._refresh_groups()
            return
        groups = target.param_groups
        self._check_group_names(groups)
        self._check_optimizer(target)
        check_sole_writer(groups, f"the optimizer ({type(target).__name__})")
        self._refresh_groups()
        write_rates(groups, {i: ours["lr"] for i, ours in enumerate(self.param_groups)})
        for ours, theirs in zip(self.param_groups, groups, strict=True):
            if "c" in ours:
                theirs["c"] = ours["c"]

    def _built_from_groups(self, optimizer: torch.optim.Optimizer) -> bool:
        names = [g.get("layer_name") for g in optimizer.param_groups]
        return names == [g["layer_name"] for g in self.param_groups]

    def _check_group_names(self, groups: Sequence[Mapping[str, Any]]) -> None:
        expected = [g["layer_name"] for g in self.param_groups]
        names = [g.get("layer_name") for g in groups]
        if names != expected:
            raise MaxPError(
                f"the optimizer's param groups {names} do not match the parametrization's {expected}; "
                "build the optimizer from param.param_groups"
            )

    def _maxp_groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """The optimizer's groups maxP sets (all of them: the layers' and ``"_other"``), checked."""
        self._check_group_names(optimizer.param_groups)
        self._check_optimizer(optimizer)
        return list(range(len(self.param_groups)))

    def _maxp_rates(self) -> list[float]:
        """maxP's current rate of every group of :attr:`param_groups` (``"_other"``: ``lr_prefactor``)."""
        rates = self.get_last_lr()
        return rates + [self.lr_prefactor] * (len(self.param_groups) - len(rates))

    def _maxp_exponents(self) -> list[float | None]:
        """Each group's current ``c`` (``None`` for ``"_other"``)."""
        exponents: list[float | None] = [self._group_c(g) for g in range(len(self.groups))]
        return exponents + [None] * (len(self.param_groups) - len(exponents))

    def _refresh_groups(self) -> None:
        """Write the current rates and exponents into :attr:`param_groups` (as the published maxP does)."""
        rates = self._maxp_rates()
        write_rates(self.param_groups, dict(enumerate(rates)))
        for group, c in zip(self.param_groups, self._maxp_exponents(), strict=True):
            if c is not None:
                group["c"] = c

    def _publish_alignments(self) -> None:
        """Every layer's ``alpha``, ``omega``, ``u`` attributes: its latest (or assumed) alignment."""
        for k, module in enumerate(self.modules):
            module.alpha, module.omega, module.u = (float(v) for v in self.alignment[self._row[k]])

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer must be of the kind the LP was solved for (once per optimizer)."""
        if getattr(self, "_checked_optimizer", None) is optimizer:
            return
        sharding.check_live(unwrap(self.model), optimizer.param_groups, "step(x, optimizer)")
        known = known_kind(optimizer)
        kind = optimizer_kind(optimizer) if known or not self._declared_optimizer else self.optimizer_type
        if kind != self.optimizer_type:
            raise MaxPError(
                f"the learning rates were solved for optimizer_type={self.optimizer_type!r} but the "
                f"optimizer is {type(innermost_optimizer(optimizer)).__name__} ({kind}-like); pass "
                f"optimizer_type={kind!r}"
            )
        self._checked_optimizer = optimizer

    def _current_and_initial_inputs(
        self, x: torch.Tensor | None
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        if not self.use_training_activations:
            assert self._sample is not None
            return self._inputs(self.model, self._sample), self._z0
        if x is None or not self._recorded:
            raise MaxPError(
                "use_training_activations=True: step(x) needs the training batch x after a training forward"
            )
        assert self._initial_model is not None
        rows = first_rows(x, self.sample_size)
        initial_modules = [m for m in self._initial_model.modules() if isinstance(m, ParametrizedModule)]
        keep: dict[int, torch.Tensor] = {}
        index = {id(m): k for k, m in enumerate(initial_modules)}

        def recorder(module: ParametrizedModule, args: tuple[Any, ...]) -> None:
            keep[index[id(module)]] = leading_rows(
                module.kind.rows(module.inner, args[0].detach()), self.sample_size
            )

        for m in initial_modules:
            m._recorder = recorder
        try:
            with measurement_mode(self._initial_model, self._devices()):
                call_model(self._initial_model, rows)
        finally:
            for m in initial_modules:
                m._recorder = None
        now = {k: v[: keep[k].shape[0]] for k, v in self._recorded.items() if k in keep}
        return now, keep

    def _initial_weight(self, k: int) -> torch.Tensor:
        weight = self.modules[k].weight
        assert weight is not None
        if self.use_training_activations:
            assert self._initial_model is not None
            initial_modules = [m for m in self._initial_model.modules() if isinstance(m, ParametrizedModule)]
            w0 = initial_modules[k].weight
            assert w0 is not None
            return w0.detach()
        if self.resample_w0:
            return self._draw_initial_weight(self._group_of(k), weight.detach())
        return self._w0[k]

    def _weight_matrix(self, k: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``k``'s weight (or ``weight``, laid out as it) as ``(out, fan_in)``, detached."""
        weight = self.modules[k].weight if weight is None else weight
        assert weight is not None
        return self.modules[k].kind.matrix(sharding.full(weight.detach()))

    @torch.no_grad()
    def _measure(self, x: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Measured alignments per graph row (NaN where missing) and which rows are not finite."""
        now, initial = self._current_and_initial_inputs(x)
        values = self.alignment.copy()
        nonfinite = np.zeros(len(values), dtype=bool)
        measured = self._measured()
        if not measured:
            return values, nonfinite
        weights = {k: self._weight_matrix(k) for k in measured}
        for k in measured:
            if now[k].shape[-1] != weights[k].shape[1]:
                raise MaxPError(
                    f"layer {self.names[k]!r} ({self.modules[k].kind.name}): its input rows have "
                    f"{now[k].shape[-1]} features but its weight contracts {weights[k].shape[1]}; dynamic "
                    "alignment measures layers whose input multiplies the weight (Linear, Conv, Conv1D); "
                    "pin this layer with alignment_overrides"
                )
            if now[k].is_complex() or weights[k].is_complex():
                raise MaxPError(f"layer {self.names[k]!r}: complex weights or inputs cannot be measured")

        def shape_of(k: int) -> tuple[Any, ...]:
            w = weights[k]
            return (tuple(now[k].shape), tuple(w.shape), w.dtype, w.device)

        order: list[int] = []
        pieces: list[torch.Tensor] = []
        for layers in groups_of_equal_shape(measured, shape_of):
            for chunk in stack_chunks(layers, weights[layers[0]]):
                # One layer is measured on views of its own tensors, several on stacked copies that
                # the measurement may overwrite.
                gather = (lambda ts: ts[0][None]) if len(chunk) == 1 else torch.stack
                z, w = gather([now[k] for k in chunk]), gather([weights[k] for k in chunk])
                finite = all_finite(z) & all_finite(w)
                z0 = gather([initial[k] for k in chunk])
                w0 = gather([self._weight_matrix(k, self._initial_weight(k)) for k in chunk])
                if self.norm_mode == "rms":
                    scratch = len(chunk) > 1
                    al = alignment_of_stacks(z0, z, w0, w, w.shape[-1], xp=torch, scratch=scratch)
                else:
                    layers_of_chunk = list(zip(z0, z, w0, w, strict=True))
                    al = alignment_of_layers(layers_of_chunk, self.norm_mode, w.shape[-1], xp=torch)
                order += chunk
                pieces.append(torch.stack([*al, finite.to(al[0].dtype)], dim=1))
        # Reduced on the device the layers live on (NCCL groups take no CPU tensors) and copied to
        # the host once, instead of one float() per value. A NaN on any rank stays NaN in the mean.
        device = pieces[0].device
        stacked = torch.cat([piece.to(device, torch.float64) for piece in pieces])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)
            stacked /= dist.get_world_size()
        host = stacked.cpu().numpy()
        rows = [self._row[k] for k in order]
        values[rows] = host[:, :3]
        nonfinite[rows] = host[:, 3] < 1.0
        return values, nonfinite

    def _solve(self, alignment: np.ndarray) -> np.ndarray:
        solution = self.lp.solve(alpha=alignment[:, 0], omega=alignment[:, 1], u=alignment[:, 2])
        return np.array([solution.c[self.names[k]] for k in self.weighted])

    def _resolve(self, x: torch.Tensor | None) -> None:
        measured, nonfinite = self._measure(x)
        start = time.perf_counter()
        outcome = self._resolver(
            measured=measured,
            previous=self.alignment,
            c_prev=self.c,
            nonfinite=nonfinite,
            failures=self.failures,
        )
        self.solve_seconds = time.perf_counter() - start
        self.c, self.alignment = outcome.c, outcome.alignment
        self.missing += outcome.missing
        if outcome.failed:
            self.failures += 1
        else:
            self.solves += 1
        self._publish_alignments()

    # --- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly.

        ``solves``, ``failures`` and ``missing`` count successful re-solves, re-solves that
        kept the last rates (non-finite numbers or no LP answer), and measurements that
        carried no information. With ``use_training_activations`` the initial model's
        weights are included (``initial_model``).
        """
        initial = None
        if self._initial_model is not None:
            initial = {k: v.detach().clone() for k, v in self._initial_model.state_dict().items()}
        return {
            "step_count": self.step_count,
            "seed": self.seed,
            "lr_prefactor": self.lr_prefactor,
            "c": self.c.tolist(),
            "alignment": self.alignment.tolist(),
            "solves": self.solves,
            "failures": self.failures,
            "missing": self.missing,
            "z0": {self.names[k]: v for k, v in self._z0.items()},
            "w0": {self.names[k]: v for k, v in self._w0.items()},
            "sample": self._sample,
            "initial_model": initial,
        }

    def _check_state(self, state: Any) -> None:
        """Refuse, by name, a state that :meth:`load_state_dict` cannot restore onto this model."""
        required = (
            "step_count",
            "lr_prefactor",
            "c",
            "alignment",
            "solves",
            "failures",
            "z0",
            "w0",
            "sample",
        )
        if not isinstance(state, Mapping):
            raise MaxPError(
                "load_state_dict: expected the mapping Parametrization.state_dict returns, "
                f"got {type(state).__name__}"
            )
        absent = [key for key in required if key not in state]
        if absent:
            raise MaxPError(
                f"load_state_dict: the state lacks {absent}; it is not a Parametrization.state_dict() "
                f"(its keys: {sorted(map(str, state))})"
            )
        unknown = sorted((set(state["z0"]) | set(state["w0"])) - set(self.names))
        if unknown:
            raise MaxPError(f"the state holds layers {unknown} that this model does not have: {self.names}")
        expected = {
            "c": ((len(self.weighted),), f"{len(self.weighted)} weighted layers"),
            "alignment": ((len(self.graph.nodes), 3), f"graph of {len(self.graph.nodes)} nodes"),
        }
        for key, (shape, what) in expected.items():
            try:
                found = np.shape(state[key])
            except ValueError:
                raise MaxPError(
                    f"load_state_dict: the state's {key} is ragged (rows of unequal length); this "
                    f"model's {what} need {shape}"
                ) from None
            if found != shape:
                raise MaxPError(
                    f"load_state_dict: the state's {key} has shape {found}, this model's {what} "
                    f"need {shape}; the state was saved for another model"
                )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the run then continues without :meth:`capture_initial`.

        Raises:
          MaxPError: ``state`` is not a :meth:`state_dict` of a parametrization of this
            model's layers (a key is missing, a layer is unknown, ``c`` does not hold one
            entry per weighted layer or ``alignment`` one row per graph node), or a number in
            it is not what a run can hold (the message names the field, the layer and the value;
            nothing is restored then).
        """
        self._check_state(state)
        index = {name: k for k, name in enumerate(self.names)}
        if (
            self.use_training_activations
            and state.get("initial_model") is None
            and state["sample"] is not None
        ):
            raise MaxPError(
                "use_training_activations=True needs the initial model's weights, which this state lacks "
                "(it was saved by a run without use_training_activations or by an older version)"
            )
        counts = {
            key: validate.integer(state.get(key, 0), f"load_state_dict: the state's {key}", 0)
            for key in ("step_count", "solves", "failures", "missing")
        }
        lr_prefactor = validate.positive_number(state["lr_prefactor"], "load_state_dict: lr_prefactor")
        weighted = [self.names[k] for k in self.weighted]
        c = [
            validate.exponent(value, f"load_state_dict: c of layer {name!r}")
            for name, value in zip(weighted, np.asarray(state["c"]).tolist(), strict=True)
        ]
        alignment = [
            validate.alignment_triple(row, f"load_state_dict: alignment of {name!r}")
            for name, row in zip(self.graph.names, np.asarray(state["alignment"]).tolist(), strict=True)
        ]
        # The seed resample_w0 redraws from; states saved before it was kept used the fixed 0.
        if state.get("seed") is not None:
            seed = validate.integer(state["seed"], "load_state_dict: the state's seed", 0)
        else:
            seed = self.seed if self._seed_given else 0
        self.seed = seed
        self.lr_prefactor = lr_prefactor
        self.c = np.array(c, dtype=np.float64)
        self.alignment = np.array(alignment, dtype=np.float64)
        self.step_count, self.solves = counts["step_count"], counts["solves"]
        self.failures, self.missing = counts["failures"], counts["missing"]
        self._z0 = {index[n]: v for n, v in state["z0"].items()}
        self._w0 = {index[n]: v for n, v in state["w0"].items()}
        self._sample = state["sample"]
        if self.use_training_activations and state.get("initial_model") is not None:
            self._initial_model = copy.deepcopy(unwrap(self.model))
            self._initial_model.load_state_dict(state["initial_model"])
            self._record(self._recorded, training_only=True)
        self._publish_alignments()


def _refuse_meta(model: nn.Module) -> None:
    """A model on the ``meta`` device has no values to re-initialise, measure or train yet."""
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        listed = ", ".join(on_meta[:4]) + (f" and {len(on_meta) - 4} more" if len(on_meta) > 4 else "")
        raise MaxPError(
            f"{listed} are on the 'meta' device (deferred initialisation); Parametrization draws and "
            "measures real weights, so materialise the model first, e.g. model.to_empty(device='cpu') "
            "(or your accelerator), then build the Parametrization: it initialises every maxP layer "
            "(give the other parameters their own init, e.g. LayerNorm.reset_parameters())"
        )


def draw_seed() -> int:
    """A seed for the per-layer generators, drawn from torch's global generator; under
    ``torch.distributed``, rank 0's draw, so that every replica starts from the same weights
    however each rank seeded its own generator.

    Example:
      >>> _ = torch.manual_seed(0); first = draw_seed()
      >>> _ = torch.manual_seed(0); first == draw_seed()
      True
    """
    seed = torch.randint(0, 2**31 - 1, (1,))
    if dist.is_available() and dist.is_initialized():
        nccl = dist.get_backend() == "nccl"  # NCCL groups take no CPU tensors
        shared = seed.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        dist.broadcast(shared, src=0)
        seed = shared.cpu()
    return int(seed.item())


def all_finite(stack: torch.Tensor) -> torch.Tensor:
    """Whether each entry of a stack holds only finite numbers, in one pass.

    A float64 sum is NaN or infinite exactly when an entry is (float32 and smaller
    values cannot overflow it).
    """
    return torch.isfinite(stack.flatten(1).sum(1, dtype=torch.float64))


#: The most bytes of weights one stacked measurement copies at once: stacking equally shaped layers
#: makes their measurement a few batched operations instead of a few per layer, and this bound keeps
#: the copies (current and initial weights, twice this at most) small next to the model. A 64-layer
#: MLP of width 128 measured 8 MiB at a time spent 8 MiB more peak memory than 1 MiB at a time,
#: and no time.
STACK_BYTES = 2**20
#: On a CPU, where an operation costs little to dispatch but a copy costs its memory traffic, layers
#: of at least this many bytes are measured one at a time, on the weights themselves.
CPU_SOLO_BYTES = 2**20


def stack_chunks(layers: list[int], weight: torch.Tensor, limit: int | None = None) -> list[list[int]]:
    """``layers`` (all shaped as ``weight``) in runs of as many as fit ``limit`` bytes, at least one.

    Example:
      >>> stack_chunks([0, 1, 2, 3, 4], torch.zeros(128, 1024), limit=2**20)   # 512 KiB each
      [[0, 1], [2, 3], [4]]
    """
    size = max(1, weight.numel() * weight.element_size())
    if weight.device.type == "cpu" and size >= CPU_SOLO_BYTES:
        return [[k] for k in layers]
    per_chunk = max(1, (STACK_BYTES if limit is None else limit) // size)
    return [layers[i : i + per_chunk] for i in range(0, len(layers), per_chunk)]


def _tied_groups(weights: Sequence[Any]) -> list[list[int]]:
    """Positions of the weights, grouped by identity (a tied weight's uses share a group), in
    order of first appearance."""
    groups: dict[int, list[int]] = {}
    for j, weight in enumerate(weights):
        groups.setdefault(id(weight), []).append(j)
    return list(groups.values())


def first_rows(x: Any, n: int, clone: bool = False) -> Any:
    """The first ``n`` samples of a batch: a tensor, a tuple of tensors (positional arguments)
    or a mapping of keyword arguments (``{"input_ids": ..., "attention_mask": ...}``)."""
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, tuple) else [x]
    batched = [v for v in values if isinstance(v, torch.Tensor) and v.ndim > 0]
    if not batched:
        raise MaxPError(
            f"the model's input must be a tensor batch, a tuple of them or a dict of keyword arguments "
            f"holding one, got {type(x).__name__}"
        )
    if any(v.shape[0] == 0 for v in batched):
        raise MaxPError("the input batch is empty; give a batch of at least one sample")

    def take(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or v.ndim == 0:
            return v
        v = v[:n].detach()
        return v.clone() if clone else v

    if isinstance(x, Mapping):
        return {key: take(v) for key, v in x.items()}
    if isinstance(x, tuple):
        return tuple(take(v) for v in x)
    return take(x)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank of the default process group (on this one if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    # On the device the layers live on: NCCL groups take no CPU tensors.
    votes = torch.tensor([float(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item() > 0)


def leading_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` of ``rows``, copied when they are fewer than all: a view would keep the
    whole input (every token of a sequence batch, every patch of a convolution) alive.

    Example:
      >>> rows = torch.zeros(1024, 8)
      >>> leading_rows(rows, 32).untyped_storage().nbytes(), leading_rows(rows, 2048) is rows
      (1024, True)
    """
    return rows[:n].clone() if rows.shape[0] > n else rows


def leading_size(x: Any) -> int:
    """The number of samples in a batch :func:`first_rows` takes from (its first tensor's first axis)."""
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, tuple) else [x]
    return next(v.shape[0] for v in values if isinstance(v, torch.Tensor) and v.ndim > 0)
