"""A tied embedding table (``embed.attend`` as the readout) is two maxP layers on one leaf."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples.flax_llama import Llama, llama_rules
from maxp_core import MaxPError, MaxPWarning, Role
from maxp_jax import DynamicAlignment, LayerInputs, MaxPSpec, Rule, abc_init, find_maxp_state, scale_by_maxp
from maxp_jax.spec import TiedUses

IDS = jax.random.randint(jax.random.key(3), (4, 8), 0, 32)
TIED_RULES = llama_rules()[:2]  # no head: the table is the readout


@pytest.fixture(scope="module")
def tied():
    model = Llama(scan=True, tied=True, layers=2, vocab=48)  # vocab != d: the readout contracts d
    params = model.init(jax.random.key(0), IDS)
    with pytest.warns(MaxPWarning, match=r"params/embed and params/embed.readout share one weight"):
        spec = MaxPSpec(params, TIED_RULES, apply_fn=model.apply, sample_input=IDS)
    return model, params, spec


def test_a_tied_table_is_an_embedding_and_a_readout_in_the_graph(tied) -> None:
    _, _, spec = tied
    lookup, readout = spec.layers[0], spec.layers[1]
    assert (lookup.name, lookup.role, readout.name, readout.role) == (
        "params/embed",
        Role.EMBEDDING,
        "params/embed.readout",
        Role.READOUT,
    )
    assert lookup.weight_path == readout.weight_path == "params/embed/embedding"
    assert (readout.fan_in, readout.width) == (32, 32)  # contracts d, as a (vocab, d) readout does
    uses = spec.leaf_layer_index()["params/embed/embedding"]
    assert type(uses) is TiedUses and uses == (0, 1)
    nodes = {n.name: n for n in spec.graph.nodes}
    assert nodes["params/embed"].preds == ()
    assert spec.graph.is_sink(spec.graph.index("params/embed.readout"))
    assert nodes["params/embed.readout"].preds == (spec.graph.nodes[-2].name,)  # the last residual add


def test_the_table_takes_the_smaller_std_and_rate_of_its_uses(tied) -> None:
    _, params, spec = tied
    n = 32
    # muP folded: the lookup wants std 1 and factor 1, the readout std 1/n and factor 1/n (Adam).
    assert np.allclose(spec.init_std()[:2], [1.0, 1 / n]) and np.allclose(spec.factors()[:2], [1.0, 1 / n])
    table = abc_init(spec, params, jax.random.key(1))["params"]["embed"]["embedding"]
    assert abs(float(table.std()) * n - 1) < 0.05
    tx = scale_by_maxp(spec)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
    assert np.allclose(updates["params"]["embed"]["embedding"], 1 / n)


def test_with_explicit_multipliers_mups_two_uses_agree() -> None:
    model = Llama(scan=True, tied=True, layers=2, d=64)
    params = model.init(jax.random.key(0), IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = MaxPSpec(params, TIED_RULES, apply_fn=model.apply, sample_input=IDS, multipliers="explicit")
    assert np.allclose(spec.init_std()[:2], 64**-0.5) and np.allclose(spec.factors()[:2], 64**-0.5)
    assert (spec.multiplier("params/embed"), spec.multiplier("params/embed.readout")) == (8.0, 0.125)


def test_dynamic_measures_the_readout_use_on_the_final_hidden_state(tied) -> None:
    model, params, spec = tied
    params = abc_init(spec, params, jax.random.key(1))
    inputs = LayerInputs(spec, model.apply, params, IDS)
    assert 1 in inputs.measured  # the readout use; the lookup has no input to measure
    untied = Llama(scan=True, tied=False, layers=2, vocab=48)
    untied_params = {
        "params": {**params["params"], "head": {"kernel": params["params"]["embed"]["embedding"].T}}
    }
    np.testing.assert_allclose(
        model.apply(params, IDS), untied.apply(untied_params, IDS), rtol=1e-5, atol=1e-6
    )
    head_spec = MaxPSpec(untied_params, llama_rules(), apply_fn=untied.apply, sample_input=IDS)
    head = [layer.name for layer in head_spec.layers].index("params/head")
    _, got = inputs(params, IDS)
    _, want = LayerInputs(head_spec, untied.apply, untied_params, IDS)(untied_params, IDS)
    np.testing.assert_allclose(got[1], want[head], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inputs.weight_matrices(params)[1], params["params"]["embed"]["embedding"])

    dyn = DynamicAlignment(model.apply, IDS[:2], warmup_steps=1, solve_interval=1)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))

    def loss(p):
        logits = model.apply(p, IDS)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], IDS[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    before = loss(params)
    for _ in range(5):
        params, state = step(params, state)
    maxp = find_maxp_state(state)
    assert int(maxp.solves) >= 3 and int(maxp.failures) == 0 and np.all(np.isfinite(maxp.factors))
    assert not np.allclose(maxp.alignment[1], spec.layer_alignment_presets()[1])  # the readout measured
    assert float(loss(params)) < float(before)


def test_a_tied_table_under_a_hidden_rule_is_refused(tied) -> None:
    model, params, _ = tied
    rules = [Rule("params/embed/embedding", "hidden", layout="embedding"), TIED_RULES[1]]
    with pytest.raises(MaxPError, match=r"params/embed/embedding \(shape \(48, 32\)\) is both looked up and"):
        MaxPSpec(params, rules, apply_fn=model.apply, sample_input=IDS)
