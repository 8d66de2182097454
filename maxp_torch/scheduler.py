"""The first maxP release's API for plain ``nn.Linear`` stacks, on the same machinery.

``initialize_abc_weights`` re-initialises the layers and wraps those with a multiplier in
:class:`ScaledLinear`, ``create_param_groups`` builds one group per layer weight (biases and
everything else in an ``"_other"`` group), and :class:`MaxPScheduler` re-solves the LP
during training and writes the learning rates; :class:`ChainedMaxPScheduler` lets standard
``torch.optim.lr_scheduler`` schedulers move the global rate while maxP keeps the per-layer
ratios. Signatures, defaults, group keys and errors follow the published maxP.

Roles: ``nn.Embedding`` layers are embeddings (or, without any, the first ``nn.Linear``);
the last ``nn.Linear`` is the readout; the others are hidden. A layer's width ``n`` (the
``fan_in`` key of its group) is its embedding size for an embedding and its input size
otherwise (the published first release reads the input size of the first layer too, which
does not grow with the model).

Examples:
  >>> import torch
  >>> from torch import nn
  >>> model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
  >>> model = initialize_abc_weights(model, parametrization="mup")
  >>> model[0]
  ScaledLinear(
    in_features=16, out_features=64, bias=True, scale=8
    (linear): Linear(in_features=16, out_features=64, bias=True)
  )
  >>> groups = create_param_groups(model, lr_prefactor=0.1, parametrization="mup")
  >>> [(g["layer_name"], g.get("c")) for g in groups]
  [('0', 0.5), ('2', 1.0), ('4', 0.5), ('_other', None)]
  >>> optimizer = torch.optim.AdamW(groups)
  >>> scheduler = MaxPScheduler(optimizer, model, 0.1, parametrization="mup")
  >>> [round(lr, 6) for lr in scheduler.get_last_lr()]
  [0.0125, 0.001563, 0.0125]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from maxp_core import MaxPError, WSDSchedule, default_ab, validate, warn_user
from maxp_core.base_width import BaseWidth, width_ratios
from maxp_core.formulation import parse_optimizer
from maxp_core.graph import alignment_preset
from maxp_core.parametrizations import parse_parametrization
from maxp_torch.group_rates import check_sole_writer, write_rates
from maxp_torch.initialization import INITIAL_DRAWS
from maxp_torch.layers import CONV, TRANSPOSED, HookedLayer, kind_of
from maxp_torch.module import ScaledLinear
from maxp_torch.optimizers import optimizer_kind
from maxp_torch.parametrization import Parametrization, unwrap

_LAYERS_ATTRIBUTE = "_maxp_layers"
_OWN_MULTIPLIERS = "_maxp_own_multipliers"
#: The seed :func:`initialize_abc_weights` drew the model's weights with.
_INIT_SEED = "_maxp_init_seed"
UNPLACED = (CONV, TRANSPOSED)  # layer kinds whose role a Linear stack's order cannot tell


def get_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers the first release's API manages, in the model's registration order.

    ``nn.Linear`` and ``nn.Embedding`` modules; a :class:`ScaledLinear` counts once, under
    its own name, with the layer it wraps. Unlike the published first release, layers whose
    name contains ``attn`` are not skipped (they would silently train at the base rate), and
    embeddings are layers.

    Examples:
      >>> model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), ScaledLinear(nn.Linear(8, 2), 0.5))
      >>> [(name, type(layer).__name__) for name, layer in get_linear_layers(model)]
      [('0', 'Linear'), ('2', 'Linear')]
    """
    if not isinstance(model, nn.Module):
        raise MaxPError(f"get_linear_layers needs an nn.Module, got {type(model).__name__}")
    others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if kind_of(m) in UNPLACED]
    if others:
        raise MaxPError(
            f"the first release's API reads plain nn.Linear stacks (first Linear the embedding, last the "
            f"readout), but {type(model).__name__} also has {others[:4]}{' ...' if len(others) > 4 else ''}, "
            "whose roles it cannot tell; give every layer its role with "
            "Parametrization(model, rules=[Rule(pattern, role), ...])"
        )
    found: list[tuple[str, nn.Module]] = []
    wrapped: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, ScaledLinear):
            found.append((name, module.linear))
            wrapped.add(id(module.linear))
        elif isinstance(module, nn.Linear | nn.Embedding) and id(module) not in wrapped:
            found.append((name, module))
    return found


def _roles(found: list[tuple[str, nn.Module]], model: nn.Module) -> list[str]:
    linears = [k for k, (_, m) in enumerate(found) if isinstance(m, nn.Linear)]
    if len(found) < 2 or not linears:
        raise MaxPError(
            f"{type(model).__name__} has {len(found)} nn.Linear/nn.Embedding layers; the named "
            "parametrizations need an embedding (or first Linear) and a readout (last Linear)"
        )
    has_embedding = any(isinstance(m, nn.Embedding) for _, m in found)
    roles = []
    for k, (_, module) in enumerate(found):
        if isinstance(module, nn.Embedding) or (not has_embedding and k == linears[0]):
            roles.append("embedding")
        elif k == linears[-1]:
            roles.append("readout")
        else:
            roles.append("hidden")
    return roles


def linear_layers(model: nn.Module) -> list[tuple[str, HookedLayer]]:
    """The model's layers with their roles, as maxP reads them (hooks installed once).

    The hooks record inputs and trace; they never multiply: the first release's multipliers
    are :class:`ScaledLinear` wrappers (or the model's own, ``apply_multipliers=False``).
    """
    cached = getattr(model, _LAYERS_ATTRIBUTE, None)
    if cached is not None:
        return cached
    found = get_linear_layers(model)
    layers = []
    for (name, module), role in zip(found, _roles(found, model), strict=True):
        in_dim, _, out_dim = kind_of(module).dims(tuple(cast(torch.Tensor, module.weight).shape))  # type: ignore[union-attr]
        width = out_dim if role == "embedding" else in_dim
        layers.append((name, HookedLayer(module, role, width, multiplies=False)))
    object.__setattr__(model, _LAYERS_ATTRIBUTE, layers)
    return layers


def _forget_layers(model: nn.Module) -> None:
    for _, layer in getattr(model, _LAYERS_ATTRIBUTE, None) or []:
        layer.remove()
    if hasattr(model, _LAYERS_ATTRIBUTE):
        object.__delattr__(model, _LAYERS_ATTRIBUTE)


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


def _per_layer(values: Any, key: str, layers: list[tuple[str, HookedLayer]]) -> list[float]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise MaxPError(f"{key} must be a sequence of one value per layer, got {values!r}")
    if len(values) != len(layers):
        raise MaxPError(
            f"Length of {key} ({len(values)}) must match number of Linear layers ({len(layers)}): "
            f"{[name for name, _ in layers]}"
        )
    check = validate.init_exponent if key == "bl" else validate.exponent
    return [check(v, f"{key} of layer {name!r}") for (name, _), v in zip(layers, values, strict=True)]


def _exponents(
    layers: list[tuple[str, HookedLayer]],
    parametrization: str | None,
    custom: Mapping[str, Sequence[float] | None],
) -> dict[str, list[float]]:
    """Per-layer exponents from a named parametrization or from custom lists, not both (as published)."""
    given = {key: values for key, values in custom.items() if values is not None}
    keys = "/".join(f"'{k}'" for k in custom)
    if parametrization is not None and given:
        raise MaxPError(
            f"Cannot specify both 'parametrization' and explicit {keys} values: use either a named "
            "parametrization or custom values, not both"
        )
    if parametrization is None:
        missing = [k for k in custom if k not in given]
        if missing:
            raise MaxPError(
                f"Must provide either 'parametrization' or {keys} (missing {missing}); for the common "
                "parametrizations use parametrization='mup', 'sp', 'ntk' or 'mfp'"
            )
        return {key: _per_layer(values, key, layers) for key, values in given.items()}
    name = parse_parametrization(parametrization)
    pairs = [default_ab(name, layer.layer_type) for _, layer in layers]
    return {"al": [a for a, _ in pairs], "bl": [b for _, b in pairs]}


def _set_layer_exponents(layers: list[tuple[str, HookedLayer]], **per_layer: list[float] | None) -> None:
    for key in ("al", "bl", "cl"):
        values = per_layer.get(key)
        for k, (_, layer) in enumerate(layers):
            setattr(layer, key[0], None if values is None else values[k])


def initialize_abc_weights(
    model: nn.Module,
    al: Sequence[float] | None = None,
    bl: Sequence[float] | None = None,
    parametrization: str | None = None,
    optimizer: str = "adam",
    alignment: str = "full",
    std_prefactor: float = 1.0,
    apply_multipliers: bool = True,
    *,
    seed: int | None = None,
    base_width: BaseWidth = None,
) -> nn.Module:
    """Re-initialise every layer with ``std = std_prefactor * n^-b`` and give it the multiplier ``n^-a``.

    Give a named ``parametrization`` or both ``al`` and ``bl`` (one value per layer of
    :func:`get_linear_layers`). Layers with ``a != 0`` are replaced in their parent by a
    :class:`ScaledLinear` with ``scale = n^-a`` (a layer already wrapped gets its scale
    updated, not a second wrapper); ``apply_multipliers=False`` only re-initialises, for a
    model that applies its own multipliers. Biases start at zero.

    Unlike the published first release, the weights are drawn from one seeded generator
    per layer (``seed``; ``None`` draws it from torch's global generator, so
    ``torch.manual_seed`` decides the weights, and keeps it on the model), so
    :class:`MaxPScheduler` can redraw them exactly
    (``resample_w0=True``), and ``(a, b)`` unstable at initialization for a layer's role is
    refused here, naming the layer, instead of at the first re-solve.

    Args:
      model: the network; modified in place and returned.
      al, bl: custom exponents, one per layer.
      parametrization: ``"sp"``, ``"mup"``, ``"ntk"`` or ``"mfp"``.
      optimizer, alignment: the LP the named parametrization's ``c`` comes from (checked here).
      std_prefactor: the constant in front of ``n^-b``.
      apply_multipliers: wrap layers with ``a != 0`` in :class:`ScaledLinear`.
      seed: seeds the per-layer generators (default: drawn from torch's global generator).
      base_width: the model width at which your learning rate was tuned
        (:mod:`maxp_core.base_width`): the layers keep their own initial weights, scaled by
        ``(n / n_base)^-(b - b_standard)``, and multipliers are ``(n / n_base)^-a``; at the
        base width the model is unchanged. Give the same to :func:`create_param_groups` and
        :class:`MaxPScheduler`.

    Returns:
      ``model``.
    """
    apply_multipliers = validate.boolean(apply_multipliers, "apply_multipliers")
    wrapped = [n for n, m in model.named_modules() if isinstance(m, ScaledLinear) and m.scale != 1.0]
    if wrapped and not apply_multipliers:
        raise MaxPError(
            f"apply_multipliers=False, but {wrapped} are ScaledLinear wrappers from an earlier call, "
            "whose multipliers would stay; call with apply_multipliers=True to update them"
        )
    layers = linear_layers(model)
    exponents = _exponents(layers, parametrization, {"al": al, "bl": bl})
    _set_layer_exponents(layers, **exponents)
    drawn = Parametrization(
        model,
        layers=layers,
        reinit=True,
        parametrization=parametrization or "mup",
        optimizer_type=parse_optimizer(optimizer),
        alignment=alignment,
        std_prefactor=std_prefactor,
        seed=seed,
        base_width=base_width,
    )
    object.__setattr__(model, _INIT_SEED, drawn.seed)  # what MaxPScheduler(resample_w0=True) redraws
    object.__setattr__(model, INITIAL_DRAWS, drawn._initial)  # and Tracer(resample_w0=True)
    if not apply_multipliers:
        object.__setattr__(model, _OWN_MULTIPLIERS, True)
        return model
    _wrap_multiplied(model, layers, exponents["al"], base_width)
    return model


def _ratios(layers: list[tuple[str, HookedLayer]], base_width: BaseWidth) -> list[float]:
    """Each layer's width, or its ratio to the base width (:mod:`maxp_core.base_width`)."""
    ratios = width_ratios({name: layer.width_dim for name, layer in layers}, base_width)
    return [ratios[name] for name, _ in layers]


def _wrap_multiplied(
    model: nn.Module, layers: list[tuple[str, HookedLayer]], al: list[float], base_width: BaseWidth
) -> None:
    """Put every layer with ``a != 0`` in a :class:`ScaledLinear` (or set the scale of its wrapper)."""
    owners = {id(m.linear): m for m in model.modules() if isinstance(m, ScaledLinear)}
    for (name, layer), a, ratio in zip(layers, al, _ratios(layers, base_width), strict=True):
        scale = float(ratio**-a)
        wrapper = owners.get(id(layer.inner))
        if wrapper is not None:
            wrapper.scale = scale
        elif a != 0.0:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if parent is model and not child:
                raise MaxPError("the model itself is a single layer; wrap it in an nn.Sequential")
            setattr(parent, child, ScaledLinear(layer.inner, scale))
    if hasattr(model, _OWN_MULTIPLIERS):
        object.__delattr__(model, _OWN_MULTIPLIERS)
    _forget_layers(model)


def create_param_groups(
    model: nn.Module,
    lr_prefactor: float,
    cl: Sequence[float] | None = None,
    parametrization: str | None = None,
    optimizer: str = "adam",
    alignment: str = "full",
    other_lr: float | None = None,
    *,
    base_width: BaseWidth = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """One group per layer weight at ``lr_prefactor * n^-c``; everything else in ``"_other"``.

    ``cl`` (one value per layer) or a named ``parametrization`` (its ``c`` solved by the LP
    for ``optimizer`` and the ``alignment`` preset) gives the *starting* exponents:
    :class:`MaxPScheduler` keeps these rates through its solver warm-up and re-solves every
    ``c`` after it. Each layer group has the keys ``params`` (the weight), ``lr``,
    ``layer_name``, ``fan_in`` (the width ``n``), ``c`` and ``maxp_managed=True``; the
    ``"_other"`` group (biases, norms, anything else that trains) runs at ``other_lr``
    (default ``lr_prefactor``) with ``maxp_managed=False``. Extra keyword arguments
    (``weight_decay=...``, ``betas=...``) are copied into every group. With ``base_width``
    (as given to :func:`initialize_abc_weights`) the rates are ``lr_prefactor * (n / n_base)^-c``.
    """
    lr_prefactor = validate.positive_number(lr_prefactor, "lr_prefactor")
    other_lr = lr_prefactor if other_lr is None else validate.positive_number(other_lr, "other_lr")
    layers = linear_layers(model)
    exponents = _exponents(layers, parametrization, {"cl": cl})
    if parametrization is not None:
        _set_layer_exponents(layers)
        c = Parametrization(
            model,
            layers=layers,
            reinit=False,
            parametrization=parametrization,
            optimizer_type=parse_optimizer(optimizer),
            alignment=alignment,
        ).c.tolist()
    else:
        c = exponents["cl"]
    reserved = sorted(set(kwargs) & {"params", "lr", "layer_name", "fan_in", "c", "maxp_managed"})
    if reserved:
        raise MaxPError(
            f"create_param_groups sets {reserved} itself; extra keyword arguments are copied into every "
            "group (weight_decay=..., betas=...), so these would overwrite maxP's values"
        )
    groups: dict[int, dict[str, Any]] = {}
    for (name, layer), c_layer, ratio in zip(layers, c, _ratios(layers, base_width), strict=True):
        lr = lr_prefactor * float(ratio**-c_layer)
        numbers = {"lr": lr, "fan_in": layer.width_dim, "c": float(c_layer)}
        tied = groups.get(id(layer.weight))
        if tied is not None:  # a tied weight: named by its first use, at the smaller rate
            if lr < tied["lr"]:
                tied.update(numbers)
            continue
        groups[id(layer.weight)] = {"params": [layer.weight], **numbers, "layer_name": name}
        groups[id(layer.weight)].update({"maxp_managed": True, **kwargs})
    managed = list(groups.values())
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in groups]
    if rest:
        managed.append(
            {"params": rest, "lr": other_lr, "layer_name": "_other", "maxp_managed": False, **kwargs}
        )
    return managed


class MaxPScheduler(LRScheduler):
    """Re-measure alignments, re-solve the LP and set each layer's learning rate.

    The published first release's scheduler: the same positional arguments and defaults,
    the attributes ``al``, ``bl``, ``optimizer_type``, ``lr_prefactor`` and ``n_layers``,
    and ``get_last_lr``, ``get_alignment`` (``(None, None, None)`` before the first
    re-solve) and ``get_layer_names``. It is also a ``torch.optim.lr_scheduler.LRScheduler``,
    as frameworks that check for one (Lightning, the Hugging Face Trainer) expect.

    Until the first re-solve the layers keep the rates the optimizer's groups started with
    (from :func:`create_param_groups`, times the WSD multiplier); from then on every ``c``
    is the LP's for the measured alignments. Alignments are measured on the batch given to
    :meth:`capture_initial` (``step(x)`` accepts a batch for compatibility and does not
    need one), so the current and initial activations compare the same inputs.

    Args:
      optimizer: built from :func:`create_param_groups` (groups with ``maxp_managed=True``).
      model: the model given to :func:`initialize_abc_weights`.
      lr_prefactor: the base learning rate.
      al, bl: custom exponents per layer, or
      parametrization: ``"sp"``, ``"mup"``, ``"ntk"`` or ``"mfp"``.
      alignment_assumption: ``"full"`` or ``"no"``: the alignment assumed where a layer's
        measurement carries no information.
      solver_warmup_steps: steps before the first re-solve (``warmup_steps=`` is accepted too).
      sample_size: rows the alignment is measured on.
      solve_interval: re-solve every this many steps.
      solver: ``"highs"`` (default) or ``"clarabel"``; a PuLP solver object is ignored, with a warning.
      resample_w0: redraw the initial weights exactly instead of storing them (the model
        must come from :func:`initialize_abc_weights` with the same ``seed`` and ``std_prefactor``).
      feature_learning: require ``r = 0`` for the layer before the readout.
      alignment_norm: ``"rms"`` or ``"spectral"``.
      wsd_*: warmup-stable-decay of the base learning rate (:class:`maxp_core.WSDSchedule`);
        the solver stops where the decay starts. ``wsd_decay_type="none"`` with
        ``wsd_warmup_steps`` is a linear warm-up and then the base rate.
      optimizer_type: ``"adam"`` or ``"sgd"``; default: from the optimizer's class.
      c_ema, alignment_ema: smoothing of the solved exponents and measured alignments.
      std_prefactor, seed: those given to :func:`initialize_abc_weights` (for ``resample_w0``;
        the default seed is the one it drew, which it keeps on the model).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        lr_prefactor: float,
        al: Sequence[float] | None = None,
        bl: Sequence[float] | None = None,
        parametrization: str | None = None,
        alignment_assumption: str = "full",
        solver_warmup_steps: int = 100,
        sample_size: int = 32,
        solve_interval: int = 1,
        solver: Any = None,
        resample_w0: bool = False,
        feature_learning: bool = False,
        alignment_norm: str = "rms",
        wsd_warmup_steps: int = 0,
        wsd_stable_steps: int | None = None,
        wsd_decay_steps: int | None = None,
        wsd_decay_type: str = "none",
        wsd_min_factor: float = 0.0,
        *,
        warmup_steps: int | None = None,
        optimizer_type: str | None = None,
        c_ema: float = 0.0,
        alignment_ema: float = 0.0,
        std_prefactor: float = 1.0,
        seed: int | None = None,
        base_width: BaseWidth = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise MaxPError(f"MaxPScheduler needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if warmup_steps is not None:
            if solver_warmup_steps != 100:  # the default: not given
                raise MaxPError("give solver_warmup_steps or its older name warmup_steps, not both")
            solver_warmup_steps = warmup_steps
        self.optimizer = optimizer
        self.model = model
        self.wsd = WSDSchedule(
            wsd_warmup_steps, wsd_stable_steps, wsd_decay_steps, wsd_decay_type, wsd_min_factor, names="wsd_"
        )
        self.optimizer_type = parse_optimizer(optimizer_type or optimizer_kind(optimizer))
        self.alignment_assumption = alignment_assumption
        alignment_preset(alignment_assumption)
        layers = linear_layers(model)
        exponents = _exponents(layers, parametrization, {"al": al, "bl": bl})
        self.al, self.bl = exponents["al"], exponents["bl"]
        self._param_name = (
            None
            if parametrization is None
            else f"{parametrization}-{self.optimizer_type}-{alignment_assumption}"
        )
        _set_layer_exponents(layers, **exponents)
        self.base_lr = validate.positive_number(lr_prefactor, "lr_prefactor")
        self.param = Parametrization(
            model,
            layers=layers,
            reinit=False,
            parametrization=parametrization or "mup",
            lr_prefactor=lr_prefactor,
            alignment=alignment_assumption,
            optimizer_type=self.optimizer_type,
            warmup_steps=solver_warmup_steps,
            solve_interval=solve_interval,
            solver=solver,
            feature_learning=feature_learning,
            resample_w0=resample_w0,
            norm_mode=alignment_norm,
            sample_size=sample_size,
            c_ema=c_ema,
            alignment_ema=alignment_ema,
            std_prefactor=std_prefactor,
            seed=getattr(unwrap(model), _INIT_SEED, 0) if seed is None else seed,
            base_width=base_width,
        )
        self.base_width = self.param.base_width
        decay_start = self.wsd.decay_start
        if decay_start is not None:
            self.param.schedule = type(self.param.schedule)(
                solver_warmup_steps, solve_interval, stop_after=max(decay_start - 1, 0)
            )
        self.param._check_optimizer(optimizer)
        self.param._driver = self
        self._driver: Any = None  # a ChainedMaxPScheduler stepping this one
        self._managed = self._managed_groups()
        # Where the groups start, before any schedule (as LRScheduler keeps it: initial_lr).
        groups = self.optimizer.param_groups
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self._starting_factors = [
            groups[i].get("initial_lr", groups[i]["lr"]) / self.base_lr for i in self._managed
        ]
        self._warn_on_missing_multipliers(layers)
        self._warn_on_another_prefactor()
        self._write()
        _start_like_lr_scheduler(self, optimizer)

    def _managed_groups(self) -> list[int]:
        """Indices of the optimizer's maxP groups, checked against the layers, in order."""
        groups = self.optimizer.param_groups
        managed = [i for i, g in enumerate(groups) if g.get("maxp_managed", False)]
        expected = self.param.get_layer_names()
        names = [groups[i].get("layer_name") for i in managed]
        if names != expected:
            raise MaxPError(
                f"the optimizer's maxp_managed groups are {names}, but the model's layers are {expected}; "
                "build the optimizer from create_param_groups(model, ...)"
            )
        return managed

    def _warn_on_missing_multipliers(self, layers: list[tuple[str, HookedLayer]]) -> None:
        if getattr(self.model, _OWN_MULTIPLIERS, False):
            return
        wrapped = {id(m.linear): m.scale for m in self.model.modules() if isinstance(m, ScaledLinear)}
        missing = []
        for (name, layer), a, ratio in zip(layers, self.al, _ratios(layers, self.base_width), strict=True):
            expected = float(ratio**-a)
            scale = wrapped.get(id(layer.inner), 1.0)
            if abs(scale - expected) > 1e-6 * abs(expected):
                missing.append(f"{name} (scale {scale:.4g}, a = {a:g} needs {expected:.4g})")
        if missing:
            warn_user(
                f"the layers {missing} lack the output multiplier n^-a the learning rates assume; call "
                "initialize_abc_weights(model, ...) with the same exponents first (or pass "
                "apply_multipliers=False there if the model applies its own)"
            )

    def _warn_on_another_prefactor(self) -> None:
        """The groups' starting rates should be ``lr_prefactor * n^-c`` for their own ``c``."""
        layers = self.param._layers
        for i, factor in zip(self._managed, self._starting_factors, strict=True):
            group = self.optimizer.param_groups[i]
            if "c" not in group or "fan_in" not in group or group.get("layer_name") not in layers.names:
                continue
            ratio = layers.ratio(layers.names.index(group["layer_name"]))
            expected = float(ratio) ** -float(group["c"])
            if abs(factor - expected) > 1e-6 * expected:
                warn_user(
                    f"the optimizer's group {group.get('layer_name')!r} starts at lr = "
                    f"{factor * self.base_lr:.4g} but lr_prefactor * n^-c = {self.base_lr * expected:.4g} "
                    f"(c = {group['c']:g}, n = {group['fan_in']}): the groups were built with another "
                    "lr_prefactor; the rates jump to this one's at the first re-solve"
                )
                return

    @property
    def lr_prefactor(self) -> float:
        """The base learning rate (``lr_prefactor``); settable, checked > 0."""
        return self.base_lr

    @lr_prefactor.setter
    def lr_prefactor(self, value: float) -> None:
        """Set the base learning rate (checked > 0); the rates follow at the next :meth:`step`."""
        self.base_lr = validate.positive_number(value, "lr_prefactor")

    @property
    def n_layers(self) -> int:
        """The number of layer groups maxP sets."""
        return len(self._managed)

    def _maxp_groups(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """Indices of the optimizer's groups this scheduler sets (its layers', in order)."""
        if optimizer is not self.optimizer:
            raise MaxPError("the schedulers must drive the MaxPScheduler's own optimizer")
        return list(self._managed)

    def _maxp_rates(self) -> list[float]:
        """Each layer group's current rate: the layer's maxP rate times the WSD factor."""
        scale = float(self.wsd(self.param.step_count))
        if self.param.solves > 0:
            rates = self.param.get_last_lr()
        else:
            rates = [self.base_lr * f for f in self._starting_factors]
        return [rate * scale for rate in rates]

    def _maxp_exponents(self) -> list[float | None]:
        """Each layer group's ``c`` (``None`` until the first re-solve: the groups keep theirs)."""
        if self.param.solves == 0:
            return [None] * len(self._managed)
        return [self.param._group_c(g) for g in range(len(self._managed))]

    def _advance(self, x: Any) -> None:
        self.param.lr_prefactor = self.base_lr
        self.param._advance(x)

    def _write(self) -> None:
        """Write every layer group's rate (WSD x the layer's maxP rate)."""
        self.param.lr_prefactor = self.base_lr
        groups = self.optimizer.param_groups
        write_rates(groups, dict(zip(self._managed, self._maxp_rates(), strict=True)))
        for i, c in zip(self._managed, self._maxp_exponents(), strict=True):
            if c is not None:
                groups[i]["c"] = c
        self.last_epoch = self.param.step_count
        self._last_lr = [g["lr"] for g in groups]

    def get_lr(self) -> list[float | torch.Tensor]:
        """Every param group's current rate (what ``LRScheduler.get_lr`` gives)."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def capture_initial(self, x: Any) -> None:
        """Record the layers' inputs and weights before training (call once, before the first step)."""
        self.param.capture_initial(x)

    def step(self, x: Any = None) -> None:
        """After ``optimizer.step()``: re-solve on schedule and set the learning rates.

        Raises a :class:`~maxp_core.CallOrderError` (a ``RuntimeError``) at the first
        re-solve if :meth:`capture_initial` was not called.
        """
        if self._driver is not None:
            raise MaxPError(
                f"this MaxPScheduler is stepped by its {type(self._driver).__name__}; call that "
                "scheduler's step() instead"
            )
        check_sole_writer(self.optimizer.param_groups, f"the optimizer ({type(self.optimizer).__name__})")
        self._advance(x)
        self._write()

    def get_last_lr(self) -> list[float | torch.Tensor]:
        """The learning rate of each layer group (the ``"_other"`` group left out)."""
        return [self.optimizer.param_groups[i]["lr"] for i in self._managed]

    def get_alignment(
        self,
    ) -> tuple[list[float], list[float], list[float]] | tuple[None, None, None]:
        """``(alpha, omega, u)``, one entry per layer; ``(None, None, None)`` before the first re-solve."""
        if self.param.solves == 0:
            return None, None, None
        return self.param.get_alignment()

    def get_layer_names(self) -> list[str]:
        """Names of the layer groups, in the optimizer's order (the ``"_other"`` group left out)."""
        return self.param.get_layer_names()

    def state_dict(self) -> dict[str, Any]:
        """The base learning rate and the :class:`~maxp_torch.Parametrization` state a resume needs."""
        return {"base_lr": self.base_lr, "param": self.param.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, checked first: a bad entry is named and nothing is restored."""
        if not isinstance(state, Mapping) or "base_lr" not in state or "param" not in state:
            found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise MaxPError(
                "load_state_dict: expected the mapping MaxPScheduler.state_dict returns, with 'base_lr' "
                f"and 'param'; got {found}"
            )
        base_lr = validate.positive_number(state["base_lr"], "load_state_dict: base_lr")
        self.param.load_state_dict(state["param"])
        self.base_lr = base_lr
        self._write()
