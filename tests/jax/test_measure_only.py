"""Measure-only runs and alignment tables in JAX: factors untouched, numbers a dynamic run sees."""

import jax
import numpy as np
import optax
import pytest

import maxp_core as mc
from maxp_core.metrics import read_metrics
from maxp_core.tables import measure_table
from maxp_jax import DynamicAlignment, MaxPSpec, Rule, find_maxp_state, metrics, metrics_log, scale_by_maxp

RULES = [Rule("l1", "embedding"), Rule("l2", "hidden"), Rule("l3", "hidden"), Rule("l4", "readout")]


def _params(width: int) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(0), 4)
    shapes = [(8, width), (width, width), (width, width), (width, 4)]
    return {
        f"l{k + 1}": jax.random.normal(key, s) / np.sqrt(s[0])
        for k, (key, s) in enumerate(zip(keys, shapes, strict=True))
    }


def _apply(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    for name in ("l1", "l2", "l3"):
        x = jax.nn.relu(x @ params[name])
    return x @ params["l4"]


def _batch() -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (64, 8)), jax.random.randint(ky, (64,), 0, 4)


def _loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_apply(params, x), y).mean()


def test_measure_only_keeps_the_factors_and_measures_what_a_dynamic_run_sees() -> None:
    params = _params(32)
    x, y = _batch()
    spec = MaxPSpec(params, RULES)
    schedule = {"warmup_steps": 1, "solve_interval": 2}
    passive = optax.chain(
        optax.scale_by_adam(),
        scale_by_maxp(spec, DynamicAlignment(_apply, x[:16], measure_only=True, **schedule)),
        optax.scale_by_learning_rate(0.05),
    )
    dynamic = scale_by_maxp(spec, DynamicAlignment(_apply, x[:16], **schedule))
    state, twin = passive.init(params), dynamic.init(params)
    initial = np.asarray(find_maxp_state(state).factors)
    moved = False

    @jax.jit
    def step(params, state, twin):
        grads = jax.grad(_loss)(params, x, y)
        updates, state = passive.update(grads, state, params)
        _, twin = dynamic.update(grads, twin, params)  # measures the same weights
        return optax.apply_updates(params, updates), state, twin

    for _ in range(8):
        params, state, twin = step(params, state, twin)
        ours = find_maxp_state(state)
        np.testing.assert_array_equal(np.asarray(ours.factors), initial)
        np.testing.assert_array_equal(np.asarray(ours.alignment), np.asarray(twin.alignment))
        moved |= not np.array_equal(np.asarray(twin.factors), initial)
    assert moved and int(find_maxp_state(state).solves) == int(twin.solves) == 3


def test_a_table_measured_at_one_width_gives_the_lp_c_at_another(tmp_path) -> None:
    params = _params(32)
    x, y = _batch()
    spec = MaxPSpec(params, RULES, alignment="no")
    dynamic = DynamicAlignment(_apply, x[:16], warmup_steps=1, solve_interval=1, measure_only=True)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dynamic), optax.scale_by_learning_rate(0.05))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    with metrics_log(tmp_path / "run.jsonl", spec) as log:
        for _ in range(12):
            params, state, loss = step(params, state)
            log.write(metrics(state, spec, learning_rate=0.05), loss=loss)
    table = measure_table(read_metrics(tmp_path / "run.jsonl"))
    assert set(table.alignments) == {"hidden", "readout"}
    wide = MaxPSpec(jax.eval_shape(lambda: _params(128)), RULES, alignment="no", alignment_overrides=table)
    hidden, readout = table.alignments["hidden"], table.alignments["readout"]
    graph = mc.chain(4, alignment=[mc.alignment_preset("no"), hidden, hidden, readout])
    expected = mc.StabilityLP(graph, "adam", reference_alignment=mc.alignment_preset("no")).solve().c
    np.testing.assert_allclose(wide.c, list(expected.values()), atol=1e-9)


def test_overrides_by_suffix_and_unknown_keys() -> None:
    spec = MaxPSpec(_params(16), RULES, alignment_overrides={"l2": (0.7, 0.5, 0.6)})
    assert spec.layers[1].alignment == (0.7, 0.5, 0.6) and spec.layers[2].alignment is None
    with pytest.raises(mc.MaxPError, match=r"keys \['l9'\] match no layer"):
        MaxPSpec(_params(16), RULES, alignment_overrides={"l9": (0.7, 0.5, 0.6)})
