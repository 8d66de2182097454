"""scale_by_maxp and the optimizers built on it, against numpy and against each other."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maxp_jax
from maxp_core import MaxPError, SolveSchedule, WSDSchedule
from maxp_jax import FACTOR_DTYPE, MaxPSpec, Rule, abc_init, find_maxp_state, scale_by_maxp, set_factors
from tests.jax.models import MLP, mlp_and_spec


def loss_fn(model, params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def batch(seed=0, n=32, in_dim=16):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, in_dim)), jnp.float32), jnp.asarray(rng.integers(0, 10, n))


def test_updates_scaled_by_width_to_minus_c() -> None:
    _, params, spec = mlp_and_spec(width=64, depth=4)
    tx = scale_by_maxp(spec)
    state = tx.init(params)
    assert state.factors.dtype == FACTOR_DTYPE
    ones = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(ones, state)
    for layer, (_, _, c) in zip(spec.layers, spec.effective_abc(), strict=True):
        expected = np.float32(64.0**-c)
        for path in layer.paths:
            module, leaf = path.split("/")[1:]
            np.testing.assert_array_equal(np.asarray(updates["params"][module][leaf]), expected)
    assert int(state.count) == 1


def test_unmatched_leaves_keep_the_base_rate() -> None:
    params = {"e": jnp.ones((8, 32)), "o": jnp.ones((32, 2)), "norm": {"scale": jnp.ones(32)}}
    spec = MaxPSpec(params, [Rule("e", "embedding"), Rule("o", "readout")])
    updates, _ = scale_by_maxp(spec).update(params, scale_by_maxp(spec).init(params))
    np.testing.assert_array_equal(updates["norm"]["scale"], params["norm"]["scale"])


def numpy_adamw(params, grads_seq, lr, factors_by_path, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """AdamW with per-path learning rate lr * factor and decoupled decay, as torch does it."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            rate = lr * factors_by_path.get(k, 1.0)
            p[k] = p[k] - rate * (mhat / (np.sqrt(vhat) + eps) + wd * p[k])
    return p


def test_adamw_matches_per_group_adamw_with_decoupled_decay() -> None:
    rng = np.random.default_rng(3)
    params = {"e": jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)}
    params["h"] = jnp.asarray(rng.standard_normal((32, 32)), jnp.float32)
    params["o"] = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
    params["free"] = jnp.asarray(rng.standard_normal(5), jnp.float32)
    spec = MaxPSpec(params, [Rule("e", "embedding"), Rule("h", "hidden"), Rule("o", "readout")])
    tx = maxp_jax.adamw(spec, learning_rate=0.05, weight_decay=0.1)
    state = tx.init(params)
    grads_seq = [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
        for _ in range(5)
    ]
    p = params
    for grads in grads_seq:
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    factors = {layer.weight_path: f for layer, f in zip(spec.layers, spec.factors(), strict=True)}
    expected = numpy_adamw(params, grads_seq, 0.05, factors, wd=0.1)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=2e-5, atol=5e-6)


def test_sgd_momentum_matches_torch_order() -> None:
    rng = np.random.default_rng(4)
    params = {
        "e": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32),
        "o": jnp.asarray(rng.standard_normal((16, 2)), jnp.float32),
    }
    spec = MaxPSpec(params, [Rule("e", "embedding"), Rule("o", "readout")], optimizer="sgd")
    tx = maxp_jax.sgd(spec, learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    state = tx.init(params)
    factors = {layer.weight_path: f for layer, f in zip(spec.layers, spec.factors(), strict=True)}
    p_ref = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: None for k in params}
    p = params
    for _ in range(4):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        for k in p_ref:  # torch.optim.SGD: d = g + wd p; buf = m buf + d; p -= lr buf
            d = np.asarray(grads[k], np.float64) + 0.01 * p_ref[k]
            buf[k] = d if buf[k] is None else 0.9 * buf[k] + d
            p_ref[k] = p_ref[k] - 0.1 * factors[k] * buf[k]
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), p_ref[k], rtol=1e-5, atol=1e-6)


def test_set_factors_does_not_retrace_a_jitted_step() -> None:
    model, params, spec = mlp_and_spec()
    tx = optax.chain(optax.clip_by_global_norm(1.0), maxp_jax.adamw(spec, learning_rate=1e-3))
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, x, y):
        traces.append(1)
        grads = jax.grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    x, y = batch()
    params, state = step(params, state, x, y)
    new_c = spec.c - 0.25
    state = set_factors(state, spec, new_c)
    params, state = step(params, state, x, y)
    assert len(traces) == 1
    np.testing.assert_allclose(find_maxp_state(state).factors, spec.factors(new_c).astype(np.float32))
    with pytest.raises(MaxPError, match="c of layer 'params/Dense_1' = nan is not a finite number"):
        set_factors(state, spec, np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(MaxPError, match=r"one exponent per layer \(4: "):
        set_factors(state, spec, spec.c[:3])


def test_composes_with_inject_hyperparams_and_partition() -> None:
    model, params, spec = mlp_and_spec()
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    tx = optax.chain(scale_by_maxp(spec), inner)
    state = tx.init(params)
    x, y = batch()
    grads = jax.grad(lambda p: loss_fn(model, p, x, y))(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    factor0 = spec.factors()[0]
    np.testing.assert_allclose(
        updates["params"]["Dense_0"]["kernel"],
        -0.1 * factor0 * grads["params"]["Dense_0"]["kernel"],
        rtol=1e-6,
    )
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if "Dense_3" in str(p) else "train", params
    )
    partitioned = optax.partition(
        {"train": optax.chain(scale_by_maxp(spec), optax.sgd(0.1)), "frozen": optax.set_to_zero()}, labels
    )
    pstate = partitioned.init(params)
    updates, _ = partitioned.update(grads, pstate, params)
    assert float(jnp.abs(updates["params"]["Dense_3"]["kernel"]).max()) == 0.0
    np.testing.assert_allclose(
        updates["params"]["Dense_1"]["kernel"],
        -0.1 * spec.factors()[1] * grads["params"]["Dense_1"]["kernel"],
        rtol=1e-6,
    )


def test_wsd_schedule_is_the_core_curve() -> None:
    schedule = maxp_jax.wsd_schedule(0.3, warmup_steps=5, stable_steps=10, decay_steps=20, min_factor=0.1)
    curve = WSDSchedule(5, 10, 20, "cosine", 0.1)
    steps = np.arange(0, 40)
    np.testing.assert_allclose(np.asarray(jax.vmap(schedule)(steps)), 0.3 * curve(steps), rtol=1e-6)
    tx = maxp_jax.adamw(mlp_and_spec()[2], learning_rate=schedule)
    assert tx is not None


def test_abc_init_standard_deviations() -> None:
    model = MLP(width=512, depth=3)
    params = model.init(jax.random.key(1), jnp.ones((1, 256)))
    for mode in ("folded", "explicit"):
        spec = MaxPSpec(
            params,
            [
                Rule("params/Dense_0/.*", "embedding"),
                Rule("params/Dense_1/.*", "hidden"),
                Rule("params/Dense_2/.*", "readout"),
            ],
            multipliers=mode,
        )
        new = abc_init(spec, params, jax.random.key(2), std_prefactor=2.0)
        for layer, (_, b, _) in zip(spec.layers, spec.effective_abc(), strict=True):
            module = layer.name.split("/")[1]
            std = float(jnp.std(new["params"][module]["kernel"]))
            assert std == pytest.approx(2.0 * layer.width**-b, rel=0.05), (mode, module)
            assert float(jnp.abs(new["params"][module]["bias"]).max()) == 0.0


def test_folded_and_explicit_multipliers_train_alike() -> None:
    """The abc symmetry: folding n^-a into init and learning rate gives the same function
    and the same training, up to Adam's eps (set tiny here)."""
    depth, width = 4, 64
    model_f, params, spec_f = mlp_and_spec(width=width, depth=depth, multipliers="folded")
    spec_e = MaxPSpec(params, spec_f.rules, multipliers="explicit")
    mults = tuple(spec_e.multiplier(layer.name) for layer in spec_e.layers)
    model_e = MLP(width, depth, multipliers=mults)
    params_e = abc_init(spec_e, params, jax.random.key(5))
    # The folded weights are the explicit ones times their multiplier: same function.
    params_f = jax.tree_util.tree_map_with_path(
        lambda p, w: w * mults[int(str(p[1].key).split("_")[1])], params_e
    )
    x, y = batch(1)
    np.testing.assert_allclose(model_f.apply(params_f, x), model_e.apply(params_e, x), rtol=1e-5, atol=1e-6)
    losses = {}
    for name, model, spec, p in (
        ("folded", model_f, spec_f, params_f),
        ("explicit", model_e, spec_e, params_e),
    ):
        tx = maxp_jax.adamw(spec, learning_rate=0.02, eps=1e-20)

        @jax.jit
        def step(p, state, model=model, tx=tx):
            loss, grads = jax.value_and_grad(loss_fn, argnums=1)(model, p, x, y)
            updates, state = tx.update(grads, state, p)
            return optax.apply_updates(p, updates), state, loss

        state = tx.init(p)
        trace = []
        for _t in range(20):
            p, state, loss = step(p, state)
            trace.append(float(loss))
        losses[name] = trace
    np.testing.assert_allclose(losses["folded"], losses["explicit"], rtol=1e-4)
    assert losses["folded"][-1] < losses["folded"][0]


def test_state_round_trips_through_flax_serialization() -> None:
    model, params, spec = mlp_and_spec()
    tx = maxp_jax.adamw(spec, learning_rate=1e-2)
    state = set_factors(tx.init(params), spec, spec.c - 0.1)

    def run(p, s, steps, start):
        for t in range(start, start + steps):
            x, y = batch(t)
            grads = jax.grad(loss_fn, argnums=1)(model, p, x, y)
            updates, s = tx.update(grads, s, p)
            p = optax.apply_updates(p, updates)
        return p, s

    p1, s1 = run(params, state, 3, 0)
    blob = flax.serialization.to_bytes((p1, s1))
    p2, s2 = flax.serialization.from_bytes((params, tx.init(params)), blob)
    assert find_maxp_state(s2).factors.dtype == FACTOR_DTYPE
    resumed, _ = run(p2, s2, 3, 3)
    straight, _ = run(p1, s1, 3, 3)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)


SOLVES_IN_6 = sum(bool(SolveSchedule(1, 2).due(k)) for k in range(6))  # warm-up 1, every 2 steps


def _steps(tx, model, params, n=6):
    x, y = batch(1)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(n):
        params, state = step(params, state)
    return params, find_maxp_state(state)


def test_adamw_and_sgd_take_dynamic_as_their_chain_does() -> None:
    model, params, spec = mlp_and_spec(width=32, depth=3)
    dyn = maxp_jax.DynamicAlignment(model.apply, batch(2)[0], warmup_steps=1, solve_interval=2)
    built = maxp_jax.adamw(spec, 1e-2, weight_decay=0.1, dynamic=dyn)
    by_hand = optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(0.1),
        scale_by_maxp(spec, dyn),
        optax.scale_by_learning_rate(1e-2),
    )
    (p1, s1), (p2, s2) = _steps(built, model, params), _steps(by_hand, model, params)
    assert int(s1.solves) == SOLVES_IN_6 > 0 and np.array_equal(s1.factors, s2.factors)
    assert not np.allclose(s1.factors, spec.factors())  # the re-solves moved the rates
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True))
    sgd = maxp_jax.sgd(spec, 1e-2, momentum=0.9, dynamic=dyn)
    assert int(_steps(sgd, model, params)[1].solves) == SOLVES_IN_6


def test_dynamic_maxp_inside_a_partition_is_refused_and_after_it_works() -> None:
    model, params, spec = mlp_and_spec(width=32, depth=3)
    dyn = maxp_jax.DynamicAlignment(model.apply, batch(2)[0], warmup_steps=1, solve_interval=2)
    labels = jax.tree_util.tree_map_with_path(lambda path, _: "bias" if "bias" in str(path) else "w", params)
    inside = optax.partition({"w": scale_by_maxp(spec, dyn), "bias": optax.identity()}, labels)
    with pytest.raises(MaxPError, match=r"inside optax.partition .* chain it after the partition"):
        inside.init(params)
    after = optax.chain(
        optax.partition({"w": optax.scale_by_adam(), "bias": optax.scale_by_adam(b1=0.5)}, labels),
        scale_by_maxp(spec, dyn),
        optax.scale_by_learning_rate(1e-2),
    )
    assert int(_steps(after, model, params)[1].solves) == SOLVES_IN_6


def test_metrics_flatten_the_state_inside_jit_as_outside() -> None:
    model, params, spec = mlp_and_spec(width=32, depth=3)
    dyn = maxp_jax.DynamicAlignment(model.apply, batch(2)[0], warmup_steps=1, solve_interval=2)
    tx = maxp_jax.adamw(spec, 1e-2, dynamic=dyn)
    x, y = batch(1)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: loss_fn(model, p, x, y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, maxp_jax.metrics(state, spec)

    state = tx.init(params)
    for _ in range(4):
        params, state, logged = step(params, state)
    maxp = find_maxp_state(state)
    names = [layer.name for layer in spec.layers]
    assert set(logged) == {
        f"maxp/{k}/{n}" for k in ("lr_factor", "c", "alpha", "omega", "u") for n in names
    } | {
        "maxp/step",
        "maxp/solves",
        "maxp/failures",
        "maxp/missing",
        "maxp/solve_seconds",
    }
    assert [float(logged[f"maxp/lr_factor/{n}"]) for n in names] == [float(v) for v in maxp.factors]
    assert [float(logged[f"maxp/omega/{n}"]) for n in names] == [float(v) for v in maxp.alignment[:, 1]]
    assert int(logged["maxp/solves"]) == int(maxp.solves) > 0
    assert maxp_jax.metrics(state, spec).keys() == logged.keys()


def test_metrics_refuse_a_spec_the_state_was_not_built_with() -> None:
    _, params, spec = mlp_and_spec(width=32, depth=3)
    _, _, other = mlp_and_spec(width=32, depth=4)
    state = scale_by_maxp(spec).init(params)
    with pytest.raises(
        MaxPError, match=r"metrics: the optimizer state holds 3 layers' factors but the spec has 4"
    ):
        maxp_jax.metrics(state, other)
    with pytest.raises(MaxPError, match=r"metrics: spec must be a MaxPSpec, got dict"):
        maxp_jax.metrics(state, {})
