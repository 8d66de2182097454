"""A learning rate is never silently wrong: bad inputs, training faults and resumed runs.

Bad arguments raise a ``MaxPError`` that names the culprit. During a dynamic run, weights
or inputs that are not finite skip the re-solve (the last factors stay), measurements
without information keep the previous alignment (the preset before any), and every such
event is counted in the state and warned about. A run resumed from a numpy checkpoint
continues bit for bit as the straight run does.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maxp_jax
from maxp_core import MaxPError, MaxPWarning
from maxp_jax import (
    DynamicAlignment,
    LayerInputs,
    MaxPSpec,
    Rule,
    ScaleByMaxPState,
    find_maxp_state,
    scale_by_maxp,
    set_factors,
)

IN, WIDTH, OUT = 8, 24, 24  # hidden and readout alike: one group to measure, one to compile
RULES = [Rule("w_in", "embedding"), Rule("w_h", "hidden"), Rule("w_out", "readout")]
INIT_KEY = jax.random.key(3)


def apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """A bias-free MLP: an all-zero input stays zero at every layer."""
    h = jnp.tanh(x @ params["w_in"])
    h = jnp.tanh(h @ params["w_h"])
    return h @ params["w_out"]


def shapes() -> dict[str, jax.ShapeDtypeStruct]:
    return {
        "w_in": jax.ShapeDtypeStruct((IN, WIDTH), jnp.float32),
        "w_h": jax.ShapeDtypeStruct((WIDTH, WIDTH), jnp.float32),
        "w_out": jax.ShapeDtypeStruct((WIDTH, OUT), jnp.float32),
    }


SPEC = MaxPSpec(shapes(), RULES)
PARAMS = maxp_jax.abc_init(SPEC, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes()), INIT_KEY)
CAPTURE = LayerInputs(SPEC, apply, PARAMS, jnp.zeros((16, IN)))
PRESET_FACTORS = SPEC.factors().astype(np.float32)


def data(seed: int, n: int = 16) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, IN)), jnp.float32)
    return x, jnp.asarray(rng.standard_normal((n, OUT)), jnp.float32)


def dynamic(**kwargs: Any) -> DynamicAlignment:
    settings = {"sample_input": data(0)[0], "warmup_steps": 1, "solve_interval": 1, **kwargs}
    return DynamicAlignment(apply, **settings)


def dynamic_tx(config: DynamicAlignment, lr: float = 0.05) -> optax.GradientTransformationExtraArgs:
    return optax.chain(optax.scale_by_adam(), scale_by_maxp(SPEC, config), optax.scale_by_learning_rate(lr))


def make_step(tx: optax.GradientTransformationExtraArgs, training_activations: bool = False) -> Callable:
    """A jitted step ``(params, state, x, y, grad_scale, maxp_batch) -> (params, state)``.

    ``grad_scale`` multiplies the gradients (0: the params do not move, NaN: they diverge).
    """

    def step(p, s, x, y, grad_scale, maxp_batch):
        def loss(q):
            out, inputs = CAPTURE(q, x)
            return jnp.mean((out - y) ** 2), inputs

        grads, inputs = jax.grad(loss, has_aux=True)(p)
        grads = jax.tree.map(lambda g: g * grad_scale, grads)
        extra = {"maxp_inputs": inputs, "maxp_batch": maxp_batch} if training_activations else {}
        updates, s = tx.update(grads, s, p, **extra)
        return optax.apply_updates(p, updates), s

    return jax.jit(step)


@functools.cache
def shared(mode: str) -> tuple[optax.GradientTransformationExtraArgs, Callable]:
    """One transformation and its compiled step per mode, shared by the tests that only
    read what it returns (compiling a dynamic step takes seconds)."""
    tx = MODES[mode]()
    return tx, make_step(tx, mode == "training_activations")


def run(step: Callable, params: Any, state: Any, batches: list[tuple[Any, ...]]) -> tuple[Any, Any, list]:
    """Steps over ``batches`` of ``(x, y, grad_scale, maxp_batch)``; the maxP state after each."""
    history = []
    for x, y, scale, maxp_batch in batches:
        params, state = step(params, state, x, y, jnp.float32(scale), maxp_batch)
        history.append(jax.device_get(find_maxp_state(state)))
    jax.effects_barrier()
    return params, state, history


def messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, MaxPWarning)]


# --- bad inputs -----------------------------------------------------------------------------


def _spec(**kwargs: Any) -> MaxPSpec:
    return MaxPSpec(shapes(), kwargs.pop("rules", RULES), **kwargs)


def _set(c: Any, state: Any = None) -> Any:
    state = maxp_jax.adamw(SPEC, 0.1).init(PARAMS) if state is None else state
    return set_factors(state, SPEC, c)


NAN, INF = float("nan"), float("inf")

BAD_INPUTS: list[tuple[str, Callable[[], Any], str]] = [
    # Rule
    ("rule pattern", lambda: Rule(3, "hidden"), "rule pattern must be a string, got int 3"),
    ("rule role", lambda: Rule("w_h", "output"), r"rule 'w_h': role must be one of .* got 'output'"),
    ("rule layout", lambda: Rule("w_h", "hidden", layout="nchw"), r"rule 'w_h': layout .* got 'nchw'"),
    ("rule width 0", lambda: Rule("w_h", "hidden", width=0), r"rule 'w_h': width must be an integer >= 1"),
    ("rule width float", lambda: Rule("w_h", "hidden", width=24.0), r"width must be an integer .* 24\.0"),
    ("rule width bool", lambda: Rule("w_h", "hidden", width=True), r"width must be an integer .* True"),
    ("rule a nan", lambda: Rule("w_h", "hidden", a=NAN), r"rule 'w_h': a = nan is not a finite number"),
    ("rule b huge", lambda: Rule("w_h", "hidden", b=1e3), r"rule 'w_h': b = 1000\.0 is out of range"),
    ("rule c text", lambda: Rule("w_h", "hidden", c="0.5"), r"rule 'w_h': c must be a real number, got str"),
    (
        "rule a complex",
        lambda: Rule("w_h", "hidden", a=1j),
        r"rule 'w_h': a must be a real number, got complex",
    ),
    ("rule alignment pair", lambda: Rule("w_h", "hidden", alignment=(1.0, 0.5)), r"alignment must be three"),
    (
        "rule omega > 1",
        lambda: Rule("w_h", "hidden", alignment=(1.0, 1.5, 0.5)),
        r"'w_h': alignment: omega = 1\.5",
    ),
    ("rule u < 0", lambda: Rule("w_h", "hidden", alignment=(1.0, 0.5, -0.1)), r"alignment: u = -0\.1"),
    # MaxPSpec
    (
        "spec feature_learning text",
        lambda: _spec(feature_learning="yes"),
        "feature_learning must be True or False",
    ),
    (
        "spec feature_learning int",
        lambda: _spec(feature_learning=1),
        "feature_learning must be True or False",
    ),
    ("spec parametrization", lambda: _spec(parametrization="mu-p"), "unknown parametrization 'mu-p'"),
    ("spec parametrization type", lambda: _spec(parametrization=3), "parametrization must be a string"),
    ("spec alignment preset", lambda: _spec(alignment="partial"), "unknown alignment preset 'partial'"),
    ("spec alignment triple", lambda: _spec(alignment=(1.0, 0.5, 1.0)), "alignment must be a string"),
    ("spec solver", lambda: _spec(solver="gurobi"), r"solver must be one of .* got 'gurobi'"),
    ("spec optimizer", lambda: _spec(optimizer="lion"), "unknown optimizer 'lion'"),
    ("spec multipliers", lambda: _spec(multipliers="both"), r"multipliers must be one of .* got 'both'"),
    ("spec rule type", lambda: _spec(rules=[("w_in", "embedding")]), r"rules\[0\] must be a Rule, got tuple"),
    # DynamicAlignment
    ("dyn sample_size 0", lambda: dynamic(sample_size=0), "sample_size must be an integer >= 1, got 0"),
    ("dyn sample_size float", lambda: dynamic(sample_size=8.0), r"sample_size must be an integer .* 8\.0"),
    ("dyn sample_size bool", lambda: dynamic(sample_size=True), "sample_size must be an integer .* True"),
    ("dyn resample_w0 text", lambda: dynamic(resample_w0="no"), "resample_w0 must be True or False, got str"),
    ("dyn training_activations int", lambda: dynamic(use_training_activations=1), "use_training_activations"),
    ("dyn std_prefactor 0", lambda: dynamic(std_prefactor=0.0), r"std_prefactor = 0\.0 must be > 0"),
    (
        "dyn std_prefactor inf",
        lambda: dynamic(std_prefactor=INF),
        "std_prefactor = inf is not a finite number",
    ),
    ("dyn warmup negative", lambda: DynamicAlignment(apply, None, warmup_steps=-1), "warmup_steps .* >= 0"),
    (
        "dyn interval float",
        lambda: DynamicAlignment(apply, None, solve_interval=1.5),
        "solve_interval .* 1.5",
    ),
    ("dyn stop_after text", lambda: DynamicAlignment(apply, None, stop_after="10"), "stop_after must be an"),
    ("dyn alignment_ema 1", lambda: dynamic(alignment_ema=1.0), r"alignment_ema = 1\.0 is out of range"),
    ("dyn c_ema negative", lambda: dynamic(c_ema=-0.1), r"c_ema = -0\.1 is out of range"),
    ("dyn c_ema nan", lambda: dynamic(c_ema=NAN), "c_ema = nan is not a finite number"),
    ("dyn mode", lambda: dynamic(mode="l2"), r"mode must be one of \['rms', 'spectral'\], got 'l2'"),
    ("dyn apply_fn", lambda: DynamicAlignment(None, None), "apply_fn must be callable, got NoneType"),
    ("dyn resample without key", lambda: dynamic(resample_w0=True), "resample_w0=True needs init_key"),
    # adamw / sgd
    ("adamw lr 0", lambda: maxp_jax.adamw(SPEC, 0.0), r"adamw: learning_rate = 0\.0 must be > 0"),
    ("adamw lr negative", lambda: maxp_jax.adamw(SPEC, -1e-3), "adamw: learning_rate = -0.001 must be > 0"),
    ("adamw lr nan", lambda: maxp_jax.adamw(SPEC, NAN), "adamw: learning_rate = nan is not a finite number"),
    ("adamw lr text", lambda: maxp_jax.adamw(SPEC, "1e-3"), "adamw: learning_rate must be a real number"),
    (
        "adamw lr array",
        lambda: maxp_jax.adamw(SPEC, jnp.asarray(-1.0)),
        "adamw: learning_rate .* must be > 0",
    ),
    ("adamw b1 1", lambda: maxp_jax.adamw(SPEC, 0.1, b1=1.0), r"adamw: b1 = 1\.0 is out of range"),
    ("adamw b2 negative", lambda: maxp_jax.adamw(SPEC, 0.1, b2=-0.1), r"adamw: b2 = -0\.1 is out of range"),
    ("adamw eps 0", lambda: maxp_jax.adamw(SPEC, 0.1, eps=0.0), r"adamw: eps = 0\.0 must be > 0"),
    ("adamw decay negative", lambda: maxp_jax.adamw(SPEC, 0.1, weight_decay=-0.01), "weight_decay = -0.01"),
    ("adamw decay inf", lambda: maxp_jax.adamw(SPEC, 0.1, weight_decay=INF), "weight_decay = inf is not"),
    ("sgd lr inf", lambda: maxp_jax.sgd(SPEC, INF), "sgd: learning_rate = inf is not a finite number"),
    ("sgd momentum negative", lambda: maxp_jax.sgd(SPEC, 0.1, momentum=-0.9), "sgd: momentum = -0.9 must be"),
    (
        "sgd momentum nan",
        lambda: maxp_jax.sgd(SPEC, 0.1, momentum=NAN),
        "sgd: momentum = nan is not a finite",
    ),
    (
        "sgd decay negative",
        lambda: maxp_jax.sgd(SPEC, 0.1, weight_decay=-1),
        "sgd: weight_decay = -1 must be",
    ),
    ("sgd nesterov text", lambda: maxp_jax.sgd(SPEC, 0.1, nesterov="yes"), "nesterov must be True or False"),
    # set_factors, scale_by_maxp, update
    ("set_factors nan", lambda: _set([0.5, NAN, 0.5]), "c of layer 'w_h' = nan is not a finite number"),
    (
        "set_factors length",
        lambda: _set([0.5, 0.5]),
        r"one exponent per layer \(3: \['w_in', 'w_h', 'w_out'\]\)",
    ),
    ("set_factors 2-d", lambda: _set(np.zeros((3, 1))), r"got shape \(3, 1\)"),
    ("set_factors complex", lambda: _set(np.array([0.5, 1j, 0.5])), "c must hold real numbers, got complex"),
    ("set_factors huge", lambda: _set([1e3, 1.0, 0.5]), r"c of layer 'w_in' = 1000\.0 is out of range"),
    ("set_factors text", lambda: _set(["0.5", "1", "0.5"]), "c must hold real numbers"),
    (
        "set_factors no state",
        lambda: _set([0.5, 1.0, 0.5], optax.adam(0.1).init(PARAMS)),
        "no ScaleByMaxPState",
    ),
    ("set_factors spec", lambda: set_factors((), "spec", [0.5]), "spec must be a MaxPSpec, got str"),
    ("scale_by_maxp dynamic", lambda: scale_by_maxp(SPEC, {"warmup_steps": 1}), "dynamic must be a Dynamic"),
    ("find_maxp_state none", lambda: find_maxp_state(optax.adam(0.1).init(PARAMS)), "found 0"),
    (
        "update without params",
        lambda: (tx := scale_by_maxp(SPEC, dynamic())).update(PARAMS, tx.init(PARAMS)),
        r"needs params: update\(updates, state, params\)",
    ),
    (
        "update without maxp_inputs",
        lambda: (tx := scale_by_maxp(SPEC, dynamic(use_training_activations=True))).update(
            PARAMS, tx.init(PARAMS)._replace(count=jnp.asarray(1, jnp.int32)), PARAMS
        ),
        r"needs the update's extra arguments \['maxp_inputs', 'maxp_batch'\]",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_raises_naming_the_culprit(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        build()


def test_numpy_numbers_and_schedules_are_accepted() -> None:
    rule = Rule("w_h", "hidden", width=np.int64(24), c=np.float32(1.0), alignment=np.array([1.0, 0.5, 1.0]))
    assert (type(rule.width), type(rule.c), rule.alignment) == (int, float, (1.0, 0.5, 1.0))
    config = dynamic(sample_size=np.int32(8), warmup_steps=np.int64(2), resample_w0=np.bool_(False))
    assert (type(config.sample_size), type(config.warmup_steps), config.resample_w0) == (int, int, False)
    maxp_jax.adamw(SPEC, optax.linear_schedule(0.0, 0.1, 10), b1=np.float32(0.9), weight_decay=0)
    maxp_jax.sgd(SPEC, np.float64(0.1), momentum=0.0)
    state = set_factors(maxp_jax.adamw(SPEC, 0.1).init(PARAMS), SPEC, np.asarray(SPEC.c, np.float32))
    np.testing.assert_allclose(find_maxp_state(state).factors, PRESET_FACTORS, rtol=1e-6)


# --- training faults ------------------------------------------------------------------------


def good(seed: int, scale: float = 1.0) -> tuple[Any, ...]:
    x, y = data(seed)
    return x, y, scale, x[:8]


def test_nan_gradients_keep_the_last_good_factors() -> None:
    tx, step = shared("dynamic")
    batches = [good(t) for t in range(1, 4)] + [good(4, NAN)] + [good(t) for t in range(5, 9)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, _, history = run(step, PARAMS, tx.init(PARAMS), batches)
    assert not np.isfinite(np.asarray(params["w_h"])).all()  # the NaN reached the params
    last_good = history[3]  # the update of step 4 re-solved with the finite params after step 3
    assert int(last_good.solves) == 2 and int(last_good.failures) == 0
    assert not np.array_equal(last_good.factors, PRESET_FACTORS)  # the re-solves moved the factors
    for later in history[4:]:
        assert np.isfinite(later.factors).all() and np.isfinite(later.c).all()
        np.testing.assert_array_equal(later.factors, last_good.factors)
        np.testing.assert_array_equal(later.c, last_good.c)
        np.testing.assert_array_equal(later.alignment, last_good.alignment)
    assert [int(s.failures) for s in history[4:]] == [1, 2, 3, 4]
    assert int(history[-1].solves) == 2
    told = [m for m in messages(caught) if "re-solve failed" in m]
    assert len(told) == 3  # after the 1st, 2nd and 4th failure
    assert "(4 failed so far)" in told[-1] and "'w_in'" in told[0] and "not finite" in told[0]


@pytest.mark.parametrize("fault", ["zero sample", "still params"])
def test_measurements_without_information_keep_the_preset(fault: str) -> None:
    """An all-zero sample, or params that never move: every measured number is missing."""
    if fault == "zero sample":
        tx = dynamic_tx(dynamic(sample_input=jnp.zeros((16, IN))))
        step = make_step(tx)
    else:
        tx, step = shared("dynamic")
    scale = 0.0 if fault == "still params" else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, history = run(step, PARAMS, tx.init(PARAMS), [good(t, scale) for t in range(5)])
    last = history[-1]
    assert (int(last.solves), int(last.failures)) == (3, 0)
    assert int(last.missing) == 3 * 2 * 3  # 3 re-solves, hidden and readout, 3 numbers each
    np.testing.assert_array_equal(last.factors, PRESET_FACTORS)  # no jump up
    np.testing.assert_array_equal(last.alignment, SPEC.layer_alignment_presets().astype(np.float32))
    told = messages(caught)
    assert any("layer 'w_h'" in m for m in told) and any("layer 'w_out'" in m for m in told)
    assert len(told) == 2  # once per layer and reason


def test_training_activations_empty_batch_is_missing_and_nan_batch_fails() -> None:
    tx, step = shared("training_activations")
    empty = [(x, y, 1.0, x[:0]) for x, y, _, _ in (good(t) for t in range(4))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, history = run(step, PARAMS, tx.init(PARAMS), empty)
    assert (int(history[-1].solves), int(history[-1].missing)) == (2, 2 * 2 * 3)
    np.testing.assert_array_equal(history[-1].factors, PRESET_FACTORS)
    told = messages(caught)
    assert any("layer 'w_h'" in m and "carried no information" in m for m in told)

    x_nan = jnp.full((16, IN), NAN)
    batches = [good(t) for t in range(1, 4)] + [(x_nan, data(4)[1], 1.0, x_nan[:8])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, history = run(step, PARAMS, tx.init(PARAMS), batches)
    before, after = history[2], history[3]
    assert int(before.solves) == 1 and (int(after.solves), int(after.failures)) == (1, 1)
    np.testing.assert_array_equal(after.factors, before.factors)
    np.testing.assert_array_equal(after.alignment, before.alignment)
    assert any("not finite" in m for m in messages(caught))


# --- resuming from a checkpoint -------------------------------------------------------------

MODES: dict[str, Callable[[], Any]] = {
    "static": lambda: maxp_jax.adamw(SPEC, 0.05, weight_decay=0.01),
    "dynamic": lambda: dynamic_tx(dynamic()),
    "resample_w0": lambda: dynamic_tx(
        dynamic(resample_w0=True, init_key=INIT_KEY, alignment_ema=0.5, c_ema=0.3)
    ),
    "training_activations": lambda: dynamic_tx(dynamic(use_training_activations=True)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_from_a_numpy_checkpoint_is_bit_exact(mode: str) -> None:
    batches = [good(100 + t) for t in range(20)]
    training_activations = mode == "training_activations"
    tx, step = shared(mode)
    straight_params, straight_state, _ = run(step, PARAMS, tx.init(PARAMS), batches)
    half_params, half_state, _ = run(step, PARAMS, tx.init(PARAMS), batches[:10])
    checkpoint = jax.device_get((half_params, half_state))
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(checkpoint))

    fresh = MODES[mode]()
    params, state, _ = run(make_step(fresh, training_activations), *checkpoint, batches[10:])
    for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    straight, resumed = find_maxp_state(straight_state), find_maxp_state(state)
    for field in ScaleByMaxPState._fields:
        pairs = zip(
            jax.tree.leaves(getattr(straight, field)), jax.tree.leaves(getattr(resumed, field)), strict=True
        )
        for a, b in pairs:
            np.testing.assert_array_equal(a, b, err_msg=field)
    assert int(resumed.count) == 20
    if mode != "static":
        assert int(resumed.solves) == 18 and not np.array_equal(resumed.factors, PRESET_FACTORS)


def test_state_counters_start_at_zero() -> None:
    state = scale_by_maxp(SPEC, dynamic()).init(PARAMS)
    for name in ("solves", "failures", "missing"):
        counter = getattr(state, name)
        assert (int(counter), counter.dtype) == (0, jnp.int32), name
