"""``Parametrization``: abc-parametrize a PyTorch model and keep its per-layer learning rates maximal.

The class is a facade over modules that each hold one idea: :mod:`maxp_torch.discovery`
(finding and checking the layers), :mod:`maxp_torch.layer_set` (their exponents and tied
weights), :mod:`maxp_torch.initialization` (seeded draws and redraws),
:mod:`maxp_torch.rates` (rates and param groups), :mod:`maxp_torch.measurement`
(alignments), :mod:`maxp_torch.group_rates` (writing the optimizer's rates),
:mod:`maxp_torch.checkpoint` and :mod:`maxp_torch.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maxp_core import (
    CallOrderError,
    MaxPError,
    SolveSchedule,
    StabilityLP,
    alignment_preset,
    check_ema_decay,
    validate,
)
from maxp_core.base_width import BaseWidth, check_base_width
from maxp_core.biases import check_bias_rule
from maxp_core.depth import DepthFactors, DepthScaling, depth_factors, warn_if_untraced
from maxp_core.formulation import parse_optimizer
from maxp_core.lp import DEFAULT_TIE_RULE
from maxp_core.metrics import MetricsLog
from maxp_core.parametrizations import parse_parametrization
from maxp_core.tables import AlignmentTable
from maxp_torch import checkpoint, report, sharding
from maxp_torch.discovery import (
    alignment_overrides as resolve_alignment_overrides,
)
from maxp_torch.discovery import (
    check_coverage,
    check_widths,
    exponent_overrides,
    find_layers,
    layer_exponents,
    layer_graph,
    pinned_exponents,
    synthetic_graph,
    unwrap,
)
from maxp_torch.initialization import InitialWeights, initial_seed
from maxp_torch.layer_set import LayerSet
from maxp_torch.measurement import Measurement, measurement_mode
from maxp_torch.module import ParametrizedModule
from maxp_torch.optimizer_link import OptimizerLink
from maxp_torch.rates import LayerRates
from maxp_torch.resolving import Resolving, check_norm_mode, lp_solver
from maxp_torch.rules import Rule

__all__ = ["Parametrization", "measurement_mode", "synthetic_graph", "unwrap"]

Triple = tuple[float, float, float]


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

    ``base_width`` is the model width at which your learning rate was tuned (or a mapping of
    layer name to base width, :mod:`maxp_core.base_width`): rates become ``lr_prefactor *
    (n / n_base)^-c`` and multipliers ``(n / n_base)^-a``, and the model keeps its own initial
    weights, scaled by ``(n / n_base)^-(b - b_standard)`` (an attention rule's scale is the
    standard ``1/sqrt(d)`` at the base width). At the base width the model is exactly yours,
    every layer at ``lr_prefactor``; away from it the width exponents are maxP's. ``None``
    (default): powers of the width itself, weights drawn at ``std_prefactor * n^-b``.

    ``bias_rule`` sets the rate of each layer's biases and gains: ``"layer"`` (its layer's
    group, as in the published maxP) or ``"constant-input"`` (a group of their own, named
    ``"<layer>.bias"`` after the layers' groups, at the rate that keeps their contribution's
    updates width-independent, :mod:`maxp_core.biases`).

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
        base_width: BaseWidth = None,
        bias_rule: str = "layer",
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
        self.norm_mode = check_norm_mode(norm_mode)
        self.resample_w0 = validate.boolean(resample_w0, "resample_w0")
        self.use_training_activations = validate.boolean(use_training_activations, "use_training_activations")
        self.warm_start = validate.boolean(warm_start, "warm_start")
        self.measure_only = validate.boolean(measure_only, "measure_only")
        feature_learning = validate.boolean(feature_learning, "feature_learning")
        reinit = validate.boolean(reinit, "reinit")
        self._seed_given = seed is not None
        seed = initial_seed(seed, reinit)
        self.parametrization = parse_parametrization(parametrization)
        self.strict = validate.boolean(strict, "strict")

        found, self._ruled = find_layers(model, rules, layers, parametrization, self.use_training_activations)
        modules = [m for _, m in found]
        exponents = layer_exponents(modules, parametrization, ab_overrides)
        c_pins = exponent_overrides(c_overrides, "c_overrides", pair=False)
        self.base_width = check_base_width(base_width)
        if self.base_width is not None and self.resample_w0:
            raise MaxPError(
                "resample_w0=True redraws maxP's own initial weights, but with base_width the model keeps "
                "its own initialisation: use resample_w0=False (the initial weights are stored)"
            )
        self._layers = LayerSet(
            [n for n, _ in found], modules, exponents, self.optimizer_type, base_width=self.base_width
        )
        for _, scope in self._ruled.attention if self._ruled is not None else ():
            scope.ratio = self._layers.model_ratio
        preset = alignment_preset(alignment)
        self.overrides = resolve_alignment_overrides(self._layers, alignment_overrides, self._ruled)
        check_widths(self._layers)
        check_coverage(model, self._layers, self.strict)
        self.depth = depth
        self._initial = InitialWeights(self._layers, seed, self.std_prefactor)
        # Initialise before tracing: the tracer reads which factors are zero at initialization.
        self._initial.apply(reinit)
        self.graph = layer_graph(
            model,
            found,
            self._layers,
            sample_input,
            preset,
            self.overrides,
            self.parametrization,
            self._ruled,
        )
        if depth is not None:
            warn_if_untraced(depth, sample_input is not None, "pass sample_input to trace it")
            self._layers.depth_factors = depth_factors(depth, self.graph, self.optimizer_type)
            self._initial.apply(reinit)  # the same draws, at the depth rule's scales
        self._resolving = Resolving(
            self,
            self.graph,
            pins=pinned_exponents(self._layers, c_pins),
            feature_learning=feature_learning,
            solver=lp_solver(solver),
            tie_rule=tie_rule,
            preset=preset,
        )
        self.alignment = np.array([[n.alpha, n.omega, n.u] for n in self.graph.nodes])
        self.c = self._resolving.preset_exponents()
        self._resolving.warn_on_scores_slowdown()
        self._rates = LayerRates(self._layers, self, check_bias_rule(bias_rule))
        self.param_groups = self._rates.param_groups(model)
        self._rates.warn_on_tied_disagreement(self.std_prefactor)
        self.step_count = 0
        self.solves = 0
        self.failures = 0
        self.missing = 0
        self.solve_seconds = 0.0
        self._measurement = Measurement(
            model,
            self._layers,
            self._initial,
            sample_size=self.sample_size,
            norm_mode=self.norm_mode,
            resample_w0=self.resample_w0,
            use_training_activations=self.use_training_activations,
            overrides=self.overrides,
        )
        self._publish_alignments()
        #: The scheduler that steps this parametrization, if one does (then only it may).
        self._driver: Any = None
        self._link = OptimizerLink(self)

    # --- the layers (see LayerSet) ------------------------------------------------------

    @property
    def lp(self) -> StabilityLP:
        """The LP, built once and re-solved at each scheduled step."""
        return self._resolving.lp

    @property
    def names(self) -> list[str]:
        """Every maxP layer's name, weightless ones (products, scores) included."""
        return self._layers.names

    @property
    def modules(self) -> list[ParametrizedModule]:
        """Every maxP layer (a ``ParametrizedModule`` or a hooked layer), as :attr:`names` lists them."""
        return self._layers.modules

    @property
    def exponents(self) -> list[tuple[float, float]]:
        """Each layer's ``(a, b)``."""
        return self._layers.exponents

    @property
    def weighted(self) -> list[int]:
        """Positions in :attr:`names` of the layers that hold a weight."""
        return self._layers.weighted

    @property
    def groups(self) -> list[list[int]]:
        """Weight groups: positions in :attr:`weighted` sharing one parameter (tied weights)."""
        return self._layers.groups

    @property
    def depth_factors(self) -> DepthFactors | None:
        """The depth rule's per-layer factors (``None`` without ``depth=``)."""
        return self._layers.depth_factors

    @property
    def _row(self) -> dict[int, int]:
        return self._layers.row

    @property
    def seed(self) -> int:
        """The seed every layer's initial draw derives from."""
        return self._initial.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._initial.seed = value

    @property
    def _pms(self) -> list[tuple[str, ParametrizedModule]]:
        """The published maxP's ``(name, layer)`` list, in model order (read-only)."""
        return list(zip(self.names, self.modules, strict=True))

    @property
    def _sample(self) -> Any:
        return self._measurement.sample

    @property
    def _w0(self) -> dict[int, torch.Tensor]:
        return self._measurement.w0

    def _group_c(self, g: int) -> float:
        return self._rates.group_c(g)

    def _lr(self, g: int) -> float:
        return self._rates.group_lr(g)

    def _init_std(self, g: int) -> float:
        return self._initial.std(g)

    def _group_of(self, k: int) -> int:
        return self._layers.group_of(k)

    def _resolve_chain(self) -> dict[str, float]:
        """The published verification's hook: ``c`` per weighted layer at the alignments set on
        the layers' ``alpha``, ``omega``, ``u`` (by hand or by the last re-solve); the rates and
        groups are left alone."""
        rows = self.alignment.copy()
        for k, module in enumerate(self.modules):
            rows[self._row[k]] = (module.alpha, module.omega, module.u)
        return dict(zip(self._layers.weighted_names(), self._resolving.solve(rows).tolist(), strict=True))

    _resolve_dag = _resolve_chain

    def _initial_weight(self, k: int) -> torch.Tensor:
        return self._measurement.initial_weight(k)

    def _measured(self) -> list[int]:
        return self._measurement.measured()

    def _inputs(self, model: nn.Module, x: Any) -> dict[int, torch.Tensor]:
        return self._measurement.inputs(model, x)

    def _measure(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        return self._measurement.measure(x, self.alignment)

    # --- public -----------------------------------------------------------------------

    def get_layer_names(self) -> list[str]:
        """Names of the parameter groups maxP sets (one per weight; a tied weight's first layer)."""
        return [self.names[self.weighted[members[0]]] for members in self.groups]

    def get_last_lr(self) -> list[float]:
        """maxP's current learning rate of each group of :meth:`get_layer_names` (before any
        chained schedule's factor)."""
        return self._rates.all_groups()

    def get_alignment(self) -> tuple[list[float], list[float], list[float]]:
        """``(alpha, omega, u)`` lists, one entry per group of :meth:`get_layer_names` (for a tied
        weight, the layer whose rate it takes)."""
        binding = [self._rates.binding(g) for g in range(len(self.groups))]
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

        Examples:
          >>> param = Parametrization(nn.Sequential(
          ...     ParametrizedModule(nn.Linear(4, 16), width_dim=16, layer_type="embedding"),
          ...     ParametrizedModule(nn.Linear(16, 2), width_dim=16, layer_type="readout")), lr_prefactor=1.0)
          >>> param.metrics()["maxp/lr/1"], param.metrics()["maxp/solves"]
          (0.25, 0.0)
        """
        return report.metrics_of(self)

    def metrics_log(self, path: str | Path) -> MetricsLog:
        """A :class:`maxp_core.metrics.MetricsLog` at ``path`` naming this model's layers.

        Examples:
          >>> import tempfile, os
          >>> param = Parametrization(nn.Sequential(
          ...     ParametrizedModule(nn.Linear(4, 16), width_dim=16, layer_type="embedding"),
          ...     ParametrizedModule(nn.Linear(16, 2), width_dim=16, layer_type="readout")))
          >>> with param.metrics_log(os.path.join(tempfile.mkdtemp(), "run.jsonl")) as log:
          ...     written = log.write(param.metrics(), loss=2.3)
          >>> written["maxp/c/1"], written["loss"]
          (0.5, 2.3)
        """
        return MetricsLog(path, self._layers.layer_types())

    def describe(self) -> str:
        """The per-layer table: role, kind, width, a, b, c, alignments and learning rate.

        ``c`` and the alignments are the latest solution (the preset's before the first
        re-solve); a bare parameter shows its folded exponents.
        """
        return report.layer_table(self)

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

    def capture_initial(self, x: Any) -> None:
        """Record the inputs and weights of the measured layers before training.

        maxP's forward pass runs in eval mode and leaves the global random state untouched
        (:func:`measurement_mode`). Call it once, before the first step: a resumed run gets
        what it needs from :meth:`load_state_dict`.
        """
        if self.step_count > 0 or self._measurement.sample is not None:
            raise MaxPError(
                f"capture_initial after {'a loaded state' if self.step_count else 'an earlier capture'}: "
                "the initial state is already recorded, and capturing again would measure against the "
                "current weights instead of the initial ones; a resumed run only needs load_state_dict"
            )
        sharding.check_live(unwrap(self.model), self.param_groups, "capture_initial")
        self._measurement.capture(x)

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
        self._link.write(optimizer)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, *schedulers: Any) -> Any:
        """This parametrization as a ``torch.optim.lr_scheduler.LRScheduler`` on ``optimizer``.

        Any torch schedulers built on the same optimizer (``LinearLR``, ``CosineAnnealingLR``,
        ``LambdaLR``, ``SequentialLR``, ``OneCycleLR``, Hugging Face's
        ``get_cosine_schedule_with_warmup``, ...) are stepped by it, and every layer's rate is
        their factor times its maxP rate: see :class:`~maxp_torch.ChainedMaxPScheduler`.
        Call the returned scheduler's ``step()`` after each ``optimizer.step()`` in place of
        :meth:`step`.

        Examples:
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

    def _advance(self, x: torch.Tensor | None) -> None:
        """Count a training step and re-solve if the schedule says so."""
        self.step_count += 1
        if self.schedule.should_solve(self.step_count):
            if self._sample is None:
                raise CallOrderError("step() before capture_initial(x): capture the initial state first")
            self._resolving.resolve(x)
            self._publish_alignments()

    # What a ChainedMaxPScheduler reads and calls (a MaxPScheduler has the same four).
    def _maxp_groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        return self._link.managed_groups(optimizer)

    def _maxp_rates(self) -> list[float]:
        return self._link.rates()

    def _maxp_exponents(self) -> list[float | None]:
        return self._link.exponents()

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._link.check_optimizer(optimizer)

    def _publish_alignments(self) -> None:
        """Every layer's ``alpha``, ``omega``, ``u`` attributes: its latest (or assumed) alignment."""
        row = self._row
        rows = self.alignment[[row[k] for k in range(len(self.modules))]].tolist()
        for module, (alpha, omega, u) in zip(self.modules, rows, strict=True):
            # Plain attributes: written past nn.Module.__setattr__, which costs more than the rest.
            module.__dict__.update(alpha=alpha, omega=omega, u=u)

    # --- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly.

        ``solves``, ``failures`` and ``missing`` count successful re-solves, re-solves that
        kept the last rates (non-finite numbers or no LP answer), and measurements that
        carried no information. With ``use_training_activations`` the initial model's
        weights are included (``initial_model``).
        """
        return checkpoint.state_of(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the run then continues without :meth:`capture_initial`.

        Raises:
          MaxPError: ``state`` is not a :meth:`state_dict` of a parametrization of this
            model's layers (a key is missing, a layer is unknown, ``c`` does not hold one
            entry per weighted layer or ``alignment`` one row per graph node), or a number in
            it is not what a run can hold (the message names the field, the layer and the value;
            nothing is restored then).
        """
        checkpoint.restore(self, state)
        self._publish_alignments()
