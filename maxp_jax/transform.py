"""maxP as optax transformations: per-layer learning-rate factors in the optimizer state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maxp_core import MaxPError, WSDSchedule, validate
from maxp_core.metrics import MetricsLog
from maxp_jax.dynamic import FACTOR_DTYPE, AlignmentResolver, DynamicAlignment, warn_if_never_solved
from maxp_jax.spec import MaxPSpec, TiedUses, leaf_key, path_string


class ScaleByMaxPState(NamedTuple):
    """Per-layer learning-rate factors ``n^-c``, their exponents, and what re-solves need.

    Attributes:
      count: optimizer steps taken.
      factors: ``(layers,)`` float32 learning-rate factors ``n^-c`` in use.
      c: ``(layers,)`` float32 exponents the factors come from.
      alignment: ``(layers, 3)`` float32 ``(alpha, omega, u)`` the last re-solve used
        (the presets or a rule's ``alignment`` before any).
      z0, w0, params0: what the state keeps of the initial model for dynamic re-solves.
      w0_norms: with ``w0``, each one's power of two and RMS (``maxp_core.alignment.weight_norms``),
        which never change and are read by every measurement.
      solves: re-solves that gave new factors.
      failures: re-solves that kept the last factors: the weights or inputs of a layer were
        not finite (NaN or inf), or the LP had no answer.
      missing: measured numbers (three per layer and re-solve) that carried no information
        and kept their previous alignment: an input that is empty, all zero or unchanged, a
        weight that has not moved from its initial value.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's name for the step count; shadows tuple.count
    factors: jax.Array
    c: jax.Array
    alignment: jax.Array  # (layers, 3): the (alpha, omega, u) the last solve used
    z0: tuple[jax.Array, ...]  # each measured layer's input at init, (rows, fan_in)
    w0: tuple[jax.Array, ...]  # each measured layer's weight at init, (out, fan_in); () with resample_w0
    params0: Any  # the initial params with use_training_activations, else ()
    solves: jax.Array
    failures: jax.Array
    missing: jax.Array
    # (2,) per entry of w0: its power of two and RMS. Last, and () in a state saved before it
    # existed: the measurement then takes them from w0 each time.
    w0_norms: tuple[jax.Array, ...] = ()


def scale_by_maxp(
    spec: MaxPSpec, dynamic: DynamicAlignment | None = None
) -> optax.GradientTransformationExtraArgs:
    """Multiply each maxP layer's update by its factor ``n^-c``.

    Leaves outside every layer pass unchanged (the base learning rate). The factors live
    in the state as a ``float32`` vector, one entry per layer, so replacing them (a
    re-solve, :func:`set_factors`) changes values only and a jitted step is not traced
    again. Put it after Adam's scaling and after ``add_decayed_weights``, before the
    learning rate: that order makes decoupled weight decay scale with each layer's
    learning rate, as PyTorch's per-group ``lr`` does.

    With ``dynamic``, ``init`` records each layer's input on ``dynamic.sample_input``
    and its weight, and ``update`` re-measures the alignments on the schedule of
    ``dynamic`` (inside ``jit``), re-solves the LP on the host
    (``jax.pure_callback``) and puts the new factors into the state. The update of
    step ``k + 1`` uses the weights after step ``k``, as a PyTorch scheduler that
    measures after ``optimizer.step()`` does. With ``dynamic.in_step=False`` the update
    only applies the factors, and :class:`~maxp_jax.SolveBetweenSteps` re-solves between
    steps, to the same numbers.

    No re-solve gives a wrong learning rate silently: one that meets weights or inputs
    that are not finite, or that the LP cannot answer, keeps the last factors, and a
    measurement that carried no information (NaN) keeps that layer's previous alignment
    (the preset before any measurement) rather than being read as "no alignment". Both
    warn (:class:`maxp_core.MaxPWarning`; failures at the 1st, 2nd, 4th, ... with the
    running count, missing measurements once per layer and reason). The state counts
    what happened, in three ``int32`` counters:

    * ``solves``: re-solves that gave new factors;
    * ``failures``: re-solves that kept the last factors;
    * ``missing``: measured numbers (three per layer and re-solve) that were missing.

    Without ``dynamic`` the three stay 0.

    Args:
      spec: the :class:`~maxp_jax.MaxPSpec`.
      dynamic: re-solve during training; ``None`` keeps the initial factors.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Everett et al., "Scaling Exponents Across Parameterizations and Optimizers", 2024.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from maxp_jax import MaxPSpec, Rule
      >>> params = {"w_in": jnp.ones((8, 256)), "w_out": jnp.ones((256, 4)), "scale": jnp.ones(())}
      >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_out", "readout")])
      >>> tx = scale_by_maxp(spec)
      >>> updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
      >>> {k: round(float(v.ravel()[0]), 6) for k, v in updates.items()}
      {'scale': 1.0, 'w_in': 1.0, 'w_out': 0.003906}
    """
    if not isinstance(spec, MaxPSpec):
        raise MaxPError(f"scale_by_maxp: spec must be a MaxPSpec, got {type(spec).__name__}")
    if dynamic is not None and not isinstance(dynamic, DynamicAlignment):
        raise MaxPError(
            f"scale_by_maxp: dynamic must be a DynamicAlignment or None, got {type(dynamic).__name__}"
        )
    index = spec.leaf_layer_index()
    weights = {leaf_key(layer.weight_path) for layer in spec.layers}
    # Biases and gains under bias_rule="constant-input": fixed factors of their own.
    vectors = None if spec.bias_rule == "layer" else np.asarray(spec.vector_factors(), dtype=np.float32)
    initial_c = np.asarray(spec.c, dtype=np.float64)
    initial_factors = spec.factors(initial_c)
    initial_alignment = spec.layer_alignment_presets()
    resolver = None if dynamic is None else AlignmentResolver(spec, dynamic)

    def init_fn(params: optax.Params) -> ScaleByMaxPState:
        z0: tuple[jax.Array, ...] = ()
        w0: tuple[jax.Array, ...] = ()
        params0: Any = ()
        w0_norms: tuple[jax.Array, ...] = ()
        if resolver is not None:
            _refuse_masked(params)
            z0, w0, params0 = resolver.capture_initial(params)
            w0_norms = resolver.initial_norms(w0)
        return ScaleByMaxPState(
            count=jnp.zeros([], jnp.int32),
            factors=jnp.asarray(initial_factors, dtype=FACTOR_DTYPE),
            c=jnp.asarray(initial_c, dtype=FACTOR_DTYPE),
            alignment=jnp.asarray(initial_alignment, dtype=FACTOR_DTYPE),
            z0=z0,
            w0=w0,
            params0=params0,
            w0_norms=w0_norms,
            solves=jnp.zeros([], jnp.int32),
            failures=jnp.zeros([], jnp.int32),
            missing=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByMaxPState, params: optax.Params | None = None, **extra_args: Any
    ) -> tuple[optax.Updates, ScaleByMaxPState]:
        if resolver is not None and not resolver.config.in_step:
            warn_if_never_solved(resolver.config)
        if resolver is not None and resolver.config.in_step:
            if params is None:
                raise MaxPError(
                    "scale_by_maxp with dynamic alignment needs params: update(updates, state, params)"
                )
            extras = {k: extra_args.get(k) for k in ("maxp_inputs", "maxp_batch", "maxp_collections")}
            if extras["maxp_collections"] is not None:
                resolver.current_collections(extras)  # refused where the DynamicAlignment has none
            state = jax.lax.cond(
                resolver.due(state.count),
                lambda s, p: resolver.resolve(s, p, extras),
                lambda s, p: s,
                state,
                params,
            )

        def scale(path: Any, update: Any) -> Any:
            key = leaf_key(path_string(path))
            i = index.get(key)
            if i is None or update is None or not hasattr(update, "dtype"):
                return update
            own = state.factors if vectors is None or key in weights else jnp.asarray(vectors)
            return update * per_slice(own, i, update.ndim).astype(update.dtype)

        updates = jax.tree_util.tree_map_with_path(scale, updates)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _refuse_masked(params: Any) -> None:
    """Dynamic maxP runs the model, so it needs every parameter, not one branch's share."""
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    if any(masked(leaf) for leaf in jax.tree_util.tree_leaves(params, is_leaf=masked)):
        raise MaxPError(
            "scale_by_maxp with dynamic alignment sees masked parameters (it sits inside optax.partition "
            "or optax.masked) and cannot run the model on them; chain it after the partition instead: "
            "optax.chain(optax.partition(...), scale_by_maxp(spec, dynamic), ...) (leaves outside every "
            "maxP layer pass through it unchanged)"
        )


def per_slice(values: Any, index: int | tuple[int, ...] | TiedUses, ndim: int) -> Any:
    """``values[index]`` shaped to multiply a leaf of ``ndim`` axes: a scalar for one layer,
    the smaller of two for a tied table, ``(L, 1, ..., 1)`` for the ``L`` slices of a
    stacked leaf (one gather, no loop)."""
    if isinstance(index, TiedUses):
        return jnp.minimum(values[index.lookup], values[index.readout])
    if isinstance(index, int):
        return values[index]
    return values[np.asarray(index)].reshape((len(index),) + (1,) * (ndim - 1))


def find_maxp_state(opt_state: Any) -> ScaleByMaxPState:
    """The :class:`ScaleByMaxPState` inside an optimizer state (a chain, partition, ...)."""
    found = [s for s in _walk(opt_state) if isinstance(s, ScaleByMaxPState)]
    if len(found) != 1:
        raise MaxPError(f"expected one ScaleByMaxPState in the optimizer state, found {len(found)}")
    return found[0]


def check_state_of(state: ScaleByMaxPState, spec: MaxPSpec, where: str) -> None:
    """Refuse a maxP state that was not built with ``spec`` (its factors count other layers)."""
    if state.factors.shape != (len(spec.layers),):
        raise MaxPError(
            f"{where}: the optimizer state holds {state.factors.shape[0]} layers' factors but the spec "
            f"has {len(spec.layers)} layers; pass the spec the optimizer was built with"
        )


def metrics(
    opt_state: Any, spec: MaxPSpec, learning_rate: float | optax.Schedule | None = None
) -> dict[str, jax.Array]:
    """A flat dict of what maxP holds in ``opt_state``, for any logger; pure, so it runs
    inside ``jit`` as well as outside.

    Keys (:mod:`maxp_core.metrics`, the same as ``maxp_torch.Parametrization.metrics``):
    ``maxp/lr_factor/<layer>``, ``maxp/c/<layer>``, ``maxp/alpha/<layer>``,
    ``maxp/omega/<layer>``, ``maxp/u/<layer>`` (one per layer of ``spec``, in its order;
    an alignment never measured stays at its preset), ``maxp/lr/<layer>`` when
    ``learning_rate`` (the base rate, a number or the optax schedule, read at the next
    step) is given, and the counters ``maxp/step``, ``maxp/solves``, ``maxp/failures``,
    ``maxp/missing`` (see :func:`scale_by_maxp`) and ``maxp/solve_seconds``, which is NaN
    (missing): a wall time in the state would make resumed runs differ from straight ones. A tied
    table's two layers are logged each with its own factor; the table's update takes the
    smaller of the two.

    Examples:
      >>> import jax.numpy as jnp
      >>> from maxp_jax import MaxPSpec, Rule
      >>> params = {"w_in": jnp.ones((8, 64)), "w_out": jnp.ones((64, 4))}
      >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_out", "readout")])
      >>> logged = metrics(scale_by_maxp(spec).init(params), spec, learning_rate=0.5)
      >>> round(float(logged["maxp/lr/w_out"]), 7), int(logged["maxp/solves"])
      (0.0078125, 0)
    """
    if not isinstance(spec, MaxPSpec):
        raise MaxPError(f"metrics: spec must be a MaxPSpec, got {type(spec).__name__}")
    state = find_maxp_state(opt_state)
    check_state_of(state, spec, "metrics")
    columns: dict[str, Any] = {"lr_factor": state.factors, "c": state.c}
    if learning_rate is not None:
        _check_learning_rate(learning_rate, "metrics")
        base = learning_rate(state.count) if callable(learning_rate) else learning_rate
        columns = {"lr": base * state.factors, **columns}
    columns.update({name: state.alignment[:, j] for j, name in enumerate(("alpha", "omega", "u"))})
    names = [layer.name for layer in spec.layers]
    if not any(isinstance(v, jax.core.Tracer) for v in columns.values()):
        # Outside jit: one copy to the host, then numpy entries; indexing a device array
        # entry by entry would dispatch (and first compile) one slice per entry.
        columns = jax.device_get(columns)
    out = {
        f"maxp/{field}/{name}": values[i] for field, values in columns.items() for i, name in enumerate(names)
    }
    out["maxp/step"] = state.count
    out.update({f"maxp/{name}": getattr(state, name) for name in ("solves", "failures", "missing")})
    out["maxp/solve_seconds"] = jnp.full([], jnp.nan, FACTOR_DTYPE)
    return out


def metrics_log(path: str | Path, spec: MaxPSpec) -> MetricsLog:
    """A :class:`maxp_core.metrics.MetricsLog` at ``path`` naming ``spec``'s layers.

    Examples:
      >>> import os, tempfile, jax.numpy as jnp
      >>> from maxp_jax import MaxPSpec, Rule
      >>> params = {"w_in": jnp.ones((8, 64)), "w_out": jnp.ones((64, 4))}
      >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_out", "readout")])
      >>> with metrics_log(os.path.join(tempfile.mkdtemp(), "run.jsonl"), spec) as log:
      ...     written = log.write(metrics(scale_by_maxp(spec).init(params), spec), loss=1.5)
      >>> written["maxp/c/w_out"], written["maxp/solve_seconds"], written["loss"]
      (0.5, None, 1.5)
    """
    if not isinstance(spec, MaxPSpec):
        raise MaxPError(f"metrics_log: spec must be a MaxPSpec, got {type(spec).__name__}")
    return MetricsLog(path, {layer.name: layer.role.value for layer in spec.layers})


def set_factors(opt_state: Any, spec: MaxPSpec, c: np.ndarray) -> Any:
    """A copy of ``opt_state`` whose maxP factors come from the exponents ``c``.

    Values only change (same shapes and dtypes), so a jitted step is not traced again.

    Raises:
      MaxPError: ``opt_state`` holds no :class:`ScaleByMaxPState`, or ``c`` is not one
        finite exponent per layer of ``spec`` (the message names the layer).
    """
    if not isinstance(spec, MaxPSpec):
        raise MaxPError(f"set_factors: spec must be a MaxPSpec, got {type(spec).__name__}")
    c = _check_exponents(c, spec)
    is_state = lambda x: isinstance(x, ScaleByMaxPState)  # noqa: E731
    if not any(is_state(node) for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_state)):
        raise MaxPError(
            "set_factors: the optimizer state holds no ScaleByMaxPState (is scale_by_maxp in the chain?)"
        )
    factors = jnp.asarray(spec.factors(c), dtype=FACTOR_DTYPE)
    new_c = jnp.asarray(c, dtype=FACTOR_DTYPE)
    return replace_maxp_state(opt_state, lambda state: state._replace(factors=factors, c=new_c))


def replace_maxp_state(opt_state: Any, change: Callable[[ScaleByMaxPState], ScaleByMaxPState]) -> Any:
    """A copy of ``opt_state`` in which ``change`` replaced its :class:`ScaleByMaxPState`."""
    is_state = lambda x: isinstance(x, ScaleByMaxPState)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda node: change(node) if is_state(node) else node, opt_state, is_leaf=is_state
    )


def _check_exponents(c: Any, spec: MaxPSpec) -> np.ndarray:
    """``c`` as float64, one bounded finite exponent per layer of ``spec``."""
    names = [layer.name for layer in spec.layers]
    values = validate.real_array(c, "set_factors: c")
    if values.shape != (len(names),):
        raise MaxPError(
            f"set_factors: c must hold one exponent per layer ({len(names)}: {names}), "
            f"got shape {values.shape}"
        )
    for name, value in zip(names, values, strict=True):
        validate.exponent(float(value), f"set_factors: c of layer {name!r}")
    return values


def _walk(node: Any) -> list[Any]:
    out = [node]
    if isinstance(node, ScaleByMaxPState):
        return out
    if isinstance(node, tuple | list):
        for child in node:
            out += _walk(child)
    elif isinstance(node, dict):
        for child in node.values():
            out += _walk(child)
    elif hasattr(node, "inner_state"):
        out += _walk(node.inner_state)
    elif hasattr(node, "inner_states"):
        out += _walk(node.inner_states)
    return out


def wsd_schedule(
    learning_rate: float,
    *,
    warmup_steps: int = 0,
    stable_steps: int,
    decay_steps: int,
    decay_type: str = "cosine",
    min_factor: float = 0.0,
) -> optax.Schedule:
    """Warmup-stable-decay as an optax schedule: ``learning_rate`` times the WSD multiplier.

    The curve is :class:`maxp_core.WSDSchedule`'s, evaluated with ``jax.numpy``.

    Examples:
      >>> s = wsd_schedule(0.1, warmup_steps=2, stable_steps=2, decay_steps=2, decay_type="linear")
      >>> [round(float(s(t)), 3) for t in range(7)]
      [0.0, 0.05, 0.1, 0.1, 0.1, 0.05, 0.0]
    """
    curve = WSDSchedule(warmup_steps, stable_steps, decay_steps, decay_type, min_factor)

    def schedule(count: Any) -> jax.Array:
        return learning_rate * curve(count, xp=jnp)

    return schedule


def adamw(
    spec: MaxPSpec,
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
    dynamic: DynamicAlignment | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamW with maxP: ``chain(scale_by_adam, add_decayed_weights, scale_by_maxp, -lr)``.

    Weight decay comes before the maxP factor, so each layer's decay is multiplied by
    its own learning rate, as in ``torch.optim.AdamW`` with one group per layer.
    ``mask`` defaults to every leaf (as ``torch.optim.AdamW``'s single group does).
    ``dynamic`` re-solves during training (:func:`scale_by_maxp`); ``update`` then
    needs ``params``.

    Raises:
      MaxPError: a hyperparameter is out of range (a schedule is passed through as is).
    """
    _check_learning_rate(learning_rate, "adamw")
    _check_hyperparameter(b1, "adamw: b1", validate.fraction)
    _check_hyperparameter(b2, "adamw: b2", validate.fraction)
    _check_hyperparameter(eps, "adamw: eps", validate.positive_number)
    _check_hyperparameter(weight_decay, "adamw: weight_decay", validate.non_negative_number)
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask),
        scale_by_maxp(spec, dynamic),
        optax.scale_by_learning_rate(learning_rate),
    )


def sgd(
    spec: MaxPSpec,
    learning_rate: float | optax.Schedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    dynamic: DynamicAlignment | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with maxP, in ``torch.optim.SGD``'s order: coupled decay, momentum, factor, -lr.

    ``dynamic`` re-solves during training (:func:`scale_by_maxp`).

    Raises:
      MaxPError: a hyperparameter is out of range (a schedule is passed through as is).
    """
    _check_learning_rate(learning_rate, "sgd")
    _check_hyperparameter(momentum, "sgd: momentum", validate.non_negative_number)
    _check_hyperparameter(weight_decay, "sgd: weight_decay", validate.non_negative_number)
    validate.boolean(nesterov, "sgd: nesterov")
    parts: list[optax.GradientTransformation] = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts += [scale_by_maxp(spec, dynamic), optax.scale_by_learning_rate(learning_rate)]
    return optax.chain(*parts)


def _check_learning_rate(learning_rate: Any, where: str) -> None:
    """A number must be finite and > 0; a schedule (a callable) is left to optax."""
    if not callable(learning_rate):
        _check_hyperparameter(learning_rate, f"{where}: learning_rate", validate.positive_number)


def _check_hyperparameter(value: Any, where: str, check: Callable[[Any, str], float]) -> None:
    """``check(value, where)`` on a number or a concrete array; traced values (as
    ``optax.inject_hyperparams`` passes them inside ``jit``) pass through."""
    if isinstance(value, jax.Array):
        try:
            value = np.asarray(value)
        except jax.errors.JAXTypeError:
            return
    check(value, where)
