"""``ParametrizedModule``: marks a layer (or a parameter-free op) for abc-parametrization."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from maxp_core import MaxPError, Role, validate
from maxp_torch.layers import LINEAR, LayerKind, kind_of

LAYER_TYPES: tuple[str, ...] = tuple(role.value for role in Role)
"""The ``layer_type`` values a :class:`ParametrizedModule` takes: ``"embedding"``, ``"hidden"``,
``"readout"``."""


#: What a Parametrization recorded of each layer at ``capture_initial``, for the published
#: ``pm._z0`` / ``pm._w0`` views: ``layer -> (what -> tensor or None)``. Held beside the layers,
#: not on them, so that copying or saving a model carries no reference to its Parametrization.
INITIAL_VIEWS: weakref.WeakKeyDictionary[nn.Module, Callable[[str], torch.Tensor | None]] = (
    weakref.WeakKeyDictionary()
)


class ParametrizedModule(nn.Module):
    """Wrap a module or a bare callable; its output is multiplied by ``scale = width_dim^-a``.

    Args:
      module_or_fn: an ``nn.Module`` with a ``weight`` (``nn.Linear``, ``nn.Embedding``,
        convolutions) or a parameter-free callable such as attention's
        ``lambda q, k: q @ k.transpose(-2, -1)``.
      width_dim: the ``n`` of ``n^-a, n^-b, n^-c``: the contracted dimension that scales
        with width (for an embedding, the embedding size).
      layer_type: ``"embedding"``, ``"hidden"`` (the default) or ``"readout"``.
      a, b, c: override the parametrization's exponents for this layer (``c`` pins the
        learning-rate exponent in the LP).

    Examples:
      >>> fc = ParametrizedModule(nn.Linear(64, 64), width_dim=64, layer_type="hidden")
      >>> fc
      ParametrizedModule(
        width_dim=64, layer_type='hidden', scale=1
        (inner): Linear(in_features=64, out_features=64, bias=True)
      )
    """

    def __init__(
        self,
        module_or_fn: nn.Module | Callable[..., torch.Tensor],
        width_dim: int,
        layer_type: str = "hidden",
        *,
        a: float | None = None,
        b: float | None = None,
        c: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(layer_type, str) or layer_type not in LAYER_TYPES:
            raise MaxPError(f"unknown layer_type {layer_type!r}; expected one of {list(LAYER_TYPES)}")
        if isinstance(width_dim, bool) or not isinstance(width_dim, int) or width_dim < 1:
            raise MaxPError(f"width_dim must be a positive integer, got {width_dim!r}")
        if isinstance(module_or_fn, nn.Module):
            self.inner: nn.Module | None = module_or_fn
            self.fn: Callable[..., torch.Tensor] | None = None
        elif callable(module_or_fn):
            self.inner = None
            self.fn = module_or_fn
        else:
            raise MaxPError(
                f"ParametrizedModule wraps an nn.Module or a callable, got {type(module_or_fn).__name__}"
            )
        self.width_dim = width_dim
        self.layer_type = layer_type
        self.a, self.b, self.c = (
            None
            if value is None
            else (validate.init_exponent if key == "b" else validate.exponent)(
                value, f"ParametrizedModule: {key}"
            )
            for key, value in (("a", a), ("b", b), ("c", c))
        )
        self.scale = 1.0
        # The latest measured (or, before the first re-solve, assumed) alignment, set by Parametrization.
        self.alpha: float | None = None
        self.omega: float | None = None
        self.u: float | None = None
        self._recorder: Callable[[ParametrizedModule, tuple[Any, ...]], None] | None = None
        self._tracer: Callable[..., Any] | None = None

    folded = False  # the output is multiplied by ``scale``; nothing is folded into init or rate

    @property
    def _z0(self) -> torch.Tensor | None:
        """The published maxP's name for this layer's initial input rows, as
        :meth:`~maxp_torch.Parametrization.capture_initial` recorded them (read-only; ``None``
        before, and for a layer whose alignment is not measured)."""
        view = INITIAL_VIEWS.get(self)
        return None if view is None else view("z0")

    @property
    def _w0(self) -> torch.Tensor | None:
        """The published maxP's name for this layer's initial weight (read-only; redrawn on
        each read with ``resample_w0``; ``None`` before the capture and where not measured)."""
        view = INITIAL_VIEWS.get(self)
        return None if view is None else view("w0")

    @property
    def kind(self) -> LayerKind:
        """How the wrapped module's weight reads (:mod:`maxp_torch.layers`); linear by default."""
        return (kind_of(self.inner) if self.inner is not None else None) or LINEAR

    @property
    def role(self) -> Role:
        """The layer's :class:`maxp_core.Role`, from its ``layer_type``."""
        return Role(self.layer_type)

    @property
    def weight(self) -> torch.Tensor | None:
        """The wrapped module's ``weight`` (``None`` for a bare callable)."""
        if self.inner is None:
            return None
        weight = getattr(self.inner, "weight", None)
        return weight if isinstance(weight, torch.Tensor) else None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The wrapped module's (or callable's) output times ``scale``."""
        if self._tracer is not None:
            return self._tracer(self, self._forward, args, kwargs)
        return self._forward(*args, **kwargs)

    def _forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._recorder is not None:
            self._recorder(self, args)
        if self.scale != 1.0 and self._scales_input(args, kwargs):
            # (s x) W^T = s (x W^T) without a bias: a readout to a large vocabulary then scales its
            # input, not the logits, the largest activation of a language model (forward and backward).
            return self.inner(args[0] * self.scale)  # type: ignore[misc]
        out = self.inner(*args, **kwargs) if self.inner is not None else self.fn(*args, **kwargs)  # type: ignore[misc]
        # A multiplier of 1 (hidden layers under most parametrizations) costs no pass over the output.
        return out if self.scale == 1.0 else out * self.scale

    def _scales_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the multiplier may go on the input: a bias-free ``nn.Linear`` that widens, with
        no hook that would see its input or output (a tracer's, FSDP's, a user's) and expect them raw."""
        inner = self.inner
        return (
            isinstance(inner, nn.Linear)
            and inner.bias is None
            and inner.out_features > inner.in_features
            and len(args) == 1
            and not kwargs
            and not (inner._forward_hooks or inner._forward_pre_hooks)
            and not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)
        )

    def extra_repr(self) -> str:
        """Width, layer type, multiplier and any exponent overrides, for ``repr``."""
        overrides = "".join(
            f", {k}={v}" for k, v in (("a", self.a), ("b", self.b), ("c", self.c)) if v is not None
        )
        return (
            f"width_dim={self.width_dim}, layer_type={self.layer_type!r}, scale={self.scale:.6g}{overrides}"
        )


class ScaledLinear(nn.Module):
    """A layer whose output is multiplied by a fixed ``scale``: the first release's multiplier.

    :func:`~maxp_torch.initialize_abc_weights` puts every layer with ``a != 0`` in one, with
    ``scale = n^-a``. ``weight``, ``bias``, ``in_features`` and ``out_features`` are the
    wrapped layer's; its parameters are registered under ``linear``, so a ``state_dict``
    has keys ``<name>.linear.weight``. Any layer can be wrapped (an ``nn.Embedding`` too).

    Examples:
      >>> layer = ScaledLinear(nn.Linear(4, 8), scale=0.125)
      >>> layer
      ScaledLinear(
        in_features=4, out_features=8, bias=True, scale=0.125
        (linear): Linear(in_features=4, out_features=8, bias=True)
      )
      >>> x = torch.randn(2, 4)
      >>> torch.allclose(layer(x), 0.125 * layer.linear(x))
      True
    """

    def __init__(self, linear: nn.Module, scale: float) -> None:
        super().__init__()
        if not isinstance(linear, nn.Module) or not isinstance(getattr(linear, "weight", None), torch.Tensor):
            raise MaxPError(f"ScaledLinear wraps a layer with a weight, got {type(linear).__name__}")
        self.linear = linear
        self.scale = validate.real_number(scale, "ScaledLinear: scale")

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight."""
        return self.linear.weight  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias (``None`` without one)."""
        bias = getattr(self.linear, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def in_features(self) -> int:
        """The wrapped layer's input size."""
        return int(getattr(self.linear, "in_features", self.weight.shape[-1]))

    @property
    def out_features(self) -> int:
        """The wrapped layer's output size."""
        return int(getattr(self.linear, "out_features", self.weight.shape[0]))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The wrapped layer's output times ``scale``."""
        return self.linear(*args, **kwargs) * self.scale

    def extra_repr(self) -> str:
        """Sizes, bias and multiplier, for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scale={self.scale:.4g}"
        )
