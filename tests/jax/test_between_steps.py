"""Re-solving between jitted steps (``in_step=False``) against re-solving inside the update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maxp_jax
from maxp_core import MaxPError, MaxPWarning
from maxp_jax import DynamicAlignment, SolveBetweenSteps, find_maxp_state, scale_by_maxp
from tests.jax.models import mlp_and_spec
from tests.jax.test_transform import batch, loss_fn


def _setup(in_step: bool, **dynamic_kwargs):
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(3))
    x, y = batch(4, n=40)
    dyn = DynamicAlignment(model.apply, x, sample_size=32, in_step=in_step, **dynamic_kwargs)
    tx = optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(1e-3),
        scale_by_maxp(spec, dyn),
        optax.scale_by_learning_rate(0.05),
    )

    def step(p, s):
        grads = jax.grad(loss_fn, argnums=1)(model, p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    return spec, dyn, params, tx, step


@pytest.mark.parametrize("resample_w0", [False, True])
def test_between_steps_gives_the_in_step_numbers(resample_w0: bool) -> None:
    key = {"resample_w0": resample_w0, "init_key": jax.random.key(3)} if resample_w0 else {}
    settings = dict(warmup_steps=1, solve_interval=2, alignment_ema=0.5, c_ema=0.3, **key)
    runs = []
    for in_step in (True, False):
        spec, dyn, params, tx, step = _setup(in_step, **settings)
        solve = None if in_step else SolveBetweenSteps(spec, dyn)
        jitted = jax.jit(step, donate_argnums=(0, 1))
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        history = []
        for k in range(8):
            p, s = jitted(p, s)
            if solve is not None:
                s = solve(s, p, updates_done=k + 1)
            history.append(jax.device_get(find_maxp_state(s)))
        runs.append((jax.device_get(p), history))
    (p_in, in_step), (p_between, between) = runs
    assert [int(h.solves) for h in in_step] == [0, 0, 0, 1, 1, 2, 2, 3]
    assert [int(h.solves) for h in between] == [0, 0, 1, 1, 2, 2, 3, 3]
    # In the step, the re-solve due after k updates runs inside update k + 1; between steps it
    # runs right after update k. Both give that update the same factors.
    for inside, outside in zip(in_step[1:], between[:-1], strict=True):
        for field in ("c", "factors", "alignment"):
            np.testing.assert_allclose(getattr(inside, field), getattr(outside, field), rtol=2e-5, atol=1e-6)
        assert (int(inside.failures), int(inside.missing)) == (int(outside.failures), int(outside.missing))
    assert not np.allclose(between[-1].c, spec.c)
    for a, b in zip(jax.tree.leaves(p_in), jax.tree.leaves(p_between), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_step_without_in_step_solves_holds_no_host_callback() -> None:
    programs = {}
    for in_step in (True, False):
        _, _, params, tx, step = _setup(in_step, solve_interval=10)
        programs[in_step] = jax.jit(step).lower(params, tx.init(params)).as_text()
    assert "callback" in programs[True]
    assert "callback" not in programs[False] and "case" not in programs[False]


def test_not_due_returns_the_state_untouched_and_a_failure_keeps_the_factors() -> None:
    spec, dyn, params, tx, step = _setup(False, warmup_steps=2, solve_interval=3)
    solve = SolveBetweenSteps(spec, dyn)
    state = tx.init(params)
    params, state = jax.jit(step)(params, state)
    assert [solve.due(k) for k in range(9)] == [False, False, False, False, False, True, False, False, True]
    assert solve(state, params, updates_done=1) is state
    broken = jax.tree.map(lambda w: w.at[(0,) * w.ndim].set(jnp.nan) if w.ndim == 2 else w, params)
    for _ in range(4):
        broken, state = jax.jit(step)(broken, state)
    with pytest.warns(MaxPWarning, match="re-solve failed"):
        after = find_maxp_state(solve(state, broken, updates_done=5))
    assert (int(after.solves), int(after.failures)) == (0, 1)
    np.testing.assert_array_equal(after.factors, find_maxp_state(state).factors)


def test_between_steps_errors() -> None:
    spec, dyn, params, tx, step = _setup(False, solve_interval=1)
    solve = SolveBetweenSteps(spec, dyn)
    state = tx.init(params)
    params, state = jax.jit(step)(params, state)
    with pytest.raises(MaxPError, match=r"updates_done=2 but the optimizer state has applied 1 updates"):
        solve(state, params, updates_done=2)
    with pytest.raises(MaxPError, match=r"updates_done must be an integer >= 0, got -1"):
        solve(state, params, updates_done=-1)
    static_state = scale_by_maxp(spec).init(params)
    with pytest.raises(MaxPError, match=r"keeps the initial inputs of 0 layers, this spec measures 4"):
        solve(static_state._replace(count=jnp.ones([], jnp.int32)), params, updates_done=1)
    other_spec = find_maxp_state(state)._replace(factors=jnp.ones(3, jnp.float32))
    with pytest.raises(MaxPError, match=r"SolveBetweenSteps: the optimizer state holds 3 layers' factors"):
        solve(other_spec, params, updates_done=1)
    with pytest.raises(MaxPError, match=r"needs DynamicAlignment\(\.\.\., in_step=False\)"):
        SolveBetweenSteps(spec, DynamicAlignment(dyn.apply_fn, dyn.sample_input))
    with pytest.raises(MaxPError, match="use_training_activations=True needs in_step=True"):
        DynamicAlignment(dyn.apply_fn, dyn.sample_input, use_training_activations=True, in_step=False)


def test_a_repeated_call_for_the_same_update_does_not_solve_twice() -> None:
    """After every micro-step of optax.MultiSteps the update count repeats: one re-solve per update."""
    spec, dyn, params, tx, step = _setup(False, warmup_steps=1, solve_interval=2, alignment_ema=0.5)
    solve_once, solve_twice = SolveBetweenSteps(spec, dyn), SolveBetweenSteps(spec, dyn)  # one per run
    once, twice = (tx.init(params), params), (tx.init(params), params)
    for k in range(1, 8):
        p, s = jax.jit(step)(once[1], once[0])
        once = (solve_once(s, p, updates_done=k), p)
        p, s = jax.jit(step)(twice[1], twice[0])
        s = solve_twice(s, p, updates_done=k)
        again = solve_twice(s, p, updates_done=k)
        assert again is s  # already re-solved for this update: returned untouched
        twice = (again, p)
    a, b = find_maxp_state(once[0]), find_maxp_state(twice[0])
    assert int(a.solves) == int(b.solves) == 3  # after updates 3, 5 and 7
    np.testing.assert_array_equal(a.alignment, b.alignment)  # the EMA was applied once per update
    np.testing.assert_array_equal(a.factors, b.factors)


def test_a_skipped_due_update_is_reported_and_params_are_checked() -> None:
    spec, dyn, params, tx, step = _setup(False, warmup_steps=0, solve_interval=1)
    solve = SolveBetweenSteps(spec, dyn)
    state = tx.init(params)
    for _ in range(3):
        params, state = jax.jit(step)(params, state)  # updates 1 and 2 were due: never solved
    with pytest.warns(MaxPWarning, match=r"2 re-solve\(s\) due before update 3 were never made"):
        solved = solve(state, params, updates_done=3)
    assert int(find_maxp_state(solved).solves) == 1
    solve = SolveBetweenSteps(spec, dyn)  # a fresh object checks its arguments before anything
    with pytest.raises(MaxPError, match=r"params must be the current params pytree of the spec .*; got None"):
        solve(state, None, updates_done=3)
    with pytest.raises(MaxPError, match=r"params must be the current params pytree .*; got PyTreeDef"):
        solve(state, {"w": jnp.ones(3)}, updates_done=3)


def test_after_a_missed_update_repeated_calls_still_solve_once() -> None:
    spec, dyn, params, tx, step = _setup(False, warmup_steps=0, solve_interval=2)
    solve = SolveBetweenSteps(spec, dyn)
    state = tx.init(params)
    for k in range(1, 5):
        params, state = jax.jit(step)(params, state)
        if k == 2:
            continue  # the call after update 2 is forgotten
        if k == 3:  # not due itself, but it finds update 2's re-solve missing
            with pytest.warns(MaxPWarning, match=r"1 re-solve\(s\) due before update 3 were never made"):
                state = solve(state, params, updates_done=k)
        else:
            state = solve(state, params, updates_done=k)
        if k == 4:
            for _ in range(2):
                assert solve(state, params, updates_done=k) is state
    assert int(find_maxp_state(state).solves) == 1


def test_a_between_steps_run_that_nothing_re_solves_is_warned_when_the_step_is_traced() -> None:
    _, _, params, tx, step = _setup(False, warmup_steps=0, solve_interval=1)
    state = tx.init(params)
    with pytest.warns(MaxPWarning, match=r"no SolveBetweenSteps was built for it.*stay at the preset"):
        params, state = jax.jit(step)(params, state)
    assert int(find_maxp_state(state).solves) == 0


def test_a_between_steps_run_with_its_solver_is_not_warned() -> None:
    import warnings

    spec, dyn, params, tx, step = _setup(False, warmup_steps=0, solve_interval=1)
    solve = SolveBetweenSteps(spec, dyn)
    state = tx.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaxPWarning)
        params, state = jax.jit(step)(params, state)
        state = solve(state, params, updates_done=1)
    assert int(find_maxp_state(state).solves) == 1


def test_under_multisteps_a_call_after_every_micro_step_solves_once_per_update() -> None:
    """Gradient accumulation: call SolveBetweenSteps after every micro-step with the number of
    updates MultiSteps has applied (its ``gradient_step``); the re-solves and the factors are
    those of in-step re-solving under the same MultiSteps."""
    k_micro, updates = 3, 7
    runs = {}
    for in_step in (True, False):
        spec, dyn, params, inner, _ = _setup(in_step, warmup_steps=1, solve_interval=2)
        tx = optax.MultiSteps(inner, every_k_schedule=k_micro)
        model, _, _ = mlp_and_spec(width=64, depth=4)
        x, y = batch(4, n=40)

        def micro_step(p, s, tx=tx, model=model, x=x, y=y):
            grads = jax.grad(loss_fn, argnums=1)(model, p, x, y)
            new, s = tx.update(grads, s, p)
            return optax.apply_updates(p, new), s

        solve = None if in_step else SolveBetweenSteps(spec, dyn)
        p, s = params, tx.init(params)
        solves_after_update = []
        for _ in range(k_micro * updates):
            p, s = jax.jit(micro_step)(p, s)
            if solve is not None:
                s = solve(s, p, updates_done=int(s.gradient_step))  # the same count k_micro times
            if int(s.mini_step) == 0:  # an update was just applied
                solves_after_update.append(jax.device_get(find_maxp_state(s)))
        runs[in_step] = solves_after_update
    inside, outside = runs[True], runs[False]
    in_step_solves, between_solves = ([int(h.solves) for h in run] for run in (inside, outside))
    # In the step, the re-solve due after update k runs inside update k + 1 (see above).
    # Due after updates 3, 5 and 7 (warm-up 1, every 2), as without MultiSteps: one re-solve per
    # update, not one per micro-step.
    assert between_solves == [0, 0, 1, 1, 2, 2, 3]
    assert in_step_solves == [0, 0, 0, 1, 1, 2, 2]
    for k in (3, 5):  # between steps after update k-1 = in the step during update k
        np.testing.assert_allclose(outside[k - 1].c, inside[k].c, rtol=2e-5, atol=1e-6)
