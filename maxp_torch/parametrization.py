"""``Parametrization``: abc-parametrize a PyTorch model and keep its per-layer learning rates maximal."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maxp_core import (
    MaxPError,
    OpGraph,
    Role,
    SolveSchedule,
    StabilityLP,
    alignment_of_layers,
    alignment_preset,
    check_ema_decay,
    default_ab,
    ema_update,
    groups_of_equal_shape,
    sanitize,
)
from maxp_core.alignment import MODES
from maxp_core.graph import graph_by_roles
from maxp_torch.module import ParametrizedModule

Triple = tuple[float, float, float]


def synthetic_graph(
    names: list[str], modules: list[ParametrizedModule], exponents: list[tuple[float, float]]
) -> OpGraph:
    """The LP graph of modules by their order and types (:func:`maxp_core.graph.graph_by_roles`)."""
    return graph_by_roles(
        names, [m.role for m in modules], exponents, [m.weight is not None for m in modules]
    )


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as ``(out, fan_in)``: every axis after the first is contracted."""
    return weight.reshape(weight.shape[0], -1)


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


def _match_override(name: str, module: ParametrizedModule, table: Mapping[str, Any]) -> Any:
    """An override by exact name, then by name suffix, then by layer type."""
    if name in table:
        return table[name]
    for key, value in table.items():
        if name.endswith("." + key):
            return value
    return table.get(module.layer_type)


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
    Initial weights are drawn from one seeded generator per layer (``seed``), so
    ``resample_w0`` redraws them exactly instead of storing them. ``layers`` replaces
    the discovery of ``ParametrizedModule``s (``maxp_torch.scheduler`` passes plain
    ``nn.Linear`` layers this way) and ``reinit=False`` keeps the current weights.

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
        optimizer_type: str = "adam",
        alignment: str = "full",
        lr_prefactor: float = 1e-3,
        std_prefactor: float = 1.0,
        ab_overrides: Mapping[str, tuple[float, float]] | None = None,
        c_overrides: Mapping[str, float] | None = None,
        alignment_overrides: Mapping[str, Triple] | None = None,
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
        seed: int = 0,
        *,
        layers: list[tuple[str, Any]] | None = None,
        reinit: bool = True,
    ) -> None:
        self.model = model
        self.optimizer_type = optimizer_type
        self.lr_prefactor = float(lr_prefactor)
        self.std_prefactor = float(std_prefactor)
        self.schedule = SolveSchedule(warmup_steps, solve_interval)
        self.sample_size = int(sample_size)
        self.c_ema = check_ema_decay("c_ema", c_ema)
        self.alignment_ema = check_ema_decay("alignment_ema", alignment_ema)
        if norm_mode not in MODES:
            raise MaxPError(f"unknown norm_mode {norm_mode!r}; expected one of {list(MODES)}")
        self.norm_mode = norm_mode
        self.resample_w0 = bool(resample_w0)
        self.use_training_activations = bool(use_training_activations)
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        if solver is not None and not isinstance(solver, str):
            raise MaxPError(
                f"solver must be 'highs' or 'clarabel', got {type(solver).__name__}: this backend "
                "solves an LP, not the PuLP MILP, so PuLP solver objects do not apply"
            )

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
        ab_overrides = dict(ab_overrides or {})
        c_overrides = dict(c_overrides or {})
        for key in (*ab_overrides, *c_overrides):
            if key not in ("embedding", "hidden", "readout"):
                raise MaxPError(f"ab_overrides and c_overrides are keyed by layer type; unknown key {key!r}")
        exponents = []
        for module in self.modules:
            a0, b0 = ab_overrides.get(module.layer_type, default_ab(parametrization, module.layer_type))
            exponents.append((a0 if module.a is None else module.a, b0 if module.b is None else module.b))
        self.exponents = exponents
        preset = alignment_preset(alignment)
        self.overrides: dict[int, Triple] = {}
        for k, (name, module) in enumerate(found):
            value = _match_override(name, module, dict(alignment_overrides or {}))
            if value is not None:
                self.overrides[k] = tuple(float(v) for v in value)  # type: ignore[assignment]
        if sample_input is not None:
            from maxp_torch.trace import trace_graph

            graph = trace_graph(unwrap(model), found, exponents, sample_input)
        else:
            graph = synthetic_graph(self.names, self.modules, exponents)
        numbers = {self.names[k]: self.overrides.get(k, preset) for k in range(len(self.modules))}
        self.graph = graph.with_numbers(
            alpha={n: t[0] for n, t in numbers.items()},
            omega={n: t[1] for n, t in numbers.items()},
            u={n: t[2] for n, t in numbers.items()},
        )
        self._row = {k: self.graph.index(name) for k, name in enumerate(self.names)}
        pins = {}
        for name, module in zip(self.names, self.modules, strict=True):
            pin = module.c if module.c is not None else c_overrides.get(module.layer_type)
            if pin is not None and module.weight is not None:
                pins[name] = float(pin)
        self.lp = StabilityLP(
            self.graph,
            optimizer_type,
            feature_learning=feature_learning,
            c_fixed=pins,
            solver=solver or "highs",
        )
        self.weighted = [k for k, m in enumerate(self.modules) if m.weight is not None]
        self.alignment = np.array([[n.alpha, n.omega, n.u] for n in self.graph.nodes])
        solution = self.lp.solve()
        self.c = np.array([solution.c[self.names[k]] for k in self.weighted])
        self._reinit_and_scale(reinit)
        self.param_groups = self._build_param_groups()
        self.step_count = 0
        self.solves = 0
        self.failures = 0
        self._warned = False
        self._z0: dict[int, torch.Tensor] = {}
        self._w0: dict[int, torch.Tensor] = {}
        self._sample: torch.Tensor | None = None
        self._initial_model: nn.Module | None = None
        self._recorded: dict[int, torch.Tensor] = {}

    # --- setup ------------------------------------------------------------------------

    def _width(self, k: int) -> int:
        return self.modules[k].width_dim

    def _init_std(self, k: int) -> float:
        return self.std_prefactor * self._width(k) ** -self.exponents[k][1]

    def _generator(self, k: int, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + k)
        return gen

    def _draw_initial_weight(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """The layer's initial weight, drawn again from its own seeded generator."""
        noise = torch.randn(
            like.shape, generator=self._generator(k, like.device), device=like.device, dtype=like.dtype
        )
        return noise * self._init_std(k)

    @torch.no_grad()
    def _reinit_and_scale(self, reinit: bool) -> None:
        for k, module in enumerate(self.modules):
            module.scale = float(self._width(k) ** -self.exponents[k][0])
            weight = module.weight
            if weight is None or not reinit:
                continue
            weight.copy_(self._draw_initial_weight(k, weight))
            bias = getattr(module.inner, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()

    def _build_param_groups(self) -> list[dict[str, Any]]:
        groups = []
        taken: set[int] = set()
        for j, k in enumerate(self.weighted):
            params = [p for p in self.modules[k].parameters() if id(p) not in taken]
            taken.update(id(p) for p in params)
            groups.append({"params": params, "lr": self._lr(j), "name": self.names[k]})
        rest = [p for p in self.model.parameters() if id(p) not in taken]
        if rest:
            groups.append({"params": rest, "lr": self.lr_prefactor, "name": "other"})
        return groups

    def _lr(self, j: int) -> float:
        return self.lr_prefactor * float(self._width(self.weighted[j]) ** -self.c[j])

    # --- public -----------------------------------------------------------------------

    def get_layer_names(self) -> list[str]:
        """Names of the parametrized layers with weights, in param-group order."""
        return [self.names[k] for k in self.weighted]

    def get_last_lr(self) -> list[float]:
        """Current learning rate of each parametrized layer."""
        return [self._lr(j) for j in range(len(self.weighted))]

    def get_alignment(self) -> tuple[list[float], list[float], list[float]]:
        """``(alpha, omega, u)`` lists, one entry per layer of :meth:`get_layer_names`."""
        rows = self.alignment[[self._row[k] for k in self.weighted]]
        return rows[:, 0].tolist(), rows[:, 1].tolist(), rows[:, 2].tolist()

    def _measured(self) -> list[int]:
        return [
            k for k in self.weighted if self.modules[k].role is not Role.EMBEDDING and k not in self.overrides
        ]

    def _record(self, keep: dict[int, torch.Tensor]) -> None:
        index = {id(m): k for k, m in enumerate(self.modules)}

        def recorder(module: ParametrizedModule, args: tuple[Any, ...]) -> None:
            k = index[id(module)]
            if args and isinstance(args[0], torch.Tensor):
                x = args[0].detach()
                keep[k] = x.reshape(-1, x.shape[-1])[: self.sample_size]

        for module in self.modules:
            module._recorder = recorder

    def _stop_recording(self) -> None:
        for module in self.modules:
            module._recorder = None

    def _inputs(self, model: nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Each module's input on the first rows of ``x``."""
        keep: dict[int, torch.Tensor] = {}
        self._record(keep)
        try:
            with torch.no_grad():
                unwrap(model)(x[: self.sample_size])
        finally:
            self._stop_recording()
        return keep

    def capture_initial(self, x: torch.Tensor) -> None:
        """Record the inputs and weights of the measured layers before training."""
        self._sample = x[: self.sample_size].detach().clone()
        if self.use_training_activations:
            self._initial_model = copy.deepcopy(unwrap(self.model))
            self._record(self._recorded)
            return
        inputs = self._inputs(self.model, self._sample)
        for k in self._measured():
            if k not in inputs:
                raise MaxPError(f"layer {self.names[k]!r} was not called by the model on the captured input")
            self._z0[k] = inputs[k].clone()
            if not self.resample_w0:
                weight = self.modules[k].weight
                assert weight is not None
                self._w0[k] = weight.detach().clone()

    def step(self, x: torch.Tensor | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After ``optimizer.step()``: re-solve on schedule and write the learning rates.

        Args:
          x: the training batch (used with ``use_training_activations``; otherwise the
            alignments are measured on the sample given to :meth:`capture_initial`).
          optimizer: the optimizer built from :attr:`param_groups`; its learning rates
            are set from ``lr_prefactor * width^-c`` on every call.
        """
        self.step_count += 1
        if self.schedule.should_solve(self.step_count):
            if self._sample is None:
                raise MaxPError("step() before capture_initial(x): capture the initial state first")
            self._resolve(x)
        if optimizer is not None:
            self._sync(optimizer)

    def _sync(self, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        expected = [g["name"] for g in self.param_groups]
        names = [g.get("name") for g in groups]
        if names != expected:
            raise MaxPError(
                f"the optimizer's param groups {names} do not match the parametrization's {expected}; "
                "build the optimizer from param.param_groups"
            )
        for j, group in enumerate(groups[: len(self.weighted)]):
            group["lr"] = self._lr(j)
        if len(groups) > len(self.weighted):
            groups[-1]["lr"] = self.lr_prefactor

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
        rows = x[: self.sample_size]
        initial_modules = [m for m in self._initial_model.modules() if isinstance(m, ParametrizedModule)]
        keep: dict[int, torch.Tensor] = {}
        index = {id(m): k for k, m in enumerate(initial_modules)}

        def recorder(module: ParametrizedModule, args: tuple[Any, ...]) -> None:
            keep[index[id(module)]] = args[0].detach().reshape(-1, args[0].shape[-1])[: self.sample_size]

        for m in initial_modules:
            m._recorder = recorder
        try:
            with torch.no_grad():
                self._initial_model(rows)
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
            return self._draw_initial_weight(k, weight.detach())
        return self._w0[k]

    def _weight_matrix(self, k: int) -> torch.Tensor:
        """Layer ``k``'s weight as ``(out, fan_in)``, detached."""
        weight = self.modules[k].weight
        assert weight is not None
        return _as_matrix(weight.detach())

    @torch.no_grad()
    def _measure(self, x: torch.Tensor | None) -> np.ndarray:
        now, initial = self._current_and_initial_inputs(x)
        values = self.alignment.copy()
        measured = self._measured()
        if not measured:
            return values
        for k in measured:
            w = self._weight_matrix(k)
            if now[k].shape[-1] != w.shape[1]:
                raise MaxPError(
                    f"layer {self.names[k]!r}: its input rows have {now[k].shape[-1]} features but its "
                    f"weight contracts {w.shape[1]}; dynamic alignment measures Linear-like layers "
                    "(inputs (..., fan_in)); pin this layer with alignment_overrides"
                )

        def shape_of(k: int) -> tuple[Any, ...]:
            w = self._weight_matrix(k)
            return (tuple(now[k].shape), tuple(w.shape), self._width(k), w.dtype, w.device)

        order: list[int] = []
        pieces: list[torch.Tensor] = []
        for layers in groups_of_equal_shape(measured, shape_of):
            al = alignment_of_layers(
                [
                    (initial[k], now[k], _as_matrix(self._initial_weight(k)), self._weight_matrix(k))
                    for k in layers
                ],
                self.norm_mode,
                self._width(layers[0]),
                xp=torch,
            )
            order += layers
            pieces.append(torch.stack(list(al), dim=1))
        # Reduced on the device the layers live on (NCCL groups take no CPU tensors) and copied to
        # the host once, instead of one float() per value.
        device = pieces[0].device
        stacked = torch.cat([piece.to(device, torch.float64) for piece in pieces])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)
            stacked /= dist.get_world_size()
        values[[self._row[k] for k in order]] = stacked.cpu().numpy()
        return values

    def _resolve(self, x: torch.Tensor | None) -> None:
        measured = sanitize(self._measure(x), self.alignment)
        smoothed = ema_update(self.alignment, measured, self.alignment_ema)
        for k, triple in self.overrides.items():
            smoothed[self._row[k]] = triple
        try:
            solution = self.lp.solve(alpha=smoothed[:, 0], omega=smoothed[:, 1], u=smoothed[:, 2])
        except MaxPError as err:
            self.failures += 1
            if not self._warned:
                warnings.warn(f"maxP re-solve failed, keeping the last learning rates: {err}", stacklevel=3)
                self._warned = True
            return
        c_new = np.array([solution.c[self.names[k]] for k in self.weighted])
        self.c = ema_update(self.c, c_new, self.c_ema)
        self.alignment = smoothed
        self.solves += 1

    # --- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly."""
        return {
            "step_count": self.step_count,
            "lr_prefactor": self.lr_prefactor,
            "c": self.c.tolist(),
            "alignment": self.alignment.tolist(),
            "solves": self.solves,
            "failures": self.failures,
            "z0": {self.names[k]: v for k, v in self._z0.items()},
            "w0": {self.names[k]: v for k, v in self._w0.items()},
            "sample": self._sample,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        index = {name: k for k, name in enumerate(self.names)}
        self.step_count = int(state["step_count"])
        self.lr_prefactor = float(state["lr_prefactor"])
        self.c = np.array(state["c"], dtype=np.float64)
        self.alignment = np.array(state["alignment"], dtype=np.float64)
        self.solves = int(state["solves"])
        self.failures = int(state["failures"])
        self._z0 = {index[n]: v for n, v in state["z0"].items()}
        self._w0 = {index[n]: v for n, v in state["w0"].items()}
        self._sample = state["sample"]
