"""Dynamic maxP in JAX: captured inputs, alignment against numpy, re-solves against the core LP."""

import re
import warnings

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import maxp_jax
from maxp_core import InfeasibleError, MaxPError, MaxPWarning, StabilityLP, alignment, layer_alignment
from maxp_core.alignment import weight_norms
from maxp_jax import DynamicAlignment, LayerInputs, MaxPSpec, Rule, find_maxp_state, scale_by_maxp
from tests.jax.models import mlp_and_spec
from tests.jax.test_transform import batch, loss_fn

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("mode", ["rms", "spectral"])
def test_jax_alignment_matches_numpy_reference(mode: str) -> None:
    cases = [
        (RNG.standard_normal((6, 48)), RNG.standard_normal((20, 48))),
        (RNG.standard_normal((6, 48)), np.outer(RNG.standard_normal(20), RNG.standard_normal(48))),
        (np.zeros((3, 48)), RNG.standard_normal((5, 48))),
        (RNG.standard_normal((4, 48)), np.zeros((5, 48))),
        (RNG.standard_normal((4, 1)), RNG.standard_normal((5, 1))),
    ]
    nan_rows = RNG.standard_normal((4, 48))
    nan_rows[1, 3] = np.nan
    cases.append((nan_rows, RNG.standard_normal((5, 48))))
    jitted = jax.jit(lambda a, b: alignment(a, b, mode, xp=jnp))  # compiled once per shape
    for x, y in cases:
        expected = alignment(x, y, mode)
        got = jitted(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
        assert float(got) == pytest.approx(expected, abs=1e-5, nan_ok=True)


def test_captured_inputs_of_a_plain_jax_function() -> None:
    def apply(params, x):
        h = jax.nn.relu(x @ params["w1"])  # (in, out)
        h = jnp.tanh(h @ params["w2"].T)  # torch layout (out, in)
        return h @ params["w3"]

    params = {"w1": jnp.asarray(RNG.standard_normal((5, 16)), jnp.float32)}
    params["w2"] = jnp.asarray(RNG.standard_normal((16, 16)), jnp.float32)
    params["w3"] = jnp.asarray(RNG.standard_normal((16, 3)), jnp.float32)
    spec = MaxPSpec(
        params, [Rule("w1", "embedding"), Rule("w2", "hidden", layout="torch"), Rule("w3", "readout")]
    )
    x = jnp.asarray(RNG.standard_normal((7, 5)), jnp.float32)
    capture = LayerInputs(spec, apply, params, x)
    out, inputs = jax.jit(capture)(params, x)
    h1 = jax.nn.relu(x @ params["w1"])
    h2 = jnp.tanh(h1 @ params["w2"].T)
    np.testing.assert_allclose(out, apply(params, x), rtol=1e-6)
    np.testing.assert_allclose(inputs[0], x, rtol=1e-6)
    np.testing.assert_allclose(inputs[1], h1, rtol=1e-6)
    np.testing.assert_allclose(inputs[2], h2, rtol=1e-6)
    weights = capture.weight_matrices(params)
    np.testing.assert_array_equal(weights[1], params["w2"])  # already (out, in)
    np.testing.assert_array_equal(weights[2], params["w3"])  # (in, out): kept so, not copied
    assert not capture.fan_in_first(1) and capture.fan_in_first(2)


def test_captured_inputs_of_an_nnx_model() -> None:
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(4, 32, rngs=rngs)
            self.b = nnx.Linear(32, 32, rngs=rngs)
            self.c = nnx.Linear(32, 2, rngs=rngs)

        def __call__(self, x):
            return self.c(jax.nn.gelu(self.b(jax.nn.gelu(self.a(x)))))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    spec = MaxPSpec(state, [Rule("a/.*", "embedding"), Rule("b/.*", "hidden"), Rule("c/.*", "readout")])
    x = jnp.ones((3, 4))
    _, inputs = LayerInputs(spec, apply, state, x)(state, x)
    model = nnx.merge(graphdef, state)
    np.testing.assert_allclose(inputs[2], jax.nn.gelu(model.b(jax.nn.gelu(model.a(x)))), rtol=1e-5)


def test_weight_not_in_a_product_is_an_error() -> None:
    def apply(params, tokens):
        h = jnp.take(params["table"], tokens, axis=0)
        h = jnp.take(params["mix"], jnp.argmax(h, -1), axis=0)  # a hidden weight used by a gather
        return h @ params["out"]

    params = {"table": jnp.ones((10, 8)), "mix": jnp.ones((8, 8)), "out": jnp.ones((8, 2))}
    spec = MaxPSpec(
        params,
        [Rule("table", "embedding", layout="embedding"), Rule("mix", "hidden"), Rule("out", "readout")],
    )
    with pytest.raises(MaxPError, match=r"mix: cannot find the input .*first meets 'gather'"):
        LayerInputs(spec, apply, params, jnp.zeros((3,), jnp.int32))


def _train(model, params, tx, steps, x, y):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        grads = jax.grad(loss_fn, argnums=1)(model, p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    history = []
    for _ in range(steps):
        before = params
        params, state = step(params, state)
        history.append((before, find_maxp_state(state)))
    return params, state, history


def test_first_resolve_equals_core_lp_on_numpy_alignments() -> None:
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(1))
    x, y = batch(2, n=48)
    dyn = DynamicAlignment(model.apply, x, warmup_steps=0, solve_interval=3, sample_size=32)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.03))
    _, _, history = _train(model, params, tx, 5, x, y)
    assert [int(s.solves) for _, s in history] == [0, 0, 0, 1, 1]
    # The 4th update (count 3) re-solved with the weights after 3 steps.
    weights_now = history[3][0]

    def activations(p):
        acts, h = [], x
        for i in range(4):
            acts.append(np.asarray(h, np.float64)[:32])
            h = h @ p["params"][f"Dense_{i}"]["kernel"] + p["params"][f"Dense_{i}"]["bias"]
            h = jax.nn.relu(h) if i < 3 else h
        return acts

    z0, z = activations(params), activations(weights_now)
    measured = []
    for i in range(4):
        w0 = np.asarray(params["params"][f"Dense_{i}"]["kernel"], np.float64).T
        w = np.asarray(weights_now["params"][f"Dense_{i}"]["kernel"], np.float64).T
        measured.append(tuple(layer_alignment(z0[i], z[i], w0, w)))
    measured = np.array(measured)
    # The embedding's input is the sample itself (dz = 0): omega and u carry no information.
    assert np.isnan(measured[0, 1:]).all() and np.isfinite(measured[1:]).all()
    state = history[3][1]
    np.testing.assert_allclose(np.asarray(state.alignment)[1:], measured[1:], atol=2e-5)
    np.testing.assert_allclose(np.asarray(state.alignment)[0], [1.0, 0.5, 1.0])  # embedding: preset kept
    assert int(state.missing) == 0  # the embedding is not measured: the LP does not use it
    # What every measurement reads of the initial weights was taken once, at init.
    for i, norms in enumerate(state.w0_norms):
        kernel = np.asarray(params["params"][f"Dense_{i}"]["kernel"], np.float64)
        np.testing.assert_allclose(np.asarray(norms), weight_norms(kernel), rtol=1e-6)
    used = np.vstack([[1.0, 0.5, 1.0], measured[1:]])
    expected = StabilityLP(spec.graph, "adam").solve(alpha=used[:, 0], omega=used[:, 1], u=used[:, 2])
    np.testing.assert_allclose(np.asarray(state.c), list(expected.c.values()), atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(state.factors), spec.factors(np.asarray(state.c, np.float64)), rtol=1e-6
    )


def test_failed_resolve_keeps_factors_and_warns(monkeypatch) -> None:
    model, params, spec = mlp_and_spec(width=32, depth=3)
    x, y = batch(3)

    def refuse(**numbers):
        raise InfeasibleError("no learning rates keep every node stable (test)")

    monkeypatch.setattr(spec.lp, "solve", refuse)
    dyn = DynamicAlignment(model.apply, x, warmup_steps=0, solve_interval=1)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, state, _ = _train(model, params, tx, 6, x, y)
        jax.effects_barrier()
    ms = find_maxp_state(state)
    assert int(ms.failures) == 5 and int(ms.solves) == 0
    np.testing.assert_array_equal(np.asarray(ms.factors), spec.factors().astype(np.float32))
    told = [str(w.message) for w in caught if issubclass(w.category, MaxPWarning)]
    # Warned at the 1st, 2nd and 4th failure, with the running count.
    assert [re.search(r"\((\d+) failed so far\)", m).group(1) for m in told] == ["1", "2", "4"]
    assert all("re-solve failed" in m and "no learning rates keep every node stable" in m for m in told)


def test_resample_w0_gives_the_same_resolve() -> None:
    model, params, spec = mlp_and_spec(width=64, depth=3)
    key = jax.random.key(4)
    params = maxp_jax.abc_init(spec, params, key, std_prefactor=1.5)
    x, y = batch(5)
    results = []
    for resample in (False, True):
        dyn = DynamicAlignment(
            model.apply,
            x,
            warmup_steps=2,
            solve_interval=2,
            resample_w0=resample,
            init_key=key,
            std_prefactor=1.5,
        )
        tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))
        _, state, _ = _train(model, params, tx, 5, x, y)
        ms = find_maxp_state(state)
        assert (len(ms.w0) == 0) == resample and len(ms.w0_norms) == len(ms.w0)
        results.append(np.asarray(ms.c))
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_dynamic_state_checkpoint_resume_is_exact() -> None:
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(6))
    x, y = batch(6)
    dyn = DynamicAlignment(model.apply, x, warmup_steps=1, solve_interval=2, alignment_ema=0.5, c_ema=0.3)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))

    @jax.jit
    def step(p, s):
        grads = jax.grad(loss_fn, argnums=1)(model, p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    p, s = params, tx.init(params)
    for _ in range(4):
        p, s = step(p, s)
    blob = flax.serialization.to_bytes((p, s))
    p2, s2 = flax.serialization.from_bytes((params, tx.init(params)), blob)
    for _ in range(4):
        p, s = step(p, s)
        p2, s2 = step(p2, s2)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(find_maxp_state(s).solves) == 3  # after steps 3, 5 and 7


@pytest.mark.parametrize("use_training_activations", [False, True])
def test_donating_params_and_state_trains_like_keeping_them(use_training_activations: bool) -> None:
    # The first layer's initial input is the sample itself, and a torch-layout weight is the
    # parameter: the state must own copies, or a donating step deletes what it reads next.
    def apply(params, x):
        return jnp.tanh(x @ params["w1"]) @ params["w2"].T

    rng = np.random.default_rng(8)
    params = {
        "w1": jnp.asarray(rng.standard_normal((16, 48)) / 4, jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((10, 48)) / 48, jnp.float32),
    }
    spec = MaxPSpec(params, [Rule("w1", "embedding"), Rule("w2", "readout", layout="torch")])
    x, y = batch(8)
    capture = LayerInputs(spec, apply, params, x)
    dyn = DynamicAlignment(
        apply, x, warmup_steps=1, solve_interval=2, use_training_activations=use_training_activations
    )
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))

    def step(p, s):
        def loss(q):
            logits, inputs = capture(q, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), inputs

        grads, inputs = jax.grad(loss, has_aux=True)(p)
        extra = {"maxp_inputs": inputs, "maxp_batch": x} if use_training_activations else {}
        updates, s = tx.update(grads, s, p, **extra)
        return optax.apply_updates(p, updates), s

    kept, donating = jax.jit(step), jax.jit(step, donate_argnums=(0, 1))
    p1, s1 = params, tx.init(params)
    p2, s2 = jax.tree.map(jnp.copy, params), tx.init(params)
    for t in range(6):
        p1, s1 = kept(p1, s1)
        if t == 3:
            # A new trace after donated steps (as when a step is recompiled) reads the sample
            # and the initial state again; it re-solves at once.
            donating = jax.jit(lambda p, s: step(p, s), donate_argnums=(0, 1))
        p2, s2 = donating(p2, s2)
    assert int(find_maxp_state(s2).solves) == 2  # after steps 3 and 5
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solve_interval": 0}, "solve_interval must be an integer >= 1"),
        ({"c_ema": 1.0}, r"c_ema = 1\.0 is out of range; it must lie in \[0, 1\)"),
        ({"mode": "l2"}, r"mode must be one of \['rms', 'spectral'\], got 'l2'"),
        ({"sample_size": 0}, "sample_size must be an integer >= 1, got 0"),
        ({"resample_w0": True}, "resample_w0=True needs init_key"),
    ],
)
def test_dynamic_config_errors(kwargs, message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        DynamicAlignment(lambda p, x: x, jnp.ones((1, 2)), **kwargs)


@pytest.mark.parametrize(("optimizer", "feature_learning"), [("sgd", False), ("adam", True), ("sgd", True)])
def test_dynamic_sgd_and_feature_learning_follow_the_core_lp(optimizer: str, feature_learning: bool) -> None:
    model, params, _ = mlp_and_spec(width=64, depth=4)
    spec = MaxPSpec(
        params, mlp_and_spec(depth=4)[2].rules, optimizer=optimizer, feature_learning=feature_learning
    )
    params = maxp_jax.abc_init(spec, params, jax.random.key(7))
    x, y = batch(8)
    dyn = DynamicAlignment(model.apply, x, warmup_steps=1, solve_interval=1)
    base = optax.scale_by_adam() if optimizer == "adam" else optax.identity()
    tx = optax.chain(base, scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.01))
    _, state, _ = _train(model, params, tx, 4, x, y)
    ms = find_maxp_state(state)
    assert int(ms.solves) == 2 and int(ms.failures) == 0
    al = np.asarray(ms.alignment, np.float64)
    lp = StabilityLP(spec.graph, optimizer, feature_learning=feature_learning)
    expected = lp.solve(alpha=al[:, 0], omega=al[:, 1], u=al[:, 2])
    np.testing.assert_allclose(np.asarray(ms.c), list(expected.c.values()), atol=1e-5)
    if feature_learning:
        assert abs(expected.r["params/Dense_2"]) < 1e-6


def test_training_activations_give_the_same_resolve_as_a_sample_forward() -> None:
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(9))
    x, y = batch(9, n=32)
    results = {}
    for reuse in (False, True):
        dyn = DynamicAlignment(
            model.apply, x, warmup_steps=1, solve_interval=2, use_training_activations=reuse
        )
        tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))
        capture = LayerInputs(spec, model.apply, params, x)

        @jax.jit
        def step(p, s, tx=tx, capture=capture, reuse=reuse):
            def loss(q):
                logits, inputs = capture(q, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), inputs

            (_, inputs), grads = jax.value_and_grad(loss, has_aux=True)(p)
            extra = {"maxp_inputs": inputs, "maxp_batch": x} if reuse else {}
            updates, s = tx.update(grads, s, p, **extra)
            return optax.apply_updates(p, updates), s

        p, s = params, tx.init(params)
        for _ in range(6):
            p, s = step(p, s)
        ms = find_maxp_state(s)
        assert int(ms.solves) == 2
        assert (len(ms.z0) == 0) == reuse
        results[reuse] = (np.asarray(ms.alignment), np.asarray(ms.c))
    np.testing.assert_allclose(results[True][0], results[False][0], atol=1e-6)
    np.testing.assert_allclose(results[True][1], results[False][1], atol=1e-6)

    tx = scale_by_maxp(
        spec, DynamicAlignment(model.apply, x, solve_interval=1, use_training_activations=True)
    )
    state = tx.init(params)
    state = state._replace(count=jnp.asarray(1, jnp.int32))
    with pytest.raises(
        MaxPError, match=r"needs the update's extra arguments \['maxp_inputs', 'maxp_batch'\]"
    ):
        tx.update(params, state, params)


def test_a_state_without_the_initial_norms_measures_the_same() -> None:
    """A state saved before it kept w0's norms (w0_norms=()) takes them from w0 at each measurement."""
    from maxp_jax.dynamic import AlignmentResolver

    model, params, spec = mlp_and_spec(width=32, depth=3)
    params = maxp_jax.abc_init(spec, params, jax.random.key(2))
    x, _ = batch(4)
    dyn = DynamicAlignment(model.apply, x, sample_size=16)
    state = scale_by_maxp(spec, dyn).init(params)
    assert len(state.w0_norms) == len(state.w0) > 0
    moved = jax.tree.map(lambda p: p * 1.1 + 0.01, params)
    resolver = AlignmentResolver(spec, dyn)
    kept, flags = resolver.measure(moved, state)
    again, flags_again = resolver.measure(moved, state._replace(w0_norms=()))
    np.testing.assert_allclose(np.asarray(again), np.asarray(kept), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(flags_again), np.asarray(flags))


def test_small_equally_shaped_layers_are_measured_as_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flax GPT's small layers (each block's q, k, v, ...) are measured as stacks: one batched
    product per stack instead of one per layer, and the same alignments and flags as layer by
    layer."""
    from examples.flax_models import FlaxGPT, gpt_rules
    from maxp_core import stacking
    from maxp_jax.dynamic import AlignmentResolver

    model = FlaxGPT(d=32, blocks=2, vocab=40, ctx=8)
    x = jax.random.randint(jax.random.key(1), (2, 8), 0, 40)
    params = model.init(jax.random.key(0), x)
    spec = MaxPSpec(params, gpt_rules(), apply_fn=model.apply, sample_input=x[:1])
    params = maxp_jax.abc_init(spec, params, jax.random.key(2))
    dyn = DynamicAlignment(model.apply, x, sample_size=16)
    state = scale_by_maxp(spec, dyn).init(params)
    moved = jax.tree.map(lambda p: p * 1.1 + 0.01, params)
    resolver = AlignmentResolver(spec, dyn)

    def measured() -> tuple[np.ndarray, np.ndarray, int]:
        products = str(jax.make_jaxpr(resolver.measure)(moved, state)).count("dot_general")
        alignments, flags = jax.jit(resolver.measure)(moved, state)
        return np.asarray(alignments), np.asarray(flags), products

    stacked, stacked_flags, stacked_products = measured()
    monkeypatch.setattr(stacking, "STACK_BYTES", 1)  # one layer per stack: layer by layer
    layered, layered_flags, layered_products = measured()
    np.testing.assert_allclose(stacked, layered, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(stacked_flags, layered_flags)
    assert np.isfinite(stacked[:, 0]).sum() > 6
    # Two products per measured layer (alpha's and u's together, omega's): each block's small
    # layers in stacks of two.
    assert layered_products - stacked_products >= 2 * 4
