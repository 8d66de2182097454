"""Layers maxP did not wrap: how their weights read, what their inputs are, and the hooks that scale them.

A *kind* says how a layer type stores its weight and multiplies its input:

* ``linear``: ``nn.Linear`` (weight ``(out, in)``, ``y = x @ W.T``);
* ``transposed``: the ``Conv1D`` of Hugging Face transformers (weight ``(in, out)``,
  ``y = x @ W``);
* ``conv``: ``nn.Conv1d/2d/3d`` (weight ``(out, in, *kernel)``; its input, read as
  patches, is ``(rows, in x kernel)``, the same definition as :mod:`maxp_core.alignment`'s
  ``(rows, fan_in)`` and as ``maxp_jax``'s);
* ``table``: ``nn.Embedding`` (a ``(vocab, d)`` table that is looked up);
* ``parameter``: a bare parameter (a class token, a position embedding) that is added,
  not multiplied.

:class:`HookedLayer` gives an unmodified module what :class:`~maxp_torch.ParametrizedModule`
gives a wrapped one (an output multiplier, a view of its input, a place in the traced
graph) through forward hooks, so the model keeps its classes and ``state_dict`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from maxp_core import MaxPError, Role


class LayerKind:
    """How one layer type stores its weight and meets its input."""

    def __init__(self, name: str, measurable: bool = True) -> None:
        self.name = name
        self.measurable = measurable

    def dims(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(in, fan_in, out)``: the input size, the contracted size and the output size."""
        if self.name in ("transposed", "table"):
            return shape[0], shape[0], shape[-1]
        if self.name == "parameter":
            return 1, 1, shape[-1]
        return shape[1], math.prod(shape[1:]), shape[0]

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as the ``(out, fan_in)`` matrix its input rows multiply."""
        if self.name == "transposed":
            return weight.T
        # A linear weight is the matrix already (a reshape to itself still costs a dispatch).
        return weight if weight.ndim == 2 else weight.reshape(weight.shape[0], -1)

    def rows(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as ``(rows, fan_in)``: patches for a convolution."""
        if self.name == "conv":
            return conv_patches(module, x)
        return x if x.ndim == 2 else x.reshape(-1, x.shape[-1])

    def __repr__(self) -> str:
        return f"LayerKind({self.name!r})"


LINEAR = LayerKind("linear")
TRANSPOSED = LayerKind("transposed")
CONV = LayerKind("conv")
TABLE = LayerKind("table", measurable=False)
PARAMETER = LayerKind("parameter", measurable=False)

#: Module types a rule can match, for messages.
KNOWN_TYPES = "nn.Linear, nn.Embedding, nn.Conv1d/2d/3d, transformers' Conv1D"


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``Conv1D``: ``y = x @ W + b``, ``W`` of shape ``(in, nf)``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def kind_of(module: Any) -> LayerKind | None:
    """The kind of a module maxP knows, or ``None``."""
    if isinstance(module, nn.Embedding):
        return TABLE
    if isinstance(module, nn.modules.conv._ConvNd):
        return None if module.transposed else CONV
    if isinstance(module, nn.Linear):
        return LINEAR
    if is_transposed_linear(module):
        return TRANSPOSED
    return None


def conv_patches(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A convolution's input as the ``(rows, in_channels x kernel)`` patches its weight multiplies.

    Padding (zeros or the module's ``padding_mode``), strides and dilation are followed, so
    ``conv_patches(conv, x) @ conv.weight.reshape(out, -1).T`` is the convolution's output
    (without bias) with the positions as rows.

    Examples:
      >>> conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
      >>> x = torch.randn(2, 3, 8, 8)
      >>> rows = conv_patches(conv, x) @ conv.weight.reshape(4, -1).T
      >>> torch.allclose(rows, conv(x).permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-6)
      True
    """
    if module.groups != 1:
        raise MaxPError(
            f"a grouped convolution (groups={module.groups}) has no single (out, fan_in) matrix to "
            "measure; pin its alignment with alignment_overrides or a rule's alignment=(alpha, omega, u)"
        )
    spatial = len(module.kernel_size)
    if x.dim() == spatial + 1:
        x = x.unsqueeze(0)
    padding = list(module._reversed_padding_repeated_twice)
    if any(padding):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, padding, mode=mode)
    for axis, (size, stride, dilation) in enumerate(
        zip(module.kernel_size, module.stride, module.dilation, strict=True)
    ):
        x = x.unfold(2 + axis, (size - 1) * dilation + 1, stride)
        if dilation > 1:
            x = x[..., ::dilation]
    channels = x.shape[1]
    order = (0, *range(2, 2 + spatial), 1, *range(2 + spatial, 2 + 2 * spatial))
    return x.permute(order).reshape(-1, channels * math.prod(module.kernel_size))


def _install_hooks(
    module: nn.Module, pre: Callable[..., Any], post: Callable[..., Any], with_kwargs: bool = False
) -> list[Any]:
    """A forward pre-hook and a forward hook that runs even when the forward raises (so what
    the pre-hook entered is always left)."""
    return [
        module.register_forward_pre_hook(pre, with_kwargs=with_kwargs),
        module.register_forward_hook(post, always_call=True),
    ]


def _remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return args if args else tuple(kwargs.values())


class _Layer:
    """What a :class:`~maxp_torch.Parametrization` reads of any layer it did not wrap."""

    folded = False
    inner: Any = None
    kind: LayerKind = LINEAR

    def __init__(
        self, layer_type: str, width_dim: int, a: float | None, b: float | None, c: float | None
    ) -> None:
        self.layer_type = layer_type
        self.width_dim = width_dim
        self.a, self.b, self.c = a, b, c
        self.scale = 1.0
        self.alpha: float | None = None
        self.omega: float | None = None
        self.u: float | None = None
        self._recorder: Callable[[Any, tuple[Any, ...]], None] | None = None
        self._tracer: Any = None

    @property
    def role(self) -> Role:
        return Role(self.layer_type)


class HookedLayer(_Layer):
    """A module maxP treats as a layer without wrapping it.

    A forward hook multiplies the output by :attr:`scale` (``width_dim^-a``, set by the
    :class:`~maxp_torch.Parametrization`) unless ``multiplies=False`` (the first release's
    API, whose multipliers live in :class:`~maxp_torch.ScaledLinear` wrappers); a pre-hook
    hands the input to the recorder maxP's measurements install. Attributes mirror
    :class:`~maxp_torch.ParametrizedModule`. :meth:`remove` takes the hooks off.
    """

    def __init__(
        self,
        module: nn.Module,
        layer_type: str,
        width_dim: int,
        a: float | None = None,
        b: float | None = None,
        c: float | None = None,
        kind: LayerKind | None = None,
        multiplies: bool = True,
    ) -> None:
        super().__init__(layer_type, width_dim, a, b, c)
        self.inner = module
        self.kind = kind or kind_of(module) or LINEAR
        self.multiplies = multiplies
        self._handles = _install_hooks(module, self._pre_hook, self._post_hook, with_kwargs=True)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = _first_tensor(args, kwargs)
        if self._tracer is not None:
            self._tracer.enter(self, inputs)
        if self._recorder is not None:
            self._recorder(self, inputs)

    def _post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        out = output if self.scale == 1.0 or not self.multiplies else output * self.scale
        if self._tracer is not None:
            out = self._tracer.leave(self, out)
        return out

    def remove(self) -> None:
        """Take the hooks off the module."""
        _remove_hooks(self._handles)

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight  # type: ignore[no-any-return]

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.inner.parameters()


class ParameterLayer(_Layer):
    """A bare parameter given a role: a class token or position embedding, added to the stream.

    It has no module whose output could be multiplied, so its multiplier ``n^-a`` is folded
    into its initial standard deviation and learning rate (:func:`maxp_core.symmetry.fold_multiplier`),
    which trains it exactly as the multiplied form would.
    """

    folded = True
    kind = PARAMETER

    def __init__(
        self,
        parameter: nn.Parameter,
        layer_type: str,
        width_dim: int,
        a: float | None = None,
        b: float | None = None,
        c: float | None = None,
    ) -> None:
        super().__init__(layer_type, width_dim, a, b, c)
        self.parameter = parameter

    def remove(self) -> None:
        """Nothing to take off: a bare parameter has no hooks."""

    @property
    def weight(self) -> torch.Tensor:
        return self.parameter

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter([self.parameter])


#: The attention scopes whose forward is running, innermost last: the tracer reads the
#: width exponent ``a`` of the scores from here, since with a base width the scale alone
#: does not tell it.
ACTIVE_SCOPES: list[_ScaledAttention] = []


class _ScaledAttention(TorchFunctionMode):
    """Inside one module's forward: every ``scaled_dot_product_attention`` gets ``scale = n^-a``
    (with a base width, ``n^-1/2 * ratio^-(a - 1/2)``: the standard scale at the base width)."""

    def __init__(self, a: float, width: int | None, ratio: float | None) -> None:
        super().__init__()
        self.a = a
        self.width = width
        self.ratio = ratio

    def scale(self, head: int) -> float:
        width = float(self.width or head)
        if self.ratio is None:
            return width**-self.a
        return width**-0.5 * self.ratio ** -(self.a - 0.5)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            query = args[0] if args else kwargs["query"]
            kwargs["scale"] = self.scale(query.shape[-1])
            args = tuple(args[:6])  # a positional scale is the 7th argument
        return func(*args, **kwargs)


class AttentionScope:
    """Sets the scale of the attention a module computes with ``F.scaled_dot_product_attention``.

    While the module runs, each ``scaled_dot_product_attention`` call inside it takes
    ``scale = width^-a`` (``width``: the rule's, or the head dimension ``q.shape[-1]``):
    ``a = 1`` is muP's ``1/d``, ``a = 0.5`` the standard ``1/sqrt(d)``. The attention class
    is not rewritten: a pre-hook enters a ``TorchFunctionMode`` and a post-hook that runs
    even when the forward raises leaves it.
    """

    def __init__(self, module: nn.Module, a: float, width: int | None = None) -> None:
        self.inner = module
        self.a = a
        self.width = width
        #: With a base width: the model's width ratio (set by the Parametrization).
        self.ratio: float | None = None
        self._active: list[_ScaledAttention] = []
        self._handles = _install_hooks(module, self._enter, self._leave)

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        mode = _ScaledAttention(self.a, self.width, self.ratio)
        mode.__enter__()
        self._active.append(mode)
        ACTIVE_SCOPES.append(mode)

    def _leave(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._active:
            mode = self._active.pop()
            mode.__exit__(None, None, None)
            if mode in ACTIVE_SCOPES:
                ACTIVE_SCOPES.remove(mode)

    def remove(self) -> None:
        """Take the hooks off the module."""
        _remove_hooks(self._handles)
