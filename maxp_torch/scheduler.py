"""The first maxP release's API for plain ``nn.Linear`` stacks, on the same machinery.

``initialize_abc_weights`` re-initialises the layers and installs their output
multipliers, ``create_param_groups`` builds one group per layer, and
:class:`MaxPScheduler` re-solves the LP during training and writes the learning rates;
:class:`ChainedMaxPScheduler` lets standard ``torch.optim.lr_scheduler`` schedulers
move the global rate while maxP keeps the per-layer ratios.

Roles: ``nn.Embedding`` layers are embeddings (or, without any, the first
``nn.Linear``); the last ``nn.Linear`` is the readout; the others are hidden. A
layer's width is its embedding size for an embedding and its input size otherwise.

Example:
  >>> import torch
  >>> from torch import nn
  >>> model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
  >>> initialize_abc_weights(model, parametrization="mup")
  >>> optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=0.1, parametrization="mup"))
  >>> scheduler = MaxPScheduler(optimizer, model, parametrization="mup", lr_prefactor=0.1)
  >>> [round(lr, 6) for lr in scheduler.get_last_lr()]
  [0.0125, 0.001563, 0.0125]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from maxp_core import MaxPError, WSDSchedule, validate
from maxp_torch.layers import CONV, TRANSPOSED, HookedLayer, kind_of
from maxp_torch.parametrization import Parametrization, optimizer_kind

_LAYERS_ATTRIBUTE = "_maxp_layers"
UNPLACED = (CONV, TRANSPOSED)  # layer kinds whose role a Linear stack's order cannot tell


def linear_layers(model: nn.Module) -> list[tuple[str, HookedLayer]]:
    """The model's embeddings and linear layers with their roles (hooks installed once)."""
    cached = getattr(model, _LAYERS_ATTRIBUTE, None)
    if cached is not None:
        return cached
    others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if kind_of(m) in UNPLACED]
    if others:
        raise MaxPError(
            f"the first release's API reads plain nn.Linear stacks (first Linear the embedding, last the "
            f"readout), but {type(model).__name__} also has {others[:4]}{' ...' if len(others) > 4 else ''}, "
            "whose roles it cannot tell; give every layer its role with "
            "Parametrization(model, rules=[Rule(pattern, role), ...])"
        )
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]
    linears = [k for k, (_, m) in enumerate(found) if isinstance(m, nn.Linear)]
    if len(found) < 2 or not linears:
        raise MaxPError(
            f"{type(model).__name__} has {len(found)} nn.Linear/nn.Embedding layers; the named "
            "parametrizations need an embedding (or first Linear) and a readout (last Linear)"
        )
    has_embedding = any(isinstance(m, nn.Embedding) for _, m in found)
    layers = []
    for k, (name, module) in enumerate(found):
        if isinstance(module, nn.Embedding) or (not has_embedding and k == linears[0]):
            layer_type = "embedding"
        elif k == linears[-1]:
            layer_type = "readout"
        else:
            layer_type = "hidden"
        in_dim, _, out_dim = kind_of(module).dims(tuple(module.weight.shape))  # type: ignore[union-attr]
        width = out_dim if layer_type == "embedding" else in_dim
        layers.append((name, HookedLayer(module, layer_type, width)))
    object.__setattr__(model, _LAYERS_ATTRIBUTE, layers)
    return layers


def _start_like_lr_scheduler(scheduler: LRScheduler, optimizer: torch.optim.Optimizer) -> None:
    """The attributes ``LRScheduler.__init__`` sets, without its initial ``step()``.

    That first step would count as a training step here (and re-solve on schedule), so the
    base constructor is not called; the groups' ``initial_lr`` is set as it would set it.
    """
    scheduler.optimizer = optimizer
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    scheduler.last_epoch = 0
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _set_exponents(layers: list[tuple[str, HookedLayer]], **per_layer: Sequence[float] | None) -> None:
    for key, values in per_layer.items():
        if values is None:
            continue
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise MaxPError(f"{key} must be a sequence of one value per layer, got {values!r}")
        if len(values) != len(layers):
            raise MaxPError(f"{key} has {len(values)} values but the model has {len(layers)} layers")
        for (name, layer), value in zip(layers, values, strict=True):
            setattr(layer, key[0], validate.exponent(value, f"{key} of layer {name!r}"))


def _engine(model: nn.Module, reinit: bool, **kwargs: Any) -> Parametrization:
    return Parametrization(model, layers=linear_layers(model), reinit=reinit, **kwargs)


def initialize_abc_weights(
    model: nn.Module,
    parametrization: str = "mup",
    al: Sequence[float] | None = None,
    bl: Sequence[float] | None = None,
    std_prefactor: float = 1.0,
    seed: int = 0,
) -> None:
    """Re-initialise every layer with ``std = std_prefactor * n^-b`` and multiply its output by ``n^-a``.

    Custom ``al``/``bl`` (one value per layer) must be stable at init for each role.
    """
    layers = linear_layers(model)
    _set_exponents(layers, al=al, bl=bl)
    _engine(model, True, parametrization=parametrization, std_prefactor=std_prefactor, seed=seed)


def create_param_groups(
    model: nn.Module,
    lr_prefactor: float,
    parametrization: str = "mup",
    cl: Sequence[float] | None = None,
    optimizer_type: str = "adam",
    alignment: str = "full",
) -> list[dict[str, Any]]:
    """One parameter group per layer at ``lr_prefactor * n^-c``, the rest at ``lr_prefactor``."""
    _set_exponents(linear_layers(model), cl=cl)
    return _engine(
        model,
        False,
        parametrization=parametrization,
        lr_prefactor=lr_prefactor,
        optimizer_type=optimizer_type,
        alignment=alignment,
    ).param_groups


class MaxPScheduler(LRScheduler):
    """Re-measure alignments, re-solve the LP and set each layer's learning rate.

    A ``torch.optim.lr_scheduler.LRScheduler``, as frameworks that check for one (Lightning,
    the Hugging Face Trainer) expect: ``step()`` after each ``optimizer.step()``,
    ``last_epoch`` counts the steps taken, ``base_lrs`` are the groups' starting rates, and
    ``get_last_lr()``, ``state_dict()`` and ``load_state_dict()`` behave as theirs do.

    Args:
      optimizer: built from :func:`create_param_groups`.
      model: the model given to :func:`initialize_abc_weights`.
      parametrization: ``"sp"``, ``"mup"``, ``"ntk"`` or ``"mfp"``.
      lr_prefactor: the base learning rate.
      alignment: the preset used until the first re-solve.
      solver_warmup_steps, solve_interval: when the LP is re-solved.
      al, bl, cl: custom exponents per layer (``cl`` pins c).
      optimizer_type: ``"adam"`` or ``"sgd"``; default: from the optimizer's class.
      feature_learning: require ``r = 0`` for the layer before the readout.
      resample_w0: draw the initial weights again instead of storing them (the model
        must come from :func:`initialize_abc_weights` with the same ``seed``).
      alignment_norm: ``"rms"`` or ``"spectral"``.
      sample_size: rows the alignment is measured on.
      wsd_*: warmup-stable-decay of the base learning rate (:class:`maxp_core.WSDSchedule`);
        the solver stops where the decay starts.
      seed: the seed given to :func:`initialize_abc_weights`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        parametrization: str = "mup",
        lr_prefactor: float = 1e-3,
        alignment: str = "full",
        solver_warmup_steps: int = 0,
        solve_interval: int = 1,
        al: Sequence[float] | None = None,
        bl: Sequence[float] | None = None,
        cl: Sequence[float] | None = None,
        optimizer_type: str | None = None,
        feature_learning: bool = False,
        resample_w0: bool = False,
        alignment_norm: str = "rms",
        sample_size: int = 32,
        c_ema: float = 0.0,
        alignment_ema: float = 0.0,
        wsd_warmup_steps: int = 0,
        wsd_stable_steps: int | None = None,
        wsd_decay_steps: int | None = None,
        wsd_decay_type: str = "none",
        wsd_min_factor: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.wsd = WSDSchedule(
            wsd_warmup_steps, wsd_stable_steps, wsd_decay_steps, wsd_decay_type, wsd_min_factor
        )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise MaxPError(f"MaxPScheduler needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if optimizer_type is None:
            optimizer_type = optimizer_kind(optimizer)
        layers = linear_layers(model)
        _set_exponents(layers, al=al, bl=bl, cl=cl)
        self.base_lr = validate.positive_number(lr_prefactor, "lr_prefactor")
        self.param = _engine(
            model,
            False,
            parametrization=parametrization,
            lr_prefactor=lr_prefactor,
            alignment=alignment,
            optimizer_type=optimizer_type,
            warmup_steps=solver_warmup_steps,
            solve_interval=solve_interval,
            feature_learning=feature_learning,
            resample_w0=resample_w0,
            norm_mode=alignment_norm,
            sample_size=sample_size,
            c_ema=c_ema,
            alignment_ema=alignment_ema,
            seed=seed,
        )
        decay_start = self.wsd.decay_start
        if decay_start is not None:
            self.param.schedule = type(self.param.schedule)(
                solver_warmup_steps, solve_interval, stop_after=max(decay_start - 1, 0)
            )
        self._apply(0)
        _start_like_lr_scheduler(self, optimizer)

    @property
    def lr_prefactor(self) -> float:
        return self.base_lr

    @lr_prefactor.setter
    def lr_prefactor(self, value: float) -> None:
        self.base_lr = validate.positive_number(value, "lr_prefactor")

    def _apply(self, step: int, factor: float = 1.0) -> None:
        """Write every group's rate: ``factor`` (an outside schedule's) x WSD x maxP's per-layer rate."""
        self.param.lr_prefactor = self.base_lr * factor * float(self.wsd(step))
        self.param._sync(self.optimizer)
        self.last_epoch = step
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        """Every param group's current rate (what ``LRScheduler.get_lr`` gives)."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def capture_initial(self, x: torch.Tensor) -> None:
        """Record the layers' inputs and weights before training."""
        self.param.capture_initial(x)

    def step(self, x: torch.Tensor | None = None) -> None:
        """After ``optimizer.step()``: re-solve on schedule and set the learning rates."""
        self.param.step(x, None)
        self._apply(self.param.step_count)

    def get_last_lr(self) -> list[float]:
        """The learning rate of each layer's group."""
        return [g["lr"] for g in self.optimizer.param_groups[: len(self.param.groups)]]

    def get_alignment(self) -> tuple[list[float], list[float], list[float]]:
        """``(alpha, omega, u)``, one entry per layer."""
        return self.param.get_alignment()

    def get_layer_names(self) -> list[str]:
        return self.param.get_layer_names()

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "param": self.param.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.base_lr = float(state["base_lr"])
        self.param.load_state_dict(state["param"])
        self._apply(self.param.step_count)


class ChainedMaxPScheduler(LRScheduler):
    """A :class:`MaxPScheduler` with standard schedulers moving its base learning rate.

    At every step each group's rate is the outside schedule's factor times maxP's rate for
    that layer. The factor is what the chained schedulers do to a learning rate: they step on
    their own view of the groups (restored before each of their steps), and the factor is
    their first group's rate over its ``initial_lr``. A warm-up that starts at
    ``LinearLR(start_factor=0.1)`` therefore starts every layer at a tenth of its maxP rate.
    """

    def __init__(self, maxp_scheduler: MaxPScheduler, schedulers: Sequence[Any]) -> None:
        if not isinstance(maxp_scheduler, MaxPScheduler):
            raise MaxPError(
                f"ChainedMaxPScheduler needs a MaxPScheduler, got {type(maxp_scheduler).__name__}"
            )
        self.maxp = maxp_scheduler
        self.schedulers = list(schedulers)
        for s in self.schedulers:
            if getattr(s, "optimizer", None) is not maxp_scheduler.optimizer:
                raise MaxPError("every chained scheduler must drive the MaxPScheduler's optimizer")
        groups = maxp_scheduler.optimizer.param_groups
        # What the chained schedulers see: their own rates, as their constructors left them.
        self._shadow = [g["lr"] for g in groups]
        self._initial = [g.get("initial_lr", g["lr"]) for g in groups]
        if not self._initial[0] > 0:
            raise MaxPError(f"the first param group's initial_lr is {self._initial[0]!r}; it must be > 0")
        maxp_scheduler._apply(maxp_scheduler.param.step_count, self.factor)
        self.optimizer = maxp_scheduler.optimizer
        self.base_lrs = maxp_scheduler.base_lrs
        self.last_epoch = maxp_scheduler.last_epoch
        self._last_lr = maxp_scheduler._last_lr

    @property
    def factor(self) -> float:
        """The chained schedulers' current multiplier of the base learning rate."""
        return float(self._shadow[0]) / float(self._initial[0])

    def capture_initial(self, x: torch.Tensor) -> None:
        self.maxp.capture_initial(x)

    def step(self, x: torch.Tensor | None = None) -> None:
        groups = self.maxp.optimizer.param_groups
        for group, lr in zip(groups, self._shadow, strict=True):
            group["lr"] = lr
        for s in self.schedulers:
            s.step()
        self._shadow = [g["lr"] for g in groups]
        self.maxp.param.step(x, None)
        self.maxp._apply(self.maxp.param.step_count, self.factor)
        self.last_epoch = self.maxp.last_epoch
        self._last_lr = self.maxp._last_lr

    def get_lr(self) -> list[float]:
        return self.maxp.get_lr()

    def get_last_lr(self) -> list[float]:
        return self.maxp.get_last_lr()

    def get_alignment(self) -> tuple[list[float], list[float], list[float]]:
        return self.maxp.get_alignment()

    def get_layer_names(self) -> list[str]:
        return self.maxp.get_layer_names()

    def state_dict(self) -> dict[str, Any]:
        return {
            "maxp": self.maxp.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "shadow": list(self._shadow),
            "initial": list(self._initial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.maxp.load_state_dict(state["maxp"])
        for s, sd in zip(self.schedulers, state["schedulers"], strict=True):
            s.load_state_dict(sd)
        self._shadow = list(state["shadow"])
        self._initial = list(state.get("initial", self._initial))
        self.maxp._apply(self.maxp.param.step_count, self.factor)
        self.last_epoch = self.maxp.last_epoch
        self._last_lr = self.maxp._last_lr
