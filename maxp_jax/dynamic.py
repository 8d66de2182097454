"""Dynamic maxP: measure alignments inside ``jit`` and re-solve the LP on the host."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from maxp_core import (
    MaxPError,
    Resolver,
    Role,
    SolveSchedule,
    alignment_of_layers,
    check_ema_decay,
    groups_of_equal_shape,
    unused_alignments,
    validate,
    warn_user,
)
from maxp_core.alignment import MODES, Alignment, AlignmentMode, measure_layers, measure_stacks, weight_norms
from maxp_core.stacking import stack_chunks
from maxp_jax.capture import LayerInputs
from maxp_jax.spec import MaxPSpec, leaf_key, path_string

#: One layer's ``(z0, z, w0, w)``.
Quad = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

#: dtype of the factors in the state: fixed, so assigning new factors never recompiles.
FACTOR_DTYPE = jnp.float32
"""The dtype of the learning-rate factors, exponents and alignments kept in the optimizer state."""


@dataclass(frozen=True)
class DynamicAlignment:
    """When and how :func:`~maxp_jax.scale_by_maxp` re-measures alignments and re-solves.

    Args:
      apply_fn: ``apply_fn(params, x)``, the model's forward (e.g. ``model.apply``).
      sample_input: a fixed batch the alignments are measured on.
      warmup_steps: optimizer steps before the first re-solve.
      solve_interval: steps between re-solves.
      stop_after: no re-solve after this many steps (e.g. where a WSD decay starts).
      sample_size: rows of each layer's input kept (rows are the flattened leading axes).
      mode: ``"rms"`` or ``"spectral"`` (see :mod:`maxp_core.alignment`).
      alignment_ema: weight of the previous alignment in an exponential average, in [0, 1).
      c_ema: weight of the previous ``c`` in an exponential average, in [0, 1).
      resample_w0: do not keep the initial weights; draw them again from ``init_key``
        (they must come from :func:`~maxp_jax.abc_init` with that key and ``std_prefactor``).
      init_key: the key given to :func:`~maxp_jax.abc_init`, for ``resample_w0``.
      std_prefactor: the ``std_prefactor`` given to :func:`~maxp_jax.abc_init`.
      use_training_activations: measure on the training forward's own layer inputs
        instead of a separate forward on ``sample_input``. The update then needs two
        extra arguments: ``maxp_inputs``, the inputs :class:`~maxp_jax.LayerInputs`
        returned in the training forward, and ``maxp_batch``, a prefix of that batch
        (the initial model is run on it to get the matching initial inputs). The
        initial params are kept in the state instead of the sample's inputs.
        ``sample_input`` then only serves to find the layers' inputs once. An empty
        ``maxp_batch`` leaves nothing to measure (the measurements are missing), and
        NaN or inf in ``maxp_inputs`` or in the initial model's inputs on
        ``maxp_batch`` skips the re-solve. The training forward then runs through
        :class:`~maxp_jax.LayerInputs`, which walks into the ``jax.checkpoint`` and
        custom-derivative bodies that hold a weight: their gradients are the plain
        ones of the body (no rematerialisation there, no custom rule).
      measure_only: measure the alignments on this schedule (same rules and smoothing,
        kept in the state's ``alignment`` and in :func:`~maxp_jax.metrics`) but never
        re-solve: the factors stay the spec's. ``solves`` then counts measurements.
      collections: the model's other variable collections at initialisation (flax linen's
        ``{"batch_stats": ...}``, an nnx ``BatchStat`` state). ``apply_fn`` is then called
        as ``apply_fn(params, x, collections)`` and should run the model in eval mode on
        them (``train=False``, ``use_running_average=True``): the initial inputs are
        measured with these, and every later measurement with the current ones, given to
        the update as ``tx.update(grads, state, params, maxp_collections=current)`` (in the
        step) or to :class:`~maxp_jax.SolveBetweenSteps` as ``collections=current``. A
        measurement without them is refused, never run on stale statistics.
      in_step: re-solve inside the optimizer update (``jax.lax.cond`` and a host callback
        in the compiled step). ``False`` leaves the step free of both, and
        :class:`~maxp_jax.SolveBetweenSteps`, called after each step, measures and
        re-solves instead. A compiled step that holds a host callback loses JAX's fast
        C++ dispatch on every call, due or not; ``in_step=False`` avoids that cost for
        steps short enough that dispatch shows. Not with ``use_training_activations``.

    Raises:
      MaxPError: an argument has the wrong type or lies out of range (numpy integers and
        booleans are accepted and stored as Python ones).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from maxp_jax import MaxPSpec, Rule, scale_by_maxp
      >>> params = {"w1": jnp.ones((4, 32)) / 8, "w2": jnp.ones((32, 2)) / 32}
      >>> apply = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
      >>> spec = MaxPSpec(params, [Rule("w1", "embedding"), Rule("w2", "readout")])
      >>> dyn = DynamicAlignment(apply, jnp.ones((8, 4)), warmup_steps=1, solve_interval=1)
      >>> tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.1))
      >>> state = tx.init(params)
    """

    apply_fn: Callable[..., Any]
    sample_input: Any
    warmup_steps: int = 0
    solve_interval: int = 1
    stop_after: int | None = None
    sample_size: int = 32
    mode: str = "rms"
    alignment_ema: float = 0.0
    c_ema: float = 0.0
    resample_w0: bool = False
    init_key: jax.Array | None = None
    std_prefactor: float = 1.0
    use_training_activations: bool = False
    measure_only: bool = False
    in_step: bool = True
    collections: Any = None

    def __post_init__(self) -> None:
        if not callable(self.apply_fn):
            kind = type(self.apply_fn).__name__
            raise MaxPError(f"DynamicAlignment: apply_fn must be callable, got {kind}")
        schedule = SolveSchedule(self.warmup_steps, self.solve_interval, self.stop_after)  # validates
        checked = {
            "warmup_steps": int(schedule.warmup_steps),
            "solve_interval": int(schedule.solve_interval),
            "stop_after": None if schedule.stop_after is None else int(schedule.stop_after),
            "sample_size": validate.integer(self.sample_size, "DynamicAlignment: sample_size", 1),
            "mode": validate.choice(self.mode, "DynamicAlignment: mode", MODES),
            "alignment_ema": check_ema_decay("alignment_ema", self.alignment_ema),
            "c_ema": check_ema_decay("c_ema", self.c_ema),
            "resample_w0": validate.boolean(self.resample_w0, "DynamicAlignment: resample_w0"),
            "std_prefactor": validate.positive_number(self.std_prefactor, "DynamicAlignment: std_prefactor"),
            "use_training_activations": validate.boolean(
                self.use_training_activations, "DynamicAlignment: use_training_activations"
            ),
            "measure_only": validate.boolean(self.measure_only, "DynamicAlignment: measure_only"),
            "in_step": validate.boolean(self.in_step, "DynamicAlignment: in_step"),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.use_training_activations and not self.in_step:
            raise MaxPError(
                "use_training_activations=True needs in_step=True: the training forward's layer inputs "
                "reach only the optimizer update, not SolveBetweenSteps"
            )
        if self.collections is not None and self.use_training_activations:
            raise MaxPError(
                "DynamicAlignment: collections and use_training_activations do not combine: the training "
                "forward's own layer inputs already saw the current statistics"
            )
        if self.resample_w0 and self.init_key is None:
            raise MaxPError("resample_w0=True needs init_key, the key abc_init drew the initial weights with")


#: Set on a DynamicAlignment once a SolveBetweenSteps re-solves for it (or once it was warned about).
_SOLVED_BETWEEN_STEPS = "_maxp_solved_between_steps"
_WARNED = "_maxp_warned_never_solved"


def mark_solved_between_steps(dynamic: DynamicAlignment) -> None:
    """Note that a :class:`~maxp_jax.SolveBetweenSteps` re-solves for ``dynamic``."""
    object.__setattr__(dynamic, _SOLVED_BETWEEN_STEPS, True)


def warn_if_never_solved(dynamic: DynamicAlignment) -> None:
    """Warn (once, when the update is traced) if nothing re-solves for an ``in_step=False`` run."""
    if getattr(dynamic, _SOLVED_BETWEEN_STEPS, False) or getattr(dynamic, _WARNED, False):
        return
    object.__setattr__(dynamic, _WARNED, True)
    warn_user(
        "DynamicAlignment(in_step=False): the optimizer update only applies the factors, and no "
        "SolveBetweenSteps was built for it, so the rates will stay at the preset's; build "
        "solve = SolveBetweenSteps(spec, dynamic) before the first step and call it after every "
        "update, or pass in_step=True"
    )


class AlignmentResolver:
    """The measuring (traced) and solving (host) halves of a dynamic re-solve.

    Inside ``jit``, :meth:`measure` returns the raw alignments (NaN where a measurement
    carried no information) and which layers' weights or inputs are not finite; on the
    host, a :class:`maxp_core.Resolver` applies the rules that keep a learning rate from
    being silently wrong (skip on non-finite numbers, keep the previous alignment of a
    missing measurement, keep the last rates when the LP fails) and the EMAs.
    """

    def __init__(self, spec: MaxPSpec, config: DynamicAlignment) -> None:
        if config.resample_w0 and spec.base_width is not None:
            raise MaxPError(
                "resample_w0=True redraws maxP's own initial weights, but with base_width abc_init keeps the "
                "params' own initialisation: use resample_w0=False (the initial weights are stored)"
            )
        self.spec = spec
        self.config = config
        self.schedule = SolveSchedule(config.warmup_steps, config.solve_interval, config.stop_after)
        self.inputs: LayerInputs | None = None
        fixed = {k: layer.alignment for k, layer in enumerate(spec.layers) if layer.alignment is not None}
        self.resolver = Resolver(
            [layer.name for layer in spec.layers],
            spec.solve,
            alignment_ema=config.alignment_ema,
            c_ema=config.c_ema,
            overrides=fixed,
            unused=unused_alignments(spec.graph, [layer.name for layer in spec.layers]),
            measure_only=config.measure_only,
        )
        self._lock = threading.Lock()

    # --- traced ---------------------------------------------------------------------

    def layer_inputs(self, params: Any) -> LayerInputs:
        """The model's forward that also returns each layer's input (built once)."""
        if self.inputs is None:
            self.inputs = LayerInputs(self.spec, self._forward, params, self._sample(self.config.collections))
        return self.inputs

    def _forward(self, params: Any, x: Any) -> Any:
        """``apply_fn(params, x)``, or ``apply_fn(params, sample, collections)`` with collections."""
        if self.config.collections is None:
            return self.config.apply_fn(params, x)
        return self.config.apply_fn(params, x[0], x[1])

    def _sample(self, collections: Any) -> Any:
        """What :meth:`_forward` runs on: the sample, with the collections when there are any."""
        return (
            self.config.sample_input
            if self.config.collections is None
            else (self.config.sample_input, collections)
        )

    def current_collections(self, extras: dict[str, Any]) -> Any:
        """The collections a measurement now runs with (refused when they are not given)."""
        current = extras.get("maxp_collections")
        if self.config.collections is None:
            if current is not None:
                raise MaxPError(
                    "maxp_collections (or SolveBetweenSteps' collections) were given, but this "
                    "DynamicAlignment has none: give DynamicAlignment(..., collections=<the initial "
                    "ones>) and an apply_fn(params, x, collections), or stop passing them"
                )
            return None
        if current is None:
            raise MaxPError(
                "DynamicAlignment(collections=...) measures with the model's current collections (batch "
                "statistics): pass them to each update, tx.update(grads, state, params, "
                "maxp_collections=variables['batch_stats']), or to SolveBetweenSteps(...)(state, params, "
                "updates_done, collections=...)"
            )
        if jax.tree.structure(current) != jax.tree.structure(self.config.collections):  # type: ignore[operator]
            raise MaxPError(
                f"maxp_collections has the structure {jax.tree.structure(current)}, but DynamicAlignment's "
                f"collections have {jax.tree.structure(self.config.collections)}; pass the same collections"
            )
        return current

    def _sample_rows(self, params: Any, collections: Any = None) -> dict[int, jax.Array]:
        collections = self.config.collections if collections is None else collections
        _, inputs = self.layer_inputs(params)(params, self._sample(collections))
        return {i: x[: self.config.sample_size] for i, x in inputs.items()}

    def capture_initial(self, params: Any) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], Any]:
        """What the state keeps of the initial model: ``(z0, w0, params0)``.

        By default each measured layer's input on the sample and (unless resampled) its
        weight; with ``use_training_activations``, the initial params themselves.
        """
        layer_inputs = self.layer_inputs(params)
        # The state owns copies: the first layer's input is the sample itself and an
        # untransposed weight is the parameter, and a training step that donates its
        # params and state would otherwise delete what later steps still read.
        if self.config.use_training_activations:
            return (), (), jax.tree.map(jnp.copy, params)
        # Compiled as one program: run eagerly, the forward would compile each operation on its own.
        rows = jax.jit(self._sample_rows)(params)
        z0 = tuple(jnp.copy(rows[i]) for i in layer_inputs.measured)
        if self.config.resample_w0:
            return z0, (), ()
        weights = layer_inputs.weight_matrices(params)
        return z0, tuple(jnp.copy(weights[i]) for i in layer_inputs.measured), ()

    def initial_norms(self, w0: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        """:func:`maxp_core.alignment.weight_norms` of each stored initial weight (one program)."""
        if self.config.mode != "rms" or not w0:
            return ()
        return tuple(jax.jit(lambda ws: [weight_norms(w, jnp) for w in ws])(w0))

    def _initial_weights(self, params: Any, state: Any) -> tuple[jax.Array, ...]:
        layer_inputs = self.layer_inputs(params)
        if self.config.resample_w0:
            from maxp_jax.init import abc_init

            assert self.config.init_key is not None
            initial_params = abc_init(self.spec, params, self.config.init_key, self.config.std_prefactor)
        elif self.config.use_training_activations:
            initial_params = state.params0
        else:
            return state.w0
        weights = layer_inputs.weight_matrices(initial_params)
        return tuple(weights[i] for i in layer_inputs.measured)

    def _inputs_now_and_then(
        self, params: Any, state: Any, extras: dict[str, Any]
    ) -> tuple[dict[int, jax.Array], tuple[jax.Array, ...], dict[int, jax.Array]]:
        """The current and the initial inputs of every measured layer, on the same rows,
        and whether each layer's inputs are all finite."""
        layer_inputs = self.layer_inputs(params)
        size = self.config.sample_size
        if not self.config.use_training_activations:
            rows = self._sample_rows(params, self.current_collections(extras))
            return rows, state.z0, {i: _all_finite(x) for i, x in rows.items()}
        absent = [k for k in ("maxp_inputs", "maxp_batch") if extras.get(k) is None]
        if absent:
            raise MaxPError(
                f"use_training_activations=True needs the update's extra arguments {absent}: "
                "tx.update(grads, state, params, maxp_inputs=inputs, maxp_batch=x[:k])"
            )
        inputs = extras["maxp_inputs"]
        lacking = [self.spec.layers[i].name for i in layer_inputs.measured if i not in inputs]
        if lacking:
            raise MaxPError(
                f"maxp_inputs lacks the inputs of layers {lacking}; pass what LayerInputs returns "
                "in the training forward"
            )
        now = {i: inputs[i][:size] for i in layer_inputs.measured}
        _, initial = layer_inputs(state.params0, extras["maxp_batch"])
        rows = {i: min(size, initial[i].shape[0], now[i].shape[0]) for i in layer_inputs.measured}
        finite = {i: _all_finite(inputs[i]) & _all_finite(initial[i]) for i in layer_inputs.measured}
        return (
            {i: now[i][: rows[i]] for i in now},
            tuple(initial[i][: rows[i]] for i in layer_inputs.measured),
            finite,
        )

    def due(self, count: jax.Array) -> jax.Array:
        """Whether the update after ``count`` steps re-solves (traceable)."""
        return self.schedule.due(count, xp=jnp)

    def measure(
        self, params: Any, state: Any, extras: dict[str, Any] | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``(alignments (layers, 3), non-finite (layers,))`` measured now (traceable).

        Alignments are the raw measurements, NaN where one carried no information; layers
        not measured (embeddings, whose alignment the LP does not use, and layers whose
        rule fixes the alignment) keep ``state.alignment``. A layer is non-finite when its
        current weight or its inputs hold NaN or inf.
        """
        layer_inputs = self.layer_inputs(params)
        rows, z0, finite_inputs = self._inputs_now_and_then(params, state, extras or {})
        weights = layer_inputs.weight_matrices(params)
        initial = self._initial_weights(params, state)
        position = {i: k for k, i in enumerate(layer_inputs.measured)}
        measured = [
            i
            for i in layer_inputs.measured
            if self.spec.layers[i].role is not Role.EMBEDDING and self.spec.layers[i].alignment is None
        ]

        def shape_of(i: int) -> tuple[Any, ...]:
            layer = self.spec.layers[i]
            return (
                rows[i].shape,
                weights[i].shape,
                layer.fan_in,
                weights[i].dtype,
                layer_inputs.fan_in_first(i),
            )

        out = state.alignment
        finite_weights: dict[int, jax.Array] = {}
        for group in groups_of_equal_shape(measured, shape_of):
            layers = [(z0[position[i]], rows[i], initial[position[i]], weights[i]) for i in group]
            fan_in = self.spec.layers[group[0]].fan_in
            if self.config.mode == "rms":
                norms = [state.w0_norms[position[i]] for i in group] if state.w0_norms else None
                al, finite = _rms_of_group(layers, fan_in, norms, layer_inputs.fan_in_first(group[0]))
                # A finite weight change of a finite initial weight: the weight is finite.
                finite_weights.update({i: finite[k] for k, i in enumerate(group)})
            else:
                mode = cast(AlignmentMode, self.config.mode)
                out_first = [self._out_first(i, layer) for i, layer in zip(group, layers, strict=True)]
                al = alignment_of_layers(out_first, mode, fan_in, xp=jnp)
            out = out.at[jnp.asarray(group)].set(jnp.stack(list(al), axis=1).astype(out.dtype))
        return out, self._nonfinite(params, finite_inputs, finite_weights)

    def _out_first(self, i: int, layer: Quad) -> Quad:
        """``(z0, z, w0, w)`` of layer ``i`` with the weights ``(out, fan_in)``."""
        assert self.inputs is not None
        if not self.inputs.fan_in_first(i):
            return layer
        z0, z, w0, w = layer
        return z0, z, w0.T, w.T

    def _nonfinite(
        self, params: Any, finite_inputs: dict[int, jax.Array], finite_weights: dict[int, jax.Array]
    ) -> jax.Array:
        """``(layers,)``: the layer's weight or its inputs hold NaN or inf. ``finite_weights``
        holds what the measurement already knows; the other weights are read here."""
        leaves = {leaf_key(path_string(p)): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        flags = []
        for i, layer in enumerate(self.spec.layers):
            finite = finite_weights.get(i)
            if finite is None:
                finite = _all_finite(layer.weight_of(leaves[leaf_key(layer.weight_path)]))
            if i in finite_inputs:
                finite = finite & finite_inputs[i]
            flags.append(~finite)
        return jnp.stack(flags)

    def resolve(self, state: Any, params: Any, extras: dict[str, Any] | None = None) -> Any:
        """Measure, then solve on the host, and return the new state (traceable)."""
        measured, nonfinite = self.measure(params, state, extras)
        num = len(self.spec.layers)
        shapes = (
            jax.ShapeDtypeStruct((num,), FACTOR_DTYPE),
            jax.ShapeDtypeStruct((num,), FACTOR_DTYPE),
            jax.ShapeDtypeStruct((num, 3), FACTOR_DTYPE),
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32),
        )
        outcome = jax.pure_callback(
            self.solve_on_host, shapes, measured, state.alignment, state.c, nonfinite, state.failures
        )
        return with_outcome(state, outcome)

    # --- host -----------------------------------------------------------------------

    def solve_on_host(
        self,
        measured: np.ndarray,
        previous: np.ndarray,
        c_prev: np.ndarray,
        nonfinite: np.ndarray,
        failures: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One re-solve by :class:`maxp_core.Resolver`.

        Returns:
          ``(c, factors, alignment, failed, missing)``: float32 exponents, factors and
          ``(layers, 3)`` alignments, whether the re-solve failed and how many measured
          numbers were missing (int32).
        """
        with self._lock:
            outcome = self.resolver(
                measured=np.asarray(measured, dtype=np.float64),
                previous=np.asarray(previous, dtype=np.float64),
                c_prev=np.asarray(c_prev, dtype=np.float64),
                nonfinite=np.asarray(nonfinite, dtype=bool),
                failures=int(failures),
            )
        return (
            outcome.c.astype(np.float32),
            self.spec.factors(outcome.c).astype(np.float32),
            outcome.alignment.astype(np.float32),
            np.asarray(int(outcome.failed), dtype=np.int32),
            np.asarray(outcome.missing, dtype=np.int32),
        )


def with_outcome(state: Any, outcome: tuple[Any, ...]) -> Any:
    """``state`` after a re-solve whose :meth:`AlignmentResolver.solve_on_host` gave ``outcome``.

    A failed re-solve keeps exactly the last factors. Traceable, and eager on host arrays.
    """
    c, factors, alignment, failed, missing = (jnp.asarray(x) for x in outcome)
    return state._replace(
        c=c,
        factors=jnp.where(failed > 0, state.factors, factors),
        alignment=alignment,
        solves=state.solves + (1 - failed),
        failures=state.failures + failed,
        missing=state.missing + missing,
    )


def _rms_of_group(
    layers: list[Quad], fan_in: int, norms: list[jax.Array] | None, fan_in_first: bool
) -> tuple[Alignment, jax.Array]:
    """:func:`~maxp_core.alignment.measure_layers` of equally shaped layers, those small enough
    to stack (:func:`~maxp_core.stacking.stack_chunks`) measured as stacks: one batched product
    per stack, where layer by layer each product and reduction is a fusion the runtime steps
    through (on a CPU, most of the time of a measurement of small layers)."""
    weight = layers[0][3]
    on_cpu = jax.default_backend() == "cpu"
    chunks = stack_chunks(list(range(len(layers))), weight.size * weight.dtype.itemsize, on_cpu)
    if len(chunks) == len(layers):  # layer by layer: their reductions still fuse across the group
        return measure_layers(layers, fan_in, jnp, norms, fan_in_first)
    parts = []
    for chunk in chunks:
        z0, z, w0, w = (jnp.stack([layers[k][j] for k in chunk]) for j in range(4))
        if fan_in_first:  # a transpose that feeds a product folds into it
            w0, w = jnp.swapaxes(w0, -1, -2), jnp.swapaxes(w, -1, -2)
        initial_norms = None if norms is None else jnp.stack([norms[k] for k in chunk])
        parts.append(measure_stacks(z0, z, w0, w, fan_in, jnp, initial_norms=initial_norms))
    per_term = zip(*(al for al, _ in parts), strict=True)
    joined = Alignment._make(jnp.concatenate(values) for values in per_term)
    return joined, jnp.concatenate([finite for _, finite in parts])


def _all_finite(x: jax.Array) -> jax.Array:
    """Whether every entry of ``x`` is finite (True for an empty array)."""
    return jnp.all(jnp.isfinite(x))
