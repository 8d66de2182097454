"""Layers stacked over a leading axis: each slice is its own maxP layer.

Every scan-stacked model is checked against its unrolled twin, built from the same weights:
the graph, the static ``c``, the initial weights, and 20 dynamic steps (factors, alignments
and weights) must agree.
"""

from __future__ import annotations

import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from examples.flax_llama import Llama, llama_rules, unrolled_name
from maxp_core import MaxPError, MaxPWarning
from maxp_jax import DynamicAlignment, MaxPSpec, Rule, abc_init, find_maxp_state, scale_by_maxp

IDS = jax.random.randint(jax.random.key(3), (4, 8), 0, 32)


def unstack(params: dict, blocks: int) -> dict:
    """The unrolled twin's params: slice ``t`` of ``params/blocks/...`` becomes ``params/blocks_t/...``."""
    inner = dict(params["params"])
    stacked = inner.pop("blocks")
    for t in range(blocks):
        inner[f"blocks_{t}"] = jax.tree.map(lambda leaf, t=t: leaf[t], stacked)
    return {"params": inner}


def node_list(spec: MaxPSpec, rename=lambda name: name) -> list[tuple]:
    return [
        (
            rename(n.name),
            tuple(rename(p) for p in n.preds),
            n.has_weight,
            n.role,
            n.a,
            n.b,
            n.merge,
            n.contraction,
        )
        for n in spec.graph.nodes
    ]


def c_by_name(spec: MaxPSpec, c, rename=lambda name: name) -> dict[str, float]:
    return {rename(layer.name): float(v) for layer, v in zip(spec.layers, c, strict=True)}


@pytest.fixture(scope="module")
def llama_pair():
    stacked, twin = Llama(scan=True, d=16, layers=2), Llama(scan=False, d=16, layers=2)
    params = jax.jit(stacked.init)(jax.random.key(0), IDS)  # one compile, not one per eager op
    spec = MaxPSpec(params, llama_rules(), apply_fn=stacked.apply, sample_input=IDS)
    params = abc_init(spec, params, jax.random.key(1))
    twin_params = unstack(params, stacked.layers)
    twin_spec = MaxPSpec(twin_params, llama_rules(), apply_fn=twin.apply, sample_input=IDS)
    return stacked, spec, params, twin, twin_spec, twin_params


def test_a_stacked_kernel_is_one_layer_per_slice(llama_pair) -> None:
    _, spec, _, _, twin_spec, _ = llama_pair
    q = [layer for layer in spec.layers if layer.weight_path == "params/blocks/q/kernel"]
    assert [layer.name for layer in q] == [f"params/blocks/q[{t}]" for t in range(2)]
    assert {(layer.fan_in, layer.width, layer.shape) for layer in q} == {(16, 16, (16, 16))}
    assert len(spec.layers) == len(twin_spec.layers) == 2 + 2 * 7
    index = spec.leaf_layer_index()
    assert index["params/blocks/q/kernel"] == tuple(spec.layers.index(layer) for layer in q)
    assert "params/blocks/attn_norm/scale" not in index  # unmatched: the base rate


def test_the_stacked_graph_and_c_equal_the_unrolled_twins(llama_pair) -> None:
    _, spec, _, _, twin_spec, _ = llama_pair
    assert node_list(spec, unrolled_name) == node_list(twin_spec)
    assert any(n.contraction for n in spec.graph.nodes if n.name == "scores[1]")
    stacked_c, twin_c = c_by_name(spec, spec.c, unrolled_name), c_by_name(twin_spec, twin_spec.c)
    assert stacked_c.keys() == twin_c.keys()
    assert all(abs(stacked_c[k] - twin_c[k]) <= 1e-9 for k in twin_c)


def test_abc_init_draws_each_slice_as_its_layer_would() -> None:
    params = {"e": jnp.zeros((4, 64)), "blocks": jnp.zeros((3, 64, 64)), "o": jnp.zeros((64, 2))}
    spec = MaxPSpec(
        params, [Rule("e", "embedding"), Rule("blocks", "hidden", stacked=True), Rule("o", "readout")]
    )
    twin = {"e": params["e"], **{f"b{t}": jnp.zeros((64, 64)) for t in range(3)}, "o": params["o"]}
    twin_spec = MaxPSpec(twin, [Rule("e", "embedding"), Rule("b\\d", "hidden"), Rule("o", "readout")])
    new, new_twin = abc_init(spec, params, jax.random.key(5)), abc_init(twin_spec, twin, jax.random.key(5))
    for t in range(3):
        np.testing.assert_array_equal(new["blocks"][t], new_twin[f"b{t}"])
    assert abs(float(new["blocks"].std()) - 64**-0.5) < 0.01  # muP hidden, folded: std n^-1/2


def test_the_update_scales_each_slice_by_its_own_factor() -> None:
    params = {
        "e": jnp.zeros((4, 64)),
        "blocks": {"kernel": jnp.zeros((3, 64, 64)), "bias": jnp.zeros((3, 64))},
        "o": jnp.zeros((64, 2)),
    }
    rules = [Rule("e", "embedding"), Rule("blocks/.*", "hidden", stacked=True, c=None), Rule("o", "readout")]
    spec = MaxPSpec(params, rules)
    tx = scale_by_maxp(spec)
    state = tx.init(params)
    chosen = np.array([0.5, 1.0, 0.75, 0.25, 0.5])
    from maxp_jax import set_factors

    state = set_factors(state, spec, chosen)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state)
    # Every layer has width 64; folding moves muP's readout multiplier n^-1/2 into its rate.
    expected = 64.0 ** -(chosen + np.array([-0.5, 0, 0, 0, 0.5]))
    for t in range(3):
        assert np.allclose(updates["blocks"]["kernel"][t], expected[1 + t], rtol=1e-6)
        assert np.allclose(updates["blocks"]["bias"][t], expected[1 + t], rtol=1e-6)
    assert np.allclose(updates["o"], expected[4], rtol=1e-6)


def trainer(spec: MaxPSpec, apply):
    """``(tx, step)``: Adam with dynamic maxP (a re-solve every 3 steps after 2) and its jitted step."""

    def loss(p):
        logits = apply(p, IDS)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], IDS[:, 1:]).mean()

    dyn = DynamicAlignment(apply, IDS[:2], warmup_steps=2, solve_interval=3)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02))

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    return tx, step


def run(step, params, state, steps: int):
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


@pytest.fixture(scope="module")
def trained(llama_pair):
    """Both models after 20 dynamic steps, and the stacked one's trainer and 7-step state."""
    stacked, spec, params, twin, twin_spec, twin_params = llama_pair
    tx, step = trainer(spec, stacked.apply)
    # Committed to the device, as orbax restores arrays: the resumed run reuses the compiled step.
    p_mid, s_mid = run(step, *jax.device_put((params, tx.init(params)), jax.devices()[0]), 7)
    p1, s1 = run(step, p_mid, s_mid, 13)
    twin_tx, twin_step = trainer(twin_spec, twin.apply)
    p2, s2 = run(twin_step, twin_params, twin_tx.init(twin_params), 20)
    return (p1, s1), (p2, s2), (step, p_mid, s_mid)


def test_twenty_dynamic_steps_match_the_unrolled_twin(llama_pair, trained) -> None:
    _, spec, _, _, twin_spec, _ = llama_pair
    (p1, s1), (p2, s2), _ = trained
    m1, m2 = find_maxp_state(s1), find_maxp_state(s2)
    assert int(m1.solves) == int(m2.solves) >= 5 and int(m1.failures) == 0
    f1, f2 = c_by_name(spec, m1.factors, unrolled_name), c_by_name(twin_spec, m2.factors)
    assert all(math.isfinite(f1[k]) and abs(f1[k] / f2[k] - 1) < 1e-5 for k in f2)
    start = c_by_name(spec, spec.factors(), unrolled_name)
    assert all(abs(f1[k] / start[k] - 1) > 1e-3 for k in f2 if "blocks_" in k)  # every slice moved
    names = [unrolled_name(layer.name) for layer in spec.layers]
    a1 = dict(zip(names, np.asarray(m1.alignment), strict=True))
    a2 = dict(zip([layer.name for layer in twin_spec.layers], np.asarray(m2.alignment), strict=True))
    assert all(np.allclose(a1[k], a2[k], rtol=1e-4, atol=1e-5) for k in a2)
    np.testing.assert_allclose(
        unstack(p1, 2)["params"]["blocks_1"]["q"]["kernel"],
        p2["params"]["blocks_1"]["q"]["kernel"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_an_orbax_round_trip_resumes_exactly(trained, tmp_path) -> None:
    (p_a, s_a), _, (step, p_mid, s_mid) = trained
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": p_mid, "opt": s_mid})
    checkpointer.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": p_mid, "opt": s_mid})
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    p_b, s_b = run(step, restored["params"], restored["opt"], 13)
    for a, b in zip(jax.tree.leaves((p_a, s_a)), jax.tree.leaves((p_b, s_b)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(find_maxp_state(s_b).solves) > int(find_maxp_state(s_mid).solves)


def plain_apply(p, x):
    """A plain-function model: ``lax.scan`` over stacked blocks, each under ``jax.checkpoint``."""

    @jax.checkpoint
    def block(h, w):
        return h + jax.nn.relu(h @ w["kernel"] + w["bias"])

    h, _ = jax.lax.scan(lambda h, w: (block(h, w), None), x @ p["w_in"], p["blocks"])
    return h @ p["w_out"]


def plain_twin(p, x):
    h = x @ p["w_in"]
    for t in range(3):
        w = p[f"block{t}"]
        h = h + jax.nn.relu(h @ w["kernel"] + w["bias"])
    return h @ p["w_out"]


def test_a_lax_scan_of_checkpointed_blocks_matches_its_twin() -> None:
    d = 32
    params = {
        "w_in": jnp.zeros((4, d)),
        "blocks": {"kernel": jnp.zeros((3, d, d)), "bias": jnp.zeros((3, d))},
        "w_out": jnp.zeros((d, 2)),
    }
    x = jax.random.normal(jax.random.key(0), (16, 4))
    rules = [Rule("w_in", "embedding"), Rule("blocks/.*|block\\d/.*", "hidden"), Rule("w_out", "readout")]
    spec = MaxPSpec(params, rules, apply_fn=plain_apply, sample_input=x)
    params = abc_init(spec, params, jax.random.key(1))
    twin = {
        "w_in": params["w_in"],
        "w_out": params["w_out"],
        **{f"block{t}": jax.tree.map(lambda v, t=t: v[t], params["blocks"]) for t in range(3)},
    }
    twin_spec = MaxPSpec(twin, rules, apply_fn=plain_twin, sample_input=x)
    rename = lambda name: re.sub(r"blocks\[(\d)\]", r"block\1", name)  # noqa: E731
    assert node_list(spec, rename) == node_list(twin_spec)
    assert [layer.extra_paths for layer in spec.layers[1:4]] == [("blocks/bias",)] * 3

    def train(spec, p, apply):
        dyn = DynamicAlignment(apply, x, warmup_steps=1, solve_interval=2)
        tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.05))
        state = tx.init(p)
        step = jax.jit(lambda p, s: tx.update(jax.grad(lambda p: (apply(p, x) ** 2).mean())(p), s, p))
        for _ in range(20):
            updates, state = step(p, state)
            p = optax.apply_updates(p, updates)
        return find_maxp_state(state)

    m1, m2 = train(spec, params, plain_apply), train(twin_spec, twin, plain_twin)
    np.testing.assert_allclose(np.asarray(m1.factors), np.asarray(m2.factors), rtol=1e-5)
    assert int(m1.solves) == int(m2.solves) >= 9 and not np.allclose(np.asarray(m1.c), spec.c)


def test_stacking_is_refused_or_warned_where_it_is_ambiguous_or_wrong() -> None:
    params = {"e": jnp.zeros((4, 16)), "k": jnp.zeros((3, 16, 16)), "o": jnp.zeros((16, 2))}
    rules = [Rule("e", "embedding"), Rule("k", "hidden"), Rule("o", "readout")]
    with pytest.warns(
        MaxPWarning, match=r"k: a kernel of shape \(3, 16, 16\) is read as one layer with fan-in 48"
    ):
        MaxPSpec(params, rules)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = MaxPSpec(params, [rules[0], Rule("k", "hidden", stacked=False), rules[2]])
    assert [layer.fan_in for layer in quiet.layers] == [4, 48, 16]
    with pytest.raises(MaxPError, match=r"rule 'k': stacked"):
        Rule("k", "hidden", stacked="yes")
    bias = {**params, "blocks": {"kernel": jnp.zeros((3, 16, 16)), "bias": jnp.zeros((16,))}}
    with pytest.raises(MaxPError, match=r"blocks/bias \(shape \(16,\)\) and its weight blocks/kernel"):
        MaxPSpec(
            bias,
            [
                rules[0],
                Rule("k", "hidden", stacked=False),
                Rule("blocks/kernel", "hidden", stacked=True),
                Rule("blocks/bias", "hidden"),
                rules[2],
            ],
        )


def test_a_stacked_weight_used_outside_a_scan_is_refused_by_name() -> None:
    params = {"e": jnp.zeros((4, 16)), "k": jnp.zeros((3, 16, 16)), "o": jnp.zeros((16, 2))}
    rules = [Rule("e", "embedding"), Rule("k", "hidden", stacked=True), Rule("o", "readout")]

    def indexed(p, x):  # the stacked leaf sliced by hand, not by a scan
        h = x @ p["e"]
        for t in range(3):
            h = jnp.tanh(h @ p["k"][t])
        return h @ p["o"]

    with pytest.raises(MaxPError, match=r"k: the stacked weight meets 'slice' before a scan slices it"):
        MaxPSpec(params, rules, apply_fn=indexed, sample_input=jnp.ones((2, 4)))


def scan_model(body, xs_of):
    def apply(p, x):
        h, _ = jax.lax.scan(body, x @ p["e"], xs_of(p))
        return h @ p["o"]

    return apply


SCAN_RULES = [Rule("e", "embedding"), Rule("blocks.*", "hidden"), Rule("o", "readout")]


def test_a_scan_over_a_moved_layers_axis_or_a_shared_weight_is_refused_by_name() -> None:
    x = jnp.ones((2, 4))
    moved = {"e": jnp.ones((4, 6)), "blocks": jnp.ones((6, 3, 6)), "o": jnp.ones((6, 2))}
    body = lambda h, w: (jnp.tanh(h @ w), None)  # noqa: E731
    apply = scan_model(body, lambda p: jnp.moveaxis(p["blocks"], 1, 0))
    with pytest.raises(MaxPError, match=r"blocks: a scan slices this weight, but it is not read as stacked"):
        MaxPSpec(moved, SCAN_RULES, apply_fn=apply, sample_input=x)
    shared = {"e": jnp.ones((4, 6)), "blocks": jnp.ones((6, 6)), "o": jnp.ones((6, 2))}

    def loop(p, x):
        h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ p["blocks"]), None), x @ p["e"], None, length=3)
        return h @ p["o"]

    with pytest.raises(MaxPError, match=r"blocks: the weight is used by every iteration of a scan"):
        MaxPSpec(shared, SCAN_RULES, apply_fn=loop, sample_input=x)


def test_per_layer_scalars_and_reverse_scans_stack_like_kernels() -> None:
    x = jax.random.normal(jax.random.key(0), (2, 4))
    params = {
        "e": jnp.ones((4, 6)) / 2,
        "blocks": {"kernel": jax.random.normal(jax.random.key(1), (3, 6, 6)) / 3, "gain": jnp.ones((3,))},
        "o": jnp.ones((6, 2)),
    }
    body = lambda h, w: (h + jnp.tanh(h @ w["kernel"]) * w["gain"], None)  # noqa: E731

    def reverse(p, x):
        h, _ = jax.lax.scan(body, x @ p["e"], p["blocks"], reverse=True)
        return h @ p["o"]

    spec = MaxPSpec(params, SCAN_RULES, apply_fn=reverse, sample_input=x)
    assert [layer.extra_paths for layer in spec.layers[1:4]] == [("blocks/gain",)] * 3
    order = [n.name for n in spec.graph.nodes if n.name.startswith("blocks")]
    assert order == ["blocks[2]", "blocks[1]", "blocks[0]"]  # the last slice runs first
    from maxp_jax import LayerInputs

    _, inputs = LayerInputs(spec, reverse, params, x)(params, x)
    h = x @ params["e"]
    for t in (2, 1, 0):  # each slice's captured input is the hidden state it saw
        np.testing.assert_allclose(inputs[1 + t], h, rtol=1e-5, atol=1e-6)
        h = h + jnp.tanh(h @ params["blocks"]["kernel"][t]) * params["blocks"]["gain"][t]
