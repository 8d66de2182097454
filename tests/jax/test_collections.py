"""Dynamic alignment on a model with batch statistics: measured with the current statistics (in
eval mode), never the stale initial ones, in the step and between steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxp_core import MaxPError
from maxp_jax import (
    DynamicAlignment,
    MaxPSpec,
    Rule,
    SolveBetweenSteps,
    abc_init,
    find_maxp_state,
    scale_by_maxp,
)
from maxp_jax.dynamic import AlignmentResolver

RULES = [
    Rule("params/Dense_0/.*", "embedding"),
    Rule("params/Dense_[12]/.*", "hidden"),
    Rule("params/Dense_3/.*", "readout"),
]


class BatchNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(3):
            x = nn.Dense(32)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
            x = nn.relu(x)
        return nn.Dense(4)(x)


def setup(in_step: bool):
    model = BatchNormMLP()
    x = jax.random.normal(jax.random.key(0), (32, 8))
    y = jax.random.normal(jax.random.key(1), (32, 4))
    variables = model.init(jax.random.key(2), x, train=False)
    params, stats = {"params": variables["params"]}, variables["batch_stats"]
    spec = MaxPSpec(params, RULES)
    params = abc_init(spec, params, jax.random.key(3))

    def evaluate(p, sample, collections):
        return model.apply({**p, "batch_stats": collections}, sample, train=False)

    dynamic = DynamicAlignment(
        evaluate, x, warmup_steps=1, solve_interval=2, in_step=in_step, collections=stats
    )
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dynamic), optax.scale_by_learning_rate(0.05))

    def step(p, s, opt_state):
        def loss(p):
            out, updated = model.apply({**p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
            return ((out - y) ** 2).mean(), updated["batch_stats"]

        # The measurement inside this update is of the params before it: give it the statistics
        # that go with them, those before this step's forward.
        extra = {"maxp_collections": s} if in_step else {}
        (_, s), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, opt_state = tx.update(grads, opt_state, p, **extra)
        return optax.apply_updates(p, updates), s, opt_state

    return model, x, spec, dynamic, tx, step, params, stats, evaluate


def test_the_measurement_uses_the_current_statistics() -> None:
    model, x, spec, dynamic, tx, step, params, stats, evaluate = setup(in_step=False)
    solve = SolveBetweenSteps(spec, dynamic)
    opt_state = tx.init(params)
    for k in range(1, 6):
        params, stats, opt_state = jax.jit(step)(params, stats, opt_state)
        opt_state = solve(opt_state, params, updates_done=k, collections=stats)
    state = find_maxp_state(opt_state)
    assert int(state.solves) == 2
    measured, _ = AlignmentResolver(spec, dynamic).measure(params, state, {"maxp_collections": stats})

    # Independent: the same measurement by a forward that closes over the statistics, with the
    # same initial inputs; current statistics agree, the initial (stale) ones do not.
    def closed_over(s):
        plain = DynamicAlignment(
            lambda p, sample: evaluate(p, sample, s), x, warmup_steps=1, solve_interval=2
        )
        return AlignmentResolver(spec, plain).measure(params, state)[0]

    np.testing.assert_allclose(measured, closed_over(stats), rtol=1e-6)
    initial_stats = model.init(jax.random.key(2), x, train=False)["batch_stats"]
    assert not np.allclose(measured, closed_over(initial_stats), rtol=1e-3)


def test_in_the_step_and_between_steps_agree() -> None:
    runs = []
    for in_step in (True, False):
        _, _, spec, dynamic, tx, step, params, stats, _ = setup(in_step)
        solve = None if in_step else SolveBetweenSteps(spec, dynamic)
        opt_state = tx.init(params)
        history = []
        for k in range(1, 7):
            params, stats, opt_state = jax.jit(step)(params, stats, opt_state)
            if solve is not None:
                opt_state = solve(opt_state, params, updates_done=k, collections=stats)
            history.append(jax.device_get(find_maxp_state(opt_state)))
        runs.append(history)
    inside, outside = runs
    for k in (3, 5):  # between steps after update k-1 = in the step during update k (see test_between_steps)
        np.testing.assert_allclose(outside[k - 2].c, inside[k - 1].c, rtol=2e-5, atol=1e-6)


def test_a_measurement_without_the_current_statistics_is_refused() -> None:
    _, _, spec, dynamic, tx, step, params, stats, _ = setup(in_step=False)
    solve = SolveBetweenSteps(spec, dynamic)
    opt_state = tx.init(params)
    for k in range(1, 4):
        params, stats, opt_state = jax.jit(step)(params, stats, opt_state)
        if k < 3:
            opt_state = solve(opt_state, params, updates_done=k, collections=stats)
    with pytest.raises(MaxPError, match="maxp_collections=variables\\['batch_stats'\\]"):
        solve(opt_state, params, updates_done=3)  # due after update 3 (warm-up 1, every 2)
    with pytest.raises(MaxPError, match="same collections"):
        solve(opt_state, params, updates_done=3, collections={"other": jnp.ones(3)})


def test_an_nnx_model_measures_with_its_current_batch_stats() -> None:
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.inp, self.norm = nnx.Linear(8, 32, rngs=rngs), nnx.BatchNorm(32, momentum=0.5, rngs=rngs)
            self.hid, self.out = nnx.Linear(32, 32, rngs=rngs), nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            return self.out(jax.nn.relu(self.hid(jax.nn.relu(self.norm(self.inp(x))))))

    model = Net(nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    stats = jax.tree.map(jnp.array, stats)  # a copy: the model's training forward updates its own
    spec = MaxPSpec(
        params, [Rule("inp/.*", "embedding"), Rule("hid/.*", "hidden"), Rule("out/.*", "readout")]
    )
    x = jax.random.normal(jax.random.key(1), (32, 8))

    def evaluate(p, sample, collections):
        net = nnx.merge(graphdef, p, collections)
        net.eval()
        return net(sample)

    dynamic = DynamicAlignment(
        evaluate, x, warmup_steps=0, solve_interval=1, in_step=False, collections=stats
    )
    tx = scale_by_maxp(spec, dynamic)
    state = tx.init(params)
    model.train()
    model(x * 3.0 + 1.0)  # a training forward moves the running statistics
    _, params, moved = nnx.split(model, nnx.Param, nnx.BatchStat)
    resolver = AlignmentResolver(spec, dynamic)
    # The weights have not moved: the hidden layer's input moved only with the statistics.
    hidden = [layer.name for layer in spec.layers].index("hid")
    position = list(resolver.layer_inputs(params).measured).index(hidden)
    z0 = state.z0[position]
    current = resolver._sample_rows(params, moved)[hidden]
    initial = resolver._sample_rows(params, stats)[hidden]
    assert float(jnp.abs(initial - z0).max()) < 1e-5
    assert float(jnp.abs(current - z0).max()) > 0.1
    measured = resolver.measure(params, state, {"maxp_collections": moved})[0]
    reference = AlignmentResolver(
        spec, DynamicAlignment(lambda p, sample: evaluate(p, sample, moved), x, in_step=False)
    ).measure(params, state)[0]
    np.testing.assert_allclose(measured, reference, rtol=1e-6)


def test_collections_given_to_a_dynamic_alignment_without_them_are_refused() -> None:
    model, x, spec, _, _, _, params, stats, _ = setup(in_step=False)

    def evaluate(p, sample):
        return model.apply({**p, "batch_stats": stats}, sample, train=False)

    plain = DynamicAlignment(evaluate, x, warmup_steps=0, solve_interval=1, in_step=False)
    tx = scale_by_maxp(spec, plain)
    state = tx.init(params)
    with pytest.raises(MaxPError, match="this DynamicAlignment has none"):
        SolveBetweenSteps(spec, plain)(state, params, updates_done=0, collections=stats)
