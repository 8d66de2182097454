"""The first maxP release's ``Tracer`` and window alignment, and one ``compute_alignment`` for both releases.

A :class:`Tracer` puts forward hooks on a model's ``nn.Linear`` layers and, only while
:meth:`Tracer.capture_initial` or :meth:`Tracer.capture` runs, records each layer's input,
output and weight (:class:`LayerSnapshot`) for one step (:class:`StepTrace`).
:meth:`Tracer.window` pairs the initial trace with a current one (:class:`TraceWindow`) and
:func:`compute_window_alignment` turns the window into ``(alpha, omega, u)`` lists, one entry
per layer, with :func:`maxp_core.compat.alignment.compute_alignment`. :func:`compute_alignment`
takes either a window (first release) or one layer's tensors (current release).

Deliberate differences from the published first release:

* **Which layers.** Every ``nn.Linear`` (subclasses included, not descending into one), in
  ``named_modules`` order: the linear layers of this project's first-release
  :func:`~maxp_torch.scheduler.linear_layers`, so the lists line up with
  :meth:`~maxp_torch.MaxPScheduler.get_layer_names` (without its ``nn.Embedding`` layers, whose
  input is an index and has no alignment). The published skips children whose name contains
  ``"attn"``; this project parametrizes attention projections like any other layer.
* **Layer names** are the module names (``"0"``, ``"encoder.fc"``), without the published
  ``"model."`` prefix, as :meth:`~maxp_torch.MaxPScheduler.get_layer_names` returns them.
* **Captures run in eval mode and leave the random state alone**
  (:func:`~maxp_torch.measurement_mode`), as this project's own measurements do: dropout noise
  would otherwise enter ``dz`` and the training's random sequence would shift. The published
  runs the model in whatever mode it is in.
* **``resample_w0=True`` redraws the exact initial weight.** The published one drops ``W0``
  and draws a fresh random matrix at every call; then ``dW = W - W0`` is dominated by the
  difference of two random matrices, not by the update, and ``alpha`` and ``u`` read about
  0.5 whatever the training did. Here, for a model initialised by
  :func:`~maxp_torch.initialize_abc_weights` (seeded per-layer draws), the initial capture
  keeps no weight and each window redraws ``W0`` bit for bit; for any other model the tracer
  cannot know the draw, says so once and keeps ``W0`` (one CPU copy per layer).
  ``std_prefactor`` is accepted and not used.
* **Terms without information are NaN** (see :mod:`maxp_core.compat.alignment`), except
  ``omega`` and ``u`` of the first layer, which are 0.0 as published: its input is the data,
  so both terms vanish when the same batch is captured, and the chain LP does not read them
  for its first layer, so a loop that hands the lists to ``find_c`` keeps working.
* rms values are clipped to ``[0, 1]``, there is no absolute ``1e-12`` threshold, and errors
  are :class:`~maxp_core.errors.MaxPError` (a ``ValueError``); a window asked for before
  :meth:`Tracer.capture_initial` raises :class:`~maxp_core.errors.CallOrderError`, which is
  also the published ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from maxp_core import validate, warn_user
from maxp_core.compat.alignment import checked_norm_mode
from maxp_core.compat.alignment import compute_alignment as compute_layer_alignment
from maxp_core.errors import CallOrderError, MaxPError
from maxp_torch.initialization import INITIAL_DRAWS
from maxp_torch.parametrization import measurement_mode, unwrap
from maxp_torch.trace import call_model

AlignmentLists = tuple[list[float], list[float], list[float]]


@dataclass
class LayerSnapshot:
    """One layer's tensors at one step: its first ``sample_size`` rows of input and output
    (the ``nn.Linear`` output, before any multiplier maxP applies) and its weight
    ``(out, in)``; detached CPU copies."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None
    weight: torch.Tensor | None = None


@dataclass
class StepTrace:
    """The snapshots of every traced layer at one step, keyed by layer name."""

    step: int
    layers: dict[str, LayerSnapshot] = field(default_factory=dict)


@dataclass
class TraceWindow:
    """The initial and a current trace with what the alignment needs per layer."""

    init: StepTrace
    current: StepTrace
    n_layers: int
    fan_in: list[int]
    layer_names: list[str]
    bl: list[float] | None = None
    resample_w0: bool = False


def traced_linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's ``nn.Linear`` layers by name, in ``named_modules`` order, none inside another.

    Examples:
      >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
      >>> [name for name, _ in traced_linear_layers(model)]
      ['0', '2.0']
    """
    found: list[tuple[str, nn.Linear]] = []
    for name, module in model.named_modules():
        inside_found = any(name.startswith(f"{outer}.") for outer, _ in found)
        if isinstance(module, nn.Linear) and not inside_found:
            found.append((name, module))
    return found


def _sample_rows(x: Any, sample_size: int | None) -> Any:
    """The first ``sample_size`` rows of ``x`` (all when ``None``) as a detached CPU copy."""
    if not isinstance(x, torch.Tensor):
        return None
    rows = x if sample_size is None or x.ndim == 0 else x[:sample_size]
    return rows.detach().cpu().clone().contiguous()


class Tracer:
    """Record the inputs, outputs and weights of a model's ``nn.Linear`` layers on demand.

    The hooks stay on the model but record only inside :meth:`capture_initial` and
    :meth:`capture`; :meth:`remove_hooks` takes them off. The module docstring lists where
    this differs from the published class (layer choice and names, eval mode, ``resample_w0``).

    Args:
      model: the model; every ``nn.Linear`` in it is traced.
      sample_size: rows kept per snapshot (the first ones, along dim 0); ``None`` keeps all.
      bl: the initialization exponent ``b`` of each traced layer, kept for the window.
      resample_w0: recorded in the window; the exact initial weight is kept either way.

    Attributes:
      model, sample_size, bl, resample_w0: as given.
      layer_names: the traced layers' module names.
      modules: the traced ``nn.Linear`` modules.
      fan_in: each layer's ``in_features``.
      initial: the trace of :meth:`capture_initial`, ``None`` before it.

    Raises:
      MaxPError: the model has no ``nn.Linear``, ``sample_size`` is not a positive integer
        or ``None``, or ``bl`` does not hold one number per traced layer.

    Examples:
      >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
      >>> tracer = Tracer(model, sample_size=3)
      >>> initial = tracer.capture_initial(torch.randn(5, 4))
      >>> tracer.layer_names, tuple(initial.layers["0"].input.shape), tracer.fan_in
      (['0', '2'], (3, 4), [4, 8])
      >>> tracer.remove_hooks()
    """

    def __init__(
        self,
        model: nn.Module,
        sample_size: int | None = 32,
        bl: Sequence[float] | None = None,
        resample_w0: bool = False,
    ) -> None:
        self._handles: list[Any] = []
        if not isinstance(model, nn.Module):
            raise MaxPError(f"Tracer needs an nn.Module, got {type(model).__name__}")
        layers = traced_linear_layers(model)
        if not layers:
            raise MaxPError(
                f"Tracer: {type(model).__name__} has no nn.Linear layer to trace; the first release's "
                "alignment reads nn.Linear layers (use Parametrization for other layer types)"
            )
        self.model = model
        self.sample_size = (
            None if sample_size is None else validate.integer(sample_size, "Tracer: sample_size", 1)
        )
        self.layer_names = [name for name, _ in layers]
        self.modules = [module for _, module in layers]
        self.fan_in = [int(module.in_features) for module in self.modules]
        self.bl = None if bl is None else self._checked_bl(bl)
        self.resample_w0 = validate.boolean(resample_w0, "Tracer: resample_w0")
        self._redraw = self._redraws(model) if self.resample_w0 else None
        self._capturing_initial = False
        self.initial: StepTrace | None = None
        self._recording: dict[str, LayerSnapshot] | None = None
        for name, module in layers:
            self._handles.append(
                module.register_forward_hook(self._hook_for(name, module), with_kwargs=True, prepend=True)
            )

    def _redraws(self, model: nn.Module) -> tuple[Any, dict[str, int]] | None:
        """The draws that initialised the model and each traced layer's weight group in them;
        ``None`` (with a warning) for a model whose draws maxP did not make."""
        draws = getattr(unwrap(model), INITIAL_DRAWS, None)
        groups: dict[int, int] = {}
        if draws is not None:
            layers = draws.layers
            for k, layer in enumerate(layers.modules):
                if layer.weight is not None:
                    groups[id(layer.inner)] = layers.group_of(k)
        if draws is None or any(id(module) not in groups for module in self.modules):
            warn_user(
                "Tracer(resample_w0=True) redraws W0 from the seeded draws of initialize_abc_weights, "
                f"which did not initialise {type(model).__name__}'s layers; the exact W0 is kept instead "
                "(call initialize_abc_weights(model, ...) first to redraw it and keep no copy)"
            )
            return None
        names = zip(self.layer_names, self.modules, strict=True)
        return draws, {name: groups[id(module)] for name, module in names}

    def _drawn_weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s initial weight, drawn again (``resample_w0``)."""
        assert self._redraw is not None
        draws, groups = self._redraw
        weight = self.modules[self.layer_names.index(name)].weight.detach()
        return draws.draw(groups[name], weight)

    def _checked_bl(self, bl: Sequence[float]) -> list[float]:
        if isinstance(bl, str) or not isinstance(bl, Sequence):
            raise MaxPError(f"Tracer: bl must be a list of one number per traced layer, got {bl!r}")
        if len(bl) != len(self.layer_names):
            raise MaxPError(
                f"Tracer: bl has {len(bl)} values but the model has {len(self.layer_names)} nn.Linear "
                f"layers {self.layer_names}; give one b per layer"
            )
        return [
            validate.init_exponent(value, f"Tracer: bl of layer {name!r}")
            for name, value in zip(self.layer_names, bl, strict=True)
        ]

    def _hook_for(self, name: str, linear: nn.Linear) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if self._recording is None:
                return
            x = args[0] if args else kwargs.get("input")
            keep_weight = not (self._capturing_initial and self._redraw is not None)
            self._recording[name] = LayerSnapshot(
                input=_sample_rows(x, self.sample_size),
                output=_sample_rows(output, self.sample_size),
                weight=linear.weight.detach().cpu().clone() if keep_weight else None,
            )

        return record

    def _trace(self, x: Any, step: int) -> StepTrace:
        """One forward pass in :func:`~maxp_torch.measurement_mode`, recording every layer."""
        devices = list({p.device for p in self.model.parameters()})
        self._recording = {}
        try:
            with measurement_mode(self.model, devices):
                call_model(self.model, x)
            return StepTrace(step=step, layers=self._recording)
        finally:
            self._recording = None

    def capture_initial(self, X: Any) -> StepTrace:
        """Trace the model on ``X`` before training; kept as :attr:`initial` and returned (step 0).

        ``X`` is a tensor batch, a tuple of positional arguments or a dict of keyword arguments.
        """
        self._capturing_initial = True
        try:
            self.initial = self._trace(X, 0)
        finally:
            self._capturing_initial = False
        if self._redraw is not None:
            for name, module in zip(self.layer_names, self.modules, strict=True):
                if not torch.equal(self._drawn_weight(name), module.weight.detach()):
                    raise MaxPError(
                        f"Tracer(resample_w0=True): layer {name!r} no longer holds the weight "
                        "initialize_abc_weights drew, so W0 cannot be redrawn; capture before training "
                        "(or pass resample_w0=False to keep a copy)"
                    )
        return self.initial

    def capture(self, X: Any, step: int = 0) -> StepTrace:
        """Trace the model on ``X`` now and return the trace, labelled ``step`` (not kept)."""
        return self._trace(X, validate.integer(step, "Tracer.capture: step", 0))

    def window(self, current: StepTrace) -> TraceWindow:
        """The initial trace and ``current``, with each layer's ``fan_in``, for the alignment.

        Raises:
          CallOrderError: :meth:`capture_initial` has not run (also a ``RuntimeError``).
          MaxPError: ``current`` is not a :class:`StepTrace`, or a layer was not called by
            the model in one of the two traces.
        """
        if self.initial is None:
            raise CallOrderError(
                "Tracer.window(current) before capture_initial(X): capture the initial state first, "
                "then capture(X, step) and window(...) of that trace"
            )
        if not isinstance(current, StepTrace):
            raise MaxPError(f"Tracer.window takes the StepTrace of capture(X), got {type(current).__name__}")
        for trace, which in ((self.initial, "capture_initial"), (current, f"capture (step {current.step})")):
            missing = [name for name in self.layer_names if name not in trace.layers]
            if missing:
                raise MaxPError(
                    f"Tracer: layers {missing} were not called by the model during {which}; give an "
                    "input whose forward pass runs every nn.Linear of the model"
                )
        init = self.initial
        if self._redraw is not None:
            init = StepTrace(
                step=init.step,
                layers={
                    name: replace(snapshot, weight=self._drawn_weight(name).cpu())
                    for name, snapshot in init.layers.items()
                },
            )
        return TraceWindow(
            init=init,
            current=current,
            n_layers=len(self.layer_names),
            fan_in=list(self.fan_in),
            layer_names=list(self.layer_names),
            bl=None if self.bl is None else list(self.bl),
            resample_w0=self.resample_w0,
        )

    def remove_hooks(self) -> None:
        """Take the tracer's hooks off the model (captures then record nothing)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __del__(self) -> None:
        handles = getattr(self, "_handles", None)
        if handles:
            self.remove_hooks()


def _window_snapshots(window: TraceWindow, index: int, name: str) -> tuple[LayerSnapshot, LayerSnapshot]:
    """Layer ``name``'s initial and current snapshot; raises naming what is missing."""
    init = window.init.layers.get(name)
    current = window.current.layers.get(name)
    if (
        init is None
        or current is None
        or init.input is None
        or current.input is None
        or current.weight is None
    ):
        raise CallOrderError(
            f"layer {index} ({name!r}) has no input or weight in the window's "
            f"{'initial' if init is None or init.input is None else 'current'} trace; build the window "
            "with tracer.window(tracer.capture(X, step)) after tracer.capture_initial(X)"
        )
    if init.weight is None:
        raise MaxPError(
            f"layer {index} ({name!r}) has no initial weight; this project does not draw a random W0 "
            "(that measures the distance to a random matrix, not the update): capture the window with "
            "maxp_torch's Tracer, which keeps W0, or use Parametrization(resample_w0=True), which "
            "redraws W0 exactly from its seed"
        )
    return init, current


def compute_window_alignment(
    window: TraceWindow,
    resample_w0: bool | None = None,
    std_prefactor: float = 1.0,
    norm_mode: str = "rms",
) -> AlignmentLists:
    """The first release's ``compute_alignment(window)``: ``(alpha, omega, u)`` lists, one entry per layer.

    Each layer's values are :func:`maxp_core.compat.alignment.compute_alignment` of its initial
    input, initial weight, current input and current weight with the window's ``fan_in``.
    The module docstring lists the deliberate differences (NaN for terms without
    information, the exact ``W0`` in place of a random redraw, the first layer's ``omega``
    and ``u`` at 0.0 as published).

    Args:
      window: from :meth:`Tracer.window`.
      resample_w0: accepted for compatibility; the exact initial weight is used either way.
      std_prefactor: accepted for compatibility (it scaled the random ``W0``); not used.
      norm_mode: ``"rms"`` or ``"spectral"``.

    Returns:
      ``(alpha_list, omega_list, u_list)`` of floats, each ``window.n_layers`` long.

    Raises:
      MaxPError: an unknown ``norm_mode``, a window whose lists do not match its layers, or a
        layer without an initial weight.
      CallOrderError: a layer's snapshot is missing from the window (also a ``RuntimeError``).

    Examples:
      >>> torch.manual_seed(0) and None
      >>> model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 4, bias=False))
      >>> tracer = Tracer(model)
      >>> x = torch.randn(8, 16)
      >>> _ = tracer.capture_initial(x)
      >>> with torch.no_grad():
      ...     _ = model[0].weight.add_(0.1 * torch.randn(32, 16))
      >>> alpha, omega, u = compute_window_alignment(tracer.window(tracer.capture(x, step=1)))
      >>> [round(v, 1) for v in alpha]   # the second layer's weight has not moved: missing
      [0.5, nan]
      >>> omega[0], round(omega[1], 1), u   # the first layer's omega and u are 0.0 as published
      (0.0, 0.5, [0.0, nan])
    """
    mode = checked_norm_mode(norm_mode)
    if not isinstance(window, TraceWindow):
        raise MaxPError(f"compute_alignment(window) takes a TraceWindow, got {type(window).__name__}")
    if resample_w0 is not None:
        validate.boolean(resample_w0, "compute_alignment: resample_w0")
    validate.positive_number(std_prefactor, "compute_alignment: std_prefactor")
    names = list(window.layer_names)
    if len(window.fan_in) != len(names) or window.n_layers != len(names):
        raise MaxPError(
            f"the window has {len(names)} layer names, {len(window.fan_in)} fan_in values and "
            f"n_layers={window.n_layers}; they must agree (build it with Tracer.window)"
        )
    columns: AlignmentLists = ([], [], [])
    for index, name in enumerate(names):
        init, current = _window_snapshots(window, index, name)
        alpha, omega, u = compute_layer_alignment(
            init.input, init.weight, current.input, current.weight, window.fan_in[index], mode
        )
        if index == 0:
            omega, u = 0.0, 0.0
        for column, value in zip(columns, (alpha, omega, u), strict=True):
            column.append(float(value))
    return columns


def _is_array_like(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor | np.ndarray | list | tuple)
        or hasattr(value, "__array__")
        or hasattr(value, "__array_interface__")
    )


@overload
def compute_alignment(
    window: TraceWindow,
    resample_w0: bool | None = ...,
    std_prefactor: float = ...,
    norm_mode: str = ...,
) -> AlignmentLists: ...


@overload
def compute_alignment(
    z0: Any, w0: Any, z: Any, w: Any, fan_in: int, norm_mode: str = ...
) -> tuple[float, float, float]: ...


def compute_alignment(*args: Any, **kwargs: Any) -> Any:
    """Both published ``compute_alignment`` forms, told apart by the first argument.

    * ``compute_alignment(window, resample_w0=None, std_prefactor=1.0, norm_mode="rms")``
      (first release): :func:`compute_window_alignment`, three lists.
    * ``compute_alignment(z0, w0, z, w, fan_in, norm_mode="rms")`` (current release):
      :func:`maxp_core.compat.alignment.compute_alignment`, one ``(alpha, omega, u)``.

    Raises:
      MaxPError: the first argument is neither a :class:`TraceWindow` nor a tensor or
        array (the message says which forms are accepted), or the chosen form refuses it.

    Examples:
      >>> z0, w0 = torch.randn(4, 64), torch.randn(8, 64)
      >>> alpha, omega, u = compute_alignment(z0, w0, z0, w0 + torch.randn(8, 64), 64)
      >>> 0.0 < alpha < 1.0, omega != omega   # dz = 0: omega carries no information (NaN)
      (True, True)
    """
    first = args[0] if args else kwargs.get("window", kwargs.get("z0"))
    if isinstance(first, TraceWindow):
        return compute_window_alignment(*args, **kwargs)
    if first is not None and _is_array_like(first):
        return compute_layer_alignment(*args, **kwargs)
    hint = "; pass tracer.window(trace) instead of the trace" if isinstance(first, StepTrace) else ""
    raise MaxPError(
        "compute_alignment takes a TraceWindow (first release: compute_alignment(tracer.window(trace), "
        "norm_mode='rms')) or one layer's tensors (current release: compute_alignment(z0, w0, z, w, "
        f"fan_in, norm_mode='rms')); got {type(first).__name__} as the first argument{hint}"
    )
