"""Measuring each layer's alignment during training, on the sample recorded before it.

:class:`Measurement` keeps what the measurements compare against (the sample, each measured
layer's initial input and weight, or with ``use_training_activations`` a copy of the
initial model and the latest training inputs) and measures every layer in a few stacked
operations on the layers' own device. maxP's forward passes run in
:func:`measurement_mode`: eval mode, no gradients, the global random state untouched.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from maxp_core import MaxPError, Role, alignment_of_layers, groups_of_equal_shape
from maxp_core.alignment import (
    AlignmentMode,
    RowNorms,
    alignments_of_norms,
    plain_norms_of_l2,
    plain_stack_l2,
    plain_suits,
    stack_norms,
    weight_norms,
)
from maxp_core.stacking import stack_chunks
from maxp_torch import sharding
from maxp_torch.discovery import unwrap
from maxp_torch.initialization import InitialWeights
from maxp_torch.layer_set import LayerSet
from maxp_torch.layers import LayerKind
from maxp_torch.module import INITIAL_VIEWS, ParametrizedModule
from maxp_torch.trace import call_model

Triple = tuple[float, float, float]


class Measurement:
    """Alignment measurements of a :class:`LayerSet` (layer ``k``'s row is ``layers.row[k]``)."""

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSet,
        initial: InitialWeights,
        *,
        sample_size: int,
        norm_mode: str,
        resample_w0: bool,
        use_training_activations: bool,
        overrides: Mapping[int, Triple],
    ) -> None:
        self.model = model
        self.layers = layers
        self.initial = initial
        self.sample_size = sample_size
        self.norm_mode = norm_mode
        self.resample_w0 = resample_w0
        self.use_training_activations = use_training_activations
        self.overrides = overrides
        self.z0: dict[int, torch.Tensor] = {}
        self.w0: dict[int, torch.Tensor] = {}
        # Per chunk of layers: stacked initial inputs and weights, and the weights' norms.
        self._initial_stacks: dict[tuple[int, ...], Any] = {}
        self._kinds: dict[int, LayerKind] = {}
        self._inners: dict[int, Any] = {}
        # Per chunk whose plain norms did not hold: measurements left to measure it scaled.
        self._scaled_left: dict[tuple[int, ...], int] = {}
        self.sample: Any = None
        self.initial_model: nn.Module | None = None
        self.recorded: dict[int, torch.Tensor] = {}

    def measured(self) -> list[int]:
        """The layers whose alignment is measured (weighted, not embeddings, not pinned, measurable)."""
        modules = self.layers.modules
        return [
            k
            for k in self.layers.weighted
            if k not in self.overrides and modules[k].role is not Role.EMBEDDING and self.kind(k).measurable
        ]

    def record(
        self,
        keep: dict[int, torch.Tensor],
        sizes: dict[int, tuple[int, int]] | None = None,
        training_only: bool = False,
    ) -> None:
        """Keep each module's first input rows in ``keep`` (and ``(samples, rows)`` of its whole
        input in ``sizes``) on every forward until :meth:`stop_recording`; with
        ``training_only``, only on forwards that build gradients (training, in train or eval
        mode), so that an evaluation under ``torch.no_grad()`` between the training step and
        the re-solve does not replace them."""
        index = {id(m): k for k, m in enumerate(self.layers.modules)}

        def recorder(module: Any, args: tuple[Any, ...]) -> None:
            k = index[id(module)]
            if training_only and not torch.is_grad_enabled():
                return
            if args and isinstance(args[0], torch.Tensor):
                x = args[0].detach() if args[0].requires_grad else args[0]
                rows = self.kind(k).rows(self.inner(k), x)
                keep[k] = leading_rows(rows, self.sample_size)
                if sizes is not None:
                    sizes[k] = (args[0].shape[0] if args[0].ndim else 0, rows.shape[0])

        for module in self.layers.modules:
            set_recorder(module, recorder)

    def stop_recording(self) -> None:
        for module in self.layers.modules:
            set_recorder(module, None)

    def devices(self) -> list[torch.device]:
        return list({p.device for m in self.layers.modules for p in m.parameters()})

    def cuda_devices(self) -> list[torch.device]:
        """The CUDA devices of the layers, whose random state a measurement keeps (none, without
        a walk over the parameters, where CUDA was never initialised)."""
        if not torch.cuda.is_initialized():
            return []
        return [d for d in self.devices() if d.type == "cuda"]

    def inputs(
        self, model: nn.Module, x: Any, sizes: dict[int, tuple[int, int]] | None = None
    ) -> dict[int, torch.Tensor]:
        """Each module's input on the first rows of ``x``, in :func:`measurement_mode`."""
        keep: dict[int, torch.Tensor] = {}
        self.record(keep, sizes)
        try:
            with measurement_mode(unwrap(model), self.cuda_devices(), reshard=True):
                call_model(unwrap(model), first_rows(x, self.sample_size))
        finally:
            self.stop_recording()
        return keep

    def capture(self, x: Any) -> None:
        """Record the sample and the measured layers' initial inputs and weights."""
        self.sample = first_rows(x, self.sample_size, clone=True)
        self._initial_stacks = {}
        self._scaled_left = {}
        if self.use_training_activations:
            self.initial_model = copy.deepcopy(unwrap(self.model))
            self.record(self.recorded, training_only=True)
            return
        sizes: dict[int, tuple[int, int]] = {}
        inputs = self.shrink_sample(self.inputs(self.model, self.sample, sizes), sizes)
        measured = self.measured()
        for k in measured:
            if k not in inputs:
                raise MaxPError(
                    f"layer {self.layers.names[k]!r} was not called by the model on the captured input"
                )
        if self.resample_w0:
            for k in measured:
                self.z0[k] = inputs[k].clone()
                self.initial.check_redraw(k)
        else:
            self.store_initial(measured, inputs)
        self.publish_views()

    def store_initial(self, measured: list[int], inputs: dict[int, torch.Tensor]) -> None:
        """Keep each measured layer's initial input and weight, equally shaped layers' stacked as
        the measurement reads them (:meth:`_keep_stacked`). Sharded weights are kept as they
        are (stacking would gather them)."""
        plain = [k for k in measured if not sharding.is_sharded(self.own_weight(k))]
        for k in set(measured) - set(plain):
            self.z0[k], self.w0[k] = inputs[k].clone(), self.own_weight(k).clone()
        weights = {k: self.weight_matrix(k) for k in plain}
        for chunk in self.chunks(plain, inputs, weights):
            live = [self.own_weight(k) for k in chunk]
            entry = self._keep_stacked(chunk, [inputs[k] for k in chunk], live, live=True)
            self._initial_stacks[tuple(chunk)] = entry

    def own_weight(self, k: int) -> torch.Tensor:
        """Layer ``k``'s weight, detached, in its own layout."""
        weight = self.layers.modules[k].weight
        assert weight is not None
        return weight.detach()

    def chunks(
        self, measured: list[int], rows: dict[int, torch.Tensor], weights: dict[int, torch.Tensor]
    ) -> list[list[int]]:
        """The measured layers in the stacks they are measured in: equally shaped (inputs
        ``rows``, weight matrices ``weights``) and on one device, as many as
        :func:`~maxp_core.stacking.stack_chunks` puts together."""

        def shape_of(k: int) -> tuple[Any, ...]:
            w = weights[k]
            return (tuple(rows[k].shape), tuple(w.shape), w.dtype, w.device)

        groups = groups_of_equal_shape(measured, shape_of)
        return [chunk for group in groups for chunk in _chunks_of(group, weights[group[0]])]

    def publish_views(self) -> None:
        """Give each layer the published ``pm._z0`` / ``pm._w0`` views of what was recorded."""
        me = weakref.ref(self)
        for k, module in enumerate(self.layers.modules):

            def view(what: str, k: int = k) -> torch.Tensor | None:
                measurement = me()
                if measurement is None:
                    return None
                if what == "z0":
                    return measurement.z0.get(k)
                return measurement.initial_weight(k) if k in measurement.z0 else None

            INITIAL_VIEWS[module] = view

    def restore(
        self,
        z0: dict[int, torch.Tensor],
        w0: dict[int, torch.Tensor],
        sample: Any,
        initial_model: Mapping[str, Any] | None,
        scaled_left: Mapping[tuple[int, ...], int] | None = None,
    ) -> None:
        """Take back what :meth:`capture` recorded and :meth:`scaled_left` said (from a checkpoint)."""
        self.z0, self.w0, self.sample = z0, w0, sample
        self._initial_stacks = {}
        self._scaled_left = dict(scaled_left or {})
        self.publish_views()
        if self.use_training_activations and initial_model is not None:
            self.initial_model = copy.deepcopy(unwrap(self.model))
            self.initial_model.load_state_dict(initial_model)
            self.record(self.recorded, training_only=True)

    def shrink_sample(
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
        batch = leading_size(self.sample)
        measured = [k for k in self.measured() if k in sizes]
        needed = self.samples_needed(measured, sizes, batch)
        keep = batch if needed is None else needed
        shrinks = keep < batch
        if not any_rank(shrinks, self.devices()[0]):
            return inputs
        # Under FSDP a forward pass gathers weights with every rank: all ranks run the trial pass,
        # those that keep their sample on it whole, so each takes part in as many as the others.
        smaller = first_rows(self.sample, keep, clone=True)
        trial = self.inputs(self.model, smaller)
        if not shrinks or any(k not in trial or trial[k].shape != inputs[k].shape for k in measured):
            return inputs
        self.sample = smaller
        return trial

    def samples_needed(
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

    def current_and_initial_inputs(self, x: Any) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        if not self.use_training_activations:
            assert self.sample is not None
            return self.inputs(self.model, self.sample), self.z0
        if x is None or not self.recorded:
            raise MaxPError(
                "use_training_activations=True: step(x) needs the training batch x after a training forward"
            )
        assert self.initial_model is not None
        rows = first_rows(x, self.sample_size)
        initial_modules = [m for m in self.initial_model.modules() if isinstance(m, ParametrizedModule)]
        keep: dict[int, torch.Tensor] = {}
        index = {id(m): k for k, m in enumerate(initial_modules)}

        def recorder(module: ParametrizedModule, args: tuple[Any, ...]) -> None:
            keep[index[id(module)]] = leading_rows(
                module.kind.rows(module.inner, args[0].detach()), self.sample_size
            )

        for m in initial_modules:
            set_recorder(m, recorder)
        try:
            with measurement_mode(self.initial_model, self.cuda_devices()):
                call_model(self.initial_model, rows)
        finally:
            for m in initial_modules:
                set_recorder(m, None)
        now = {k: v[: keep[k].shape[0]] for k, v in self.recorded.items() if k in keep}
        return now, keep

    def initial_weight(self, k: int) -> torch.Tensor:
        weight = self.layers.modules[k].weight
        assert weight is not None
        if self.use_training_activations:
            assert self.initial_model is not None
            initial_modules = [m for m in self.initial_model.modules() if isinstance(m, ParametrizedModule)]
            w0 = initial_modules[k].weight
            assert w0 is not None
            return w0.detach()
        if self.resample_w0:
            return self.initial.draw(self.layers.group_of(k), weight.detach())
        return self.w0[k]

    def weight_matrix(self, k: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``k``'s weight (or ``weight``, laid out as it) as ``(out, fan_in)``, detached."""
        weight = self.live_weight(k) if weight is None else weight
        return self.kind(k).matrix(sharding.full(weight.detach()))

    def live_weight(self, k: int) -> torch.Tensor:
        """Layer ``k``'s weight as its module holds it now.

        Read from the wrapped module's parameters where the weight is a plain one (not a
        property of its class: a parametrization, a wrapper's): ``module.weight`` goes through
        ``nn.Module.__getattr__`` twice, which on a model of many small layers costs as much
        as a tenth of the measurement.
        """
        inner = self.inner(k)
        weight: torch.Tensor | None = None
        if isinstance(inner, nn.Module) and getattr(type(inner), "weight", None) is None:
            weight = inner._parameters.get("weight")
        if weight is None:
            weight = self.layers.modules[k].weight
        assert weight is not None
        return weight

    def inner(self, k: int) -> Any:
        """The module layer ``k`` wraps (what a layer wraps does not change: looked up once)."""
        if k not in self._inners:
            self._inners[k] = self.layers.modules[k].inner
        return self._inners[k]

    def kind(self, k: int) -> LayerKind:
        """How layer ``k``'s weight and inputs read; what a module wraps does not change, so it is
        looked up once (the lookup walks the kinds on every call)."""
        if k not in self._kinds:
            self._kinds[k] = self.layers.modules[k].kind
        return self._kinds[k]

    @torch.no_grad()
    def measure(self, x: Any, previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Measured alignments per graph row (``previous`` where not measured) and which rows are
        not finite."""
        now, initial = self.current_and_initial_inputs(x)
        values = previous.copy()
        nonfinite = np.zeros(len(values), dtype=bool)
        measured = self.measured()
        if not measured:
            return values, nonfinite
        weights = {k: self.weight_matrix(k) for k in measured}
        self._check_measurable(measured, now, weights)

        chunks = self.chunks(measured, now, weights)
        if self.norm_mode == "rms":
            pieces = self._rms_of_chunks(chunks, now, weights, initial)
        else:
            pieces = _to_host([self._spectral_piece(chunk, now, weights, initial) for chunk in chunks])
        order = [k for chunk in chunks for k in chunk]
        results = _mean_over_ranks(np.concatenate(pieces), weights[order[0]].device)
        rows = [self.layers.row[k] for k in order]
        values[rows] = results[:, :3]
        nonfinite[rows] = results[:, 3] < 1.0
        return values, nonfinite

    def _rms_of_chunks(
        self,
        chunks: list[list[int]],
        now: dict[int, torch.Tensor],
        weights: dict[int, torch.Tensor],
        initial: dict[int, torch.Tensor],
    ) -> list[np.ndarray]:
        """Each chunk's ``(layers, 4)`` rms alignments and finiteness (:func:`_finish_rms`).

        Chunks of one floating type with a wide range are measured plain first
        (:func:`~maxp_core.alignment.plain_stack_l2`, no powers of two); those whose norms do
        not hold (:func:`~maxp_core.alignment.plain_norms_of_l2`: a weight that did not change,
        activations that vanish with depth, a diverging run) are measured again scaled, in a
        second copy to the host, and scaled directly for their next :data:`SCALED_AFTER_MISS`
        measurements. The initial stacks are taken once for both passes (taking them may
        gather sharded weights, a collective every rank must join).
        """
        stacks = [self.initial_stacks(chunk, initial) for chunk in chunks]
        plain = [i for i, chunk in enumerate(chunks) if self._tries_plain(chunk, now, weights, stacks[i])]
        tried = set(plain)
        host = _to_host(
            [self._rms_piece(chunk, now, weights, stacks[i], i in tried) for i, chunk in enumerate(chunks)]
        )
        shapes = [tuple(weights[chunks[i][0]].shape) for i in plain]
        finfos = [torch.finfo(weights[chunks[i][0]].dtype) for i in plain]
        redo = []
        for i, finished in zip(plain, _plain_finished([host[i] for i in plain], shapes, finfos), strict=True):
            if finished is not None:
                host[i] = finished
            else:
                redo.append(i)
                self._scaled_left[tuple(chunks[i])] = SCALED_AFTER_MISS
        if redo:
            again = _to_host([self._rms_piece(chunks[i], now, weights, stacks[i], False) for i in redo])
            for i, piece in zip(redo, again, strict=True):
                host[i] = piece
        fan_ins = [weights[chunk[0]].shape[-1] for chunk in chunks for _ in chunk]
        return _finish_rms(host, fan_ins)

    def scaled_left(self) -> dict[tuple[int, ...], int]:
        """The chunks measured scaled directly, each with the measurements it has left so
        (:data:`SCALED_AFTER_MISS`). Checkpointed: plain and scaled norms may differ in the last
        bit, so a resumed run must choose as the uninterrupted one did."""
        return {chunk: left for chunk, left in self._scaled_left.items() if left > 0}

    def _tries_plain(
        self,
        chunk: list[int],
        now: dict[int, torch.Tensor],
        weights: dict[int, torch.Tensor],
        stack: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    ) -> bool:
        """Whether a chunk is measured plain first: its inputs and weights, now and initial, of
        one floating type that suits it (:func:`~maxp_core.alignment.plain_suits`), no autocast
        that would compute its products in another, and its plain norms held at least
        :data:`SCALED_AFTER_MISS` measurements ago."""
        key = tuple(chunk)
        left = self._scaled_left.get(key, 0)
        if left > 0:
            self._scaled_left[key] = left - 1
            return False
        weight = weights[chunk[0]]
        same = now[chunk[0]].dtype == stack[0].dtype == stack[1].dtype == weight.dtype
        autocast = torch.is_autocast_enabled(weight.device.type)
        return same and not autocast and plain_suits(torch.finfo(weight.dtype))

    def _rms_piece(
        self,
        chunk: list[int],
        now: dict[int, torch.Tensor],
        weights: dict[int, torch.Tensor],
        stack: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        plain: bool,
    ) -> torch.Tensor:
        """A chunk's packed :class:`~maxp_core.alignment.RowNorms` (given its :meth:`initial_stacks`)
        followed by whether its inputs are finite; measured ``plain``, its
        :func:`~maxp_core.alignment.plain_stack_l2` instead (:func:`_plain_finished` reads it)."""
        z, w = stack_of([now[k] for k in chunk]), stack_of([weights[k] for k in chunk])
        z0, w0, w0_norms = stack
        scratch = len(chunk) > 1  # the stacks are copies
        if plain:
            return plain_stack_l2(z0, z, w0, w, torch, scratch, w0_norms)
        finite_inputs = all_finite(z)  # before a measurement on a stacked copy overwrites it
        packed = stack_norms(z0, z, w0, w, torch, scratch, w0_norms).packed(torch)
        return torch.cat([packed, finite_inputs.to(packed.dtype)[:, None]], dim=1)

    def _spectral_piece(
        self,
        chunk: list[int],
        now: dict[int, torch.Tensor],
        weights: dict[int, torch.Tensor],
        initial: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """A chunk's ``(layers, 4)`` spectral alignments and finiteness."""
        z, w = stack_of([now[k] for k in chunk]), stack_of([weights[k] for k in chunk])
        z0, w0, _ = self.initial_stacks(chunk, initial)
        finite = all_finite(z) & all_finite(w)
        layers_of_chunk = list(zip(z0, z, w0, w, strict=True))
        mode = cast(AlignmentMode, self.norm_mode)
        al: Any = alignment_of_layers(layers_of_chunk, mode, w.shape[-1], xp=torch)
        return torch.stack([*al, finite.to(al[0].dtype)], dim=1)

    def initial_stacks(
        self, chunk: list[int], initial: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The chunk's initial inputs ``(layers, rows, fan_in)`` and weights ``(layers, out,
        fan_in)``, and :func:`~maxp_core.alignment.weight_norms` of the weights (``None``
        where the initial weights are not stored).

        Stored initial weights and inputs do not change: :meth:`store_initial` keeps them
        stacked; those restored from a checkpoint are stacked at their first measurement, each
        layer's own ``z0``/``w0`` then a view of its stack (no second copy is kept).
        """
        if self.resample_w0 or self.use_training_activations:
            z0 = stack_of([initial[k] for k in chunk])
            return z0, stack_of([self.weight_matrix(k, self.initial_weight(k)) for k in chunk]), None
        key = tuple(chunk)
        if key not in self._initial_stacks:
            self._initial_stacks[key] = self._stack_initial(chunk)
        z0, w0, norms = self._initial_stacks[key]
        if w0 is None:  # weights whose matrix is not a view of them: stacked each time
            w0 = stack_of([self.weight_matrix(k, self.w0[k]) for k in chunk])
        return z0, w0, norms

    def _stack_initial(self, chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """:meth:`initial_stacks` of initial inputs and weights kept layer by layer (restored
        from a checkpoint)."""
        return self._keep_stacked(chunk, [self.z0[k] for k in chunk], [self.w0[k] for k in chunk], live=False)

    def _keep_stacked(
        self, chunk: list[int], inputs: list[torch.Tensor], weights: list[torch.Tensor], live: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Keep a chunk's initial ``inputs`` and ``weights`` (each in its own layout) as the
        measurement reads them: stacked, each layer's own ``z0``/``w0`` a view of its stack (one
        copy). A weight read in another layout (transposed) keeps its own, as checkpoints hold
        it. ``live``: the tensors are the model's own (at capture), copied where kept as they
        are. Returns the :meth:`initial_stacks` entry (the weights' stack ``None`` where they
        are not views of it)."""
        if live and len(chunk) == 1:
            inputs, weights = [inputs[0].clone()], [weights[0].clone()]
        matrices = [self.weight_matrix(k, w) for k, w in zip(chunk, weights, strict=True)]
        z0, w0 = stack_of(inputs), stack_of(matrices)
        views = all(_same_memory(m, w) for m, w in zip(matrices, weights, strict=True))
        for i, (k, weight) in enumerate(zip(chunk, weights, strict=True)):
            several = len(chunk) > 1
            self.z0[k] = z0[i] if several else inputs[0]
            if several and views:
                self.w0[k] = w0[i].view(weight.shape)
            else:
                self.w0[k] = weight.clone() if live and several else weight
        return z0, w0 if views else None, weight_norms(w0, torch)

    def _check_measurable(
        self, measured: list[int], now: dict[int, torch.Tensor], weights: dict[int, torch.Tensor]
    ) -> None:
        for k in measured:
            name, module = self.layers.names[k], self.layers.modules[k]
            if now[k].shape[-1] != weights[k].shape[1]:
                raise MaxPError(
                    f"layer {name!r} ({module.kind.name}): its input rows have "
                    f"{now[k].shape[-1]} features but its weight contracts {weights[k].shape[1]}; dynamic "
                    "alignment measures layers whose input multiplies the weight (Linear, Conv, Conv1D); "
                    "pin this layer with alignment_overrides"
                )
            if now[k].is_complex() or weights[k].is_complex():
                raise MaxPError(f"layer {name!r}: complex weights or inputs cannot be measured")


#: After a chunk's plain norms did not hold, how many measurements it is measured scaled directly
#: before it is tried plain again: a frozen layer or activations that vanish with depth would
#: otherwise cost two measurements every time.
SCALED_AFTER_MISS = 16


def _chunks_of(layers: list[int], weight: torch.Tensor) -> list[list[int]]:
    """:func:`~maxp_core.stacking.stack_chunks` of layers shaped as ``weight``."""
    return stack_chunks(layers, weight.numel() * weight.element_size(), weight.device.type == "cpu")


def set_recorder(layer: Any, recorder: Callable[[Any, tuple[Any, ...]], None] | None) -> None:
    """Have ``layer`` (a :class:`ParametrizedModule` or a hooked layer) call ``recorder(layer,
    args)`` before each forward; ``None`` stops it.

    Set around every measurement on every layer: written straight into the instance, without
    ``nn.Module.__setattr__``'s checks for parameters and submodules (on a model of many
    small layers those cost a third of the recording's overhead).
    """
    layer.__dict__["_recorder"] = recorder


def stack_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Equally shaped tensors as one stack: a view of a lone tensor, else a copy (which a
    measurement may overwrite)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _same_memory(matrix: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``matrix`` reads ``weight``'s memory in its order (a reshape of it)."""
    return (
        matrix.data_ptr() == weight.data_ptr()
        and matrix.is_contiguous()
        and weight.is_contiguous()
        and matrix.numel() == weight.numel()
    )


def _to_host(pieces: list[torch.Tensor]) -> list[np.ndarray]:
    """The pieces as float64 host arrays, copied from the device in one transfer (in their own
    type, widened on the host)."""
    device = pieces[0].device  # a model spread over devices: collected on one, copied once
    flat = torch.cat([piece.flatten().to(device) for piece in pieces]).cpu().to(torch.float64).numpy()
    sizes = np.cumsum([piece.numel() for piece in pieces])[:-1]
    return [part.reshape(piece.shape) for part, piece in zip(np.split(flat, sizes), pieces, strict=True)]


def _plain_finished(
    pieces: list[np.ndarray], shapes: list[tuple[int, ...]], finfos: list[Any]
) -> list[np.ndarray | None]:
    """Each plainly measured piece (:func:`~maxp_core.alignment.plain_stack_l2` of weights of
    ``shapes``, values of the type ``finfos`` describes) laid out as a scaled one (packed
    norms, then 1.0: norms that hold are finite, and so are the inputs they were taken of)
    where its norms hold (:func:`~maxp_core.alignment.plain_norms_of_l2`), else ``None``.
    Pieces of one shape and type are finished together."""
    finished: list[np.ndarray | None] = [None] * len(pieces)
    kinds = [(p.shape[-1], s, f.dtype) for p, s, f in zip(pieces, shapes, finfos, strict=True)]
    for indices in groups_of_equal_shape(range(len(pieces)), kinds.__getitem__):
        out, fan_in = shapes[indices[0]]
        group = [pieces[i] for i in indices]
        finfo = finfos[indices[0]]
        norms, held = plain_norms_of_l2(np.concatenate(group), fan_in=fan_in, out=out, finfo=finfo)
        laid_out = np.concatenate([norms.packed(), np.ones((len(held), 1))], axis=1)
        parts = zip(indices, _split_like(laid_out, group), _split_like(held, group), strict=True)
        for i, part, holds in parts:
            finished[i] = part if holds.all() else None
    return finished


def _split_like(rows: np.ndarray, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """``rows`` (one per row of the pieces, concatenated) split back into the pieces' lengths."""
    return np.split(rows, np.cumsum([len(piece) for piece in pieces])[:-1])


def _finish_rms(packed: list[np.ndarray], fan_ins: list[int]) -> list[np.ndarray]:
    """Each stack's ``(layers, 4)``: alpha, omega, u and whether its weight and inputs are
    finite (1.0 or 0.0), from the packed :class:`~maxp_core.alignment.RowNorms` of every stack
    followed by its inputs' finiteness.

    Stacks measured on as many rows are finished together, in one pass of the host's small
    operations, whatever their shapes (each layer scales with its own fan_in).
    """
    starts = np.cumsum([0] + [len(piece) for piece in packed])
    widths = np.asarray(fan_ins)
    out: list[np.ndarray] = [np.empty(0)] * len(packed)
    for indices in groups_of_equal_shape(range(len(packed)), lambda i: packed[i].shape[-1]):
        stacked = np.concatenate([packed[i] for i in indices])
        fan_in = np.concatenate([widths[starts[i] : starts[i + 1]] for i in indices])
        al, finite_weights = alignments_of_norms(RowNorms.unpacked(stacked[:, :-1]), fan_in)
        finite = finite_weights & (stacked[:, -1] == 1.0)
        results = np.stack([*al, finite.astype(np.float64)], axis=1)
        for i, part in zip(indices, _split_like(results, [packed[i] for i in indices]), strict=True):
            out[i] = part
    return out


def _mean_over_ranks(values: np.ndarray, device: torch.device) -> np.ndarray:
    """The measurements averaged over ranks (as they are without a process group).

    Reduced on the device the layers live on (NCCL groups take no CPU tensors). A NaN on any
    rank stays NaN in the mean.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return values
    stacked = torch.from_numpy(values).to(device)
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return stacked.cpu().numpy()


@contextlib.contextmanager
def measurement_mode(model: nn.Module, devices: list[torch.device], reshard: bool = False) -> Iterator[None]:
    """Run maxP's own forward passes without side effects on training.

    The model is put in eval mode (dropout off, so its noise does not enter the alignments)
    and every module's own train/eval flag is restored afterwards; the global random number
    generators (CPU and the CUDA devices in use) are restored too, so turning maxP on does
    not change the training's dropout or sampling sequence. With ``reshard``, the FSDP2
    modules found on the same walk over the model are returned to their shards afterwards
    (:func:`~maxp_torch.sharding.reshard`).
    """
    flags = [(module, module.training) for module in _modules_of(model)]
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            _set_training(flags, lambda _: False)
            try:
                yield
            finally:
                _set_training(flags, lambda training: training)
    finally:
        if reshard:
            sharding.reshard_modules(module for module, _ in flags)


def _modules_of(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` once, ``model`` first: what ``model.modules()`` yields (in
    another order), without the nested generators and names that walk builds, twice the time."""
    modules, seen = [model], {id(model)}
    for module in modules:  # grows while it is read
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
    return modules


def _set_training(flags: list[tuple[nn.Module, bool]], mode: Callable[[bool], bool]) -> None:
    """Each module's ``training`` flag to ``mode(its flag in flags)``.

    What ``model.train(mode)`` does, without a call per module through ``nn.Module.__setattr__``
    (on a model of many small layers that bookkeeping cost as much as the measurement's
    forward pass). A module that overrides ``train`` is set by its own method.
    """
    for module, training in flags:
        if type(module).train is nn.Module.train:
            module.__dict__["training"] = mode(training)
        else:
            module.train(mode(training))


def all_finite(stack: torch.Tensor) -> torch.Tensor:
    """Whether each entry of a stack holds only finite numbers, in one pass.

    A float64 sum is NaN or infinite exactly when an entry is (float32 and smaller
    values cannot overflow it).
    """
    return torch.isfinite(stack.flatten(1).sum(1, dtype=torch.float64))


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

    Examples:
      >>> rows = torch.zeros(1024, 8)
      >>> leading_rows(rows, 32).untyped_storage().nbytes(), leading_rows(rows, 2048) is rows
      (1024, True)
    """
    return rows[:n].clone() if rows.shape[0] > n else rows


def leading_size(x: Any) -> int:
    """The number of samples in a batch :func:`first_rows` takes from (its first tensor's first axis)."""
    values = x.values() if isinstance(x, Mapping) else x if isinstance(x, tuple) else [x]
    return next(v.shape[0] for v in values if isinstance(v, torch.Tensor) and v.ndim > 0)
