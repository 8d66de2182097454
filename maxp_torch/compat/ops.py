"""The published op tracing behind maxP's coordinate checks: trace_forward, classify, measure_activations.

:func:`trace_forward` runs a model once and lists its matrix-multiplying operations
(:class:`TracedOp`); :func:`classify` traces the same architecture at two widths and gives
each operation the role its shapes imply (:class:`ClassifiedOp`); :func:`measure_activations`
returns the mean absolute output of every traced operation, for plots of activation size
against width.

The operations are seen through a :class:`torch.overrides.TorchFunctionMode`, so the
input is passed to the model as it is (no tensor subclass: concatenation, stacking, in-place
updates and ``isinstance`` checks behave as in training).

Deliberate differences from the published functions:

* **More operations are recorded:** ``F.scaled_dot_product_attention`` (op name
  ``"scaled_dot_product_attention"``) and ``F.conv1d/2d/3d`` (``"conv1d"`` ...), besides
  ``matmul``/``@``, ``mm``, ``bmm``, ``addmm``, ``F.linear`` and ``F.embedding`` (and their
  tensor-method forms). The published lists neither, so models using fused attention or
  convolutions get more entries here. Operations that PyTorch runs as one Python function
  (``nn.MultiheadAttention``'s ``F.multi_head_attention_forward``) are opaque to both.
* **Convolutions are classified by their channels** (the contracted ``in_channels`` and the
  output channels), not by the last (spatial) axis the published rule reads.
* A traced operation's parameter is the first **matrix** parameter among its inputs (the
  weight of ``addmm(bias, x, weight.T)``, not the bias); the published takes the first
  parameter of any shape.
* :func:`classify` also refuses two traces whose operations differ at some position (not
  only in count), since their roles would be paired wrongly.
* :func:`measure_activations` multiplies by the multipliers maxP applies: the ``scale`` of a
  :class:`~maxp_torch.ParametrizedModule` and that of a :class:`~maxp_torch.layers.HookedLayer`
  (the layers :class:`~maxp_torch.Rule` and the first-release API hook without wrapping). A
  ``scale`` attribute of any other module is not read.
* Errors are :class:`~maxp_core.errors.MaxPError` (a ``ValueError``, as published).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from maxp_core.errors import MaxPError
from maxp_torch.layers import HookedLayer
from maxp_torch.module import ParametrizedModule
from maxp_torch.trace import call_model

#: The recorded torch functions and the op name each is reported under.
TRACED_FUNCTIONS: dict[Any, str] = {
    torch.matmul: "matmul",
    torch.Tensor.matmul: "matmul",
    torch.Tensor.__matmul__: "matmul",
    torch.Tensor.__rmatmul__: "matmul",
    torch.mm: "mm",
    torch.Tensor.mm: "mm",
    torch.bmm: "bmm",
    torch.Tensor.bmm: "bmm",
    torch.addmm: "addmm",
    torch.Tensor.addmm: "addmm",
    F.linear: "linear",
    F.embedding: "embedding",
    F.scaled_dot_product_attention: "scaled_dot_product_attention",
    F.conv1d: "conv1d",
    F.conv2d: "conv2d",
    F.conv3d: "conv3d",
}

CONVOLUTIONS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}  # op name: number of spatial axes

# Frames in these directories are PyTorch's or maxP's own, never the user's line of code.
_SKIPPED_DIRECTORIES = tuple(
    directory + os.sep
    for directory in (
        os.path.dirname(os.path.abspath(torch.__file__)),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # the maxp_torch package
    )
)


@dataclass
class TracedOp:
    """One matrix-multiplying operation of a forward pass.

    Attributes:
      index: its position in the forward pass (0, 1, ...).
      op: ``"matmul"``, ``"mm"``, ``"bmm"``, ``"addmm"``, ``"linear"``, ``"embedding"``,
        ``"scaled_dot_product_attention"`` or ``"conv1d/2d/3d"``.
      input_shapes: the shapes of its tensor arguments, in order.
      output_shape: the shape of its result.
      param_name: the model parameter among its inputs (``"fc.weight"``), if any.
      module_path: the innermost module running it (``"blocks.0.attn"``; ``None`` at the root).
      source_loc: ``"file.py:LINE"`` of the first caller outside PyTorch and maxP.
    """

    index: int
    op: str
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    param_name: str | None = None
    module_path: str | None = None
    source_loc: str | None = None


@dataclass
class ClassifiedOp:
    """A traced operation (or an unused parameter, ``op="elementwise"``) with its role.

    ``layer_type`` is ``"embedding"``, ``"hidden"`` or ``"readout"``; ``parametrized`` says
    whether a model parameter is among its inputs. Shapes are given at both widths.
    """

    index: int
    op: str
    layer_type: str
    parametrized: bool
    param_name: str | None
    module_path: str | None
    source_loc: str | None
    input_shapes_small: list[tuple[int, ...]]
    input_shapes_large: list[tuple[int, ...]]
    output_shape_small: tuple[int, ...]
    output_shape_large: tuple[int, ...]


def maxp_multiplier(module: nn.Module) -> float | None:
    """The output multiplier maxP applies to ``module``, or ``None`` if it applies none.

    That is the ``scale`` of a :class:`~maxp_torch.ParametrizedModule`, or of the
    :class:`~maxp_torch.layers.HookedLayer` whose forward hook sits on ``module``.

    Examples:
      >>> fc = ParametrizedModule(nn.Linear(4, 4), width_dim=4, layer_type="hidden")
      >>> fc.scale = 0.5
      >>> maxp_multiplier(fc), maxp_multiplier(fc.inner)
      (0.5, None)
    """
    if isinstance(module, ParametrizedModule):
        return float(module.scale)
    for hook in module._forward_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, HookedLayer):
            return float(owner.scale)
    return None


def _caller_location() -> str | None:
    """``"file.py:LINE"`` of the innermost frame outside PyTorch and this package's compat layer."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        name = frame.f_code.co_filename
        if not name.startswith("<") and not path.startswith(_SKIPPED_DIRECTORIES):
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _tensor_inputs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensor arguments in order (positional, then keyword); ``a.__rmatmul__(b)`` is ``b @ a``."""
    positional = [a for a in args if isinstance(a, torch.Tensor)]
    if func is torch.Tensor.__rmatmul__:
        positional.reverse()
    return positional + [v for v in kwargs.values() if isinstance(v, torch.Tensor)]


class _OpRecorder(TorchFunctionMode):
    """Records every traced function called while it is active, with the module running it."""

    def __init__(self, model: nn.Module, measure: bool) -> None:
        super().__init__()
        self.measure = measure
        self.ops: list[TracedOp] = []
        self.activations: list[float] = []
        self.running: list[tuple[str, nn.Module]] = []
        self.parameter_names: dict[int, str] = {}
        for name, parameter in model.named_parameters():
            if parameter.numel() > 0 and parameter.device.type != "meta":
                self.parameter_names.setdefault(parameter.data_ptr(), name)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            op = TRACED_FUNCTIONS.get(func)
        except TypeError:  # an unhashable callable is none of ours
            op = None
        if op is not None and isinstance(out, torch.Tensor):
            self._record(op, _tensor_inputs(func, tuple(args), kwargs), out)
        return out

    def _parameter_of(self, inputs: list[torch.Tensor]) -> str | None:
        named = [(t, self.parameter_names.get(t.data_ptr())) for t in inputs if t.numel() > 0]
        found = [(t, name) for t, name in named if name is not None and t.device.type != "meta"]
        matrices = [name for t, name in found if t.ndim >= 2]
        candidates = matrices or [name for _, name in found if name is not None]
        return candidates[0] if candidates else None

    def _record(self, op: str, inputs: list[torch.Tensor], out: torch.Tensor) -> None:
        named = [name for name, _ in self.running if name]
        self.ops.append(
            TracedOp(
                index=len(self.ops),
                op=op,
                input_shapes=[tuple(t.shape) for t in inputs],
                output_shape=tuple(out.shape),
                param_name=self._parameter_of(inputs),
                module_path=named[-1] if named else None,
                source_loc=_caller_location(),
            )
        )
        if self.measure:
            self.activations.append(float(out.detach().abs().double().mean()) * self._multiplier())

    def _multiplier(self) -> float:
        """``|scale|`` of the innermost running module whose maxP multiplier is not 1."""
        for _, module in reversed(self.running):
            scale = maxp_multiplier(module)
            if scale is not None and scale != 1.0:
                return abs(scale)
        return 1.0


@contextmanager
def _recording(model: nn.Module, measure: bool) -> Iterator[_OpRecorder]:
    """An active :class:`_OpRecorder` whose stack follows the model's modules as they run."""
    recorder = _OpRecorder(model, measure)
    handles = []
    for name, module in model.named_modules():

        def enter(module: nn.Module, args: Any, name: str = name) -> None:
            recorder.running.append((name, module))

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if recorder.running:
                recorder.running.pop()

        handles.append(module.register_forward_pre_hook(enter, prepend=True))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with torch.no_grad(), recorder:
            yield recorder
    finally:
        for handle in handles:
            handle.remove()


def trace_forward(model: nn.Module, x: Any) -> list[TracedOp]:
    """The matrix-multiplying operations of one forward pass of ``model`` on ``x``, in call order.

    Args:
      model: any ``nn.Module`` (run as it is: its train/eval mode is not changed).
      x: a tensor batch, a tuple of positional arguments or a dict of keyword arguments.

    Returns:
      One :class:`TracedOp` per recorded call (the module docstring lists which functions).

    Examples:
      >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
      >>> [(op.op, op.param_name, op.module_path) for op in trace_forward(model, torch.randn(3, 4))]
      [('linear', '0.weight', '0'), ('linear', '2.weight', '2')]
    """
    with _recording(model, measure=False) as recorder:
        call_model(model, x)
    return recorder.ops


def measure_activations(model: nn.Module, x: Any) -> list[float]:
    """The mean absolute output of each traced operation of one forward pass, in call order.

    Each value is multiplied by ``|scale|`` of the innermost running module whose maxP
    multiplier is not 1 (a :class:`~maxp_torch.ParametrizedModule` or a hooked layer), so an
    operation inside a scaled layer reports the size of what the layer passes on.

    Args:
      model: any ``nn.Module`` (its train/eval mode is not changed).
      x: as for :func:`trace_forward`.

    Returns:
      One float per :class:`TracedOp` of :func:`trace_forward`.

    Examples:
      >>> fc = ParametrizedModule(nn.Linear(4, 4, bias=False), width_dim=4, layer_type="hidden")
      >>> fc.scale = 0.5
      >>> x = torch.randn(3, 4)
      >>> measure_activations(fc, x)[0] == float(fc(x).detach().abs().double().mean())
      True
    """
    with _recording(model, measure=True) as recorder:
        call_model(model, x)
    return recorder.activations


def _scaling_axes(op: TracedOp) -> tuple[int, int]:
    """The contracted size and the output size of ``op`` (the channels of a convolution)."""
    if op.op in CONVOLUTIONS:
        channel_axis = -(CONVOLUTIONS[op.op] + 1)
        return op.input_shapes[0][channel_axis], op.output_shape[channel_axis]
    return op.input_shapes[0][-1], op.output_shape[-1]


def layer_type_of(small: TracedOp, large: TracedOp) -> str:
    """The role of an operation traced at two widths.

    An embedding lookup, or an operation whose contracted size does not change with width,
    is ``"embedding"``; one whose contracted and output sizes both change is ``"hidden"``;
    one whose contracted size changes but output size does not is ``"readout"``.

    Examples:
      >>> small = TracedOp(0, "linear", [(2, 64), (10, 64)], (2, 10))
      >>> large = TracedOp(0, "linear", [(2, 128), (10, 128)], (2, 10))
      >>> layer_type_of(small, large)
      'readout'
    """
    if small.op == "embedding" or not small.input_shapes or not large.input_shapes:
        return "embedding"
    contracted_small, out_small = _scaling_axes(small)
    contracted_large, out_large = _scaling_axes(large)
    if contracted_small == contracted_large:
        return "embedding"
    return "hidden" if out_small != out_large else "readout"


def _check_same_architecture(small: list[TracedOp], large: list[TracedOp]) -> None:
    if len(small) != len(large):
        raise MaxPError(
            f"Op count mismatch: the small model ran {len(small)} traced ops and the large one "
            f"{len(large)}; classify needs the same architecture at two widths"
        )
    for s, b in zip(small, large, strict=True):
        if s.op != b.op:
            raise MaxPError(
                f"op {s.index} is {s.op!r} in the small model ({s.module_path or 'root'}) but {b.op!r} "
                f"in the large one ({b.module_path or 'root'}); classify needs the same architecture "
                "at two widths"
            )


def classify(
    small_model: nn.Module, large_model: nn.Module, small_input: Any, large_input: Any
) -> list[ClassifiedOp]:
    """Trace one architecture at two widths and give every operation its role.

    Roles follow :func:`layer_type_of`. After the traced operations, every parameter of
    ``small_model`` that no operation read as its parameter (biases, norms' gains, position
    tables added to the stream) is appended as an ``op="elementwise"`` ``"embedding"`` entry
    with empty shapes, as published.

    Args:
      small_model: the model at the smaller width.
      large_model: the same architecture at a larger width.
      small_input: an input for ``small_model`` (tensor, tuple or dict, as for :func:`trace_forward`).
      large_input: an input for ``large_model``.

    Returns:
      The :class:`ClassifiedOp` list: traced operations first, in call order.

    Raises:
      MaxPError: the two traces differ in length or in an operation's kind.

    Examples:
      >>> def mlp(width):
      ...     return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2, bias=False))
      >>> ops = classify(mlp(8), mlp(16), torch.randn(3, 4), torch.randn(3, 4))
      >>> [(op.op, op.layer_type, op.param_name) for op in ops]  # doctest: +NORMALIZE_WHITESPACE
      [('linear', 'embedding', '0.weight'), ('linear', 'readout', '2.weight'),
       ('elementwise', 'embedding', '0.bias')]
    """
    small = trace_forward(small_model, small_input)
    large = trace_forward(large_model, large_input)
    _check_same_architecture(small, large)
    result = [
        ClassifiedOp(
            index=s.index,
            op=s.op,
            layer_type=layer_type_of(s, b),
            parametrized=s.param_name is not None,
            param_name=s.param_name,
            module_path=s.module_path,
            source_loc=s.source_loc,
            input_shapes_small=s.input_shapes,
            input_shapes_large=b.input_shapes,
            output_shape_small=s.output_shape,
            output_shape_large=b.output_shape,
        )
        for s, b in zip(small, large, strict=True)
    ]
    read = {op.param_name for op in small if op.param_name is not None}
    for name, _ in small_model.named_parameters():
        if name in read:
            continue
        result.append(
            ClassifiedOp(
                index=len(result),
                op="elementwise",
                layer_type="embedding",
                parametrized=True,
                param_name=name,
                module_path=name.rsplit(".", 1)[0],
                source_loc=None,
                input_shapes_small=[],
                input_shapes_large=[],
                output_shape_small=(),
                output_shape_large=(),
            )
        )
    return result
