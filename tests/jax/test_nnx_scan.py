"""flax nnx: blocks created with ``nnx.vmap`` and applied with ``nnx.scan`` are one maxP
layer per slice, with the graph, c and dynamic rates of the unrolled twin."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maxp_jax import DynamicAlignment, MaxPSpec, Rule, find_maxp_state, scale_by_maxp

D, LAYERS = 16, 3
X = jax.random.normal(jax.random.key(0), (8, 4))


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.w = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + jax.nn.relu(self.w(h))


class Stacked(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.inp = nnx.Linear(4, D, rngs=rngs)

        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs) -> Block:
            return Block(rngs)

        self.blocks = create(rngs)
        self.out = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(h: jax.Array, block: Block) -> jax.Array:
            return block(h)

        return self.out(run(self.inp(x), self.blocks))


class Unrolled(nnx.Module):
    def __init__(self, stacked: Stacked) -> None:
        self.inp, self.out = stacked.inp, stacked.out
        for t in range(LAYERS):  # block t holds slice t of the stacked weights
            block = Block(nnx.Rngs(0))
            block.w.kernel[...] = stacked.blocks.w.kernel[...][t]
            block.w.bias[...] = stacked.blocks.w.bias[...][t]
            setattr(self, f"block{t}", block)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.inp(x)
        for t in range(LAYERS):
            h = getattr(self, f"block{t}")(h)
        return self.out(h)


RULES = [Rule("inp/.*", "embedding"), Rule(r"(blocks|block\d)/w/.*", "hidden"), Rule("out/.*", "readout")]


def spec_and_apply(model: nnx.Module) -> tuple[MaxPSpec, object, object]:
    graphdef, params = nnx.split(model, nnx.Param)

    def apply(p, x):
        return nnx.merge(graphdef, p)(x)

    return MaxPSpec(params, RULES, apply_fn=apply, sample_input=X), params, apply


def test_nnx_scan_blocks_match_their_unrolled_twin() -> None:
    stacked = Stacked(nnx.Rngs(0))
    spec, params, apply = spec_and_apply(stacked)
    twin_spec, twin_params, twin_apply = spec_and_apply(Unrolled(stacked))
    assert [layer.name for layer in spec.layers[1:4]] == [f"blocks/w[{t}]" for t in range(LAYERS)]
    assert [layer.extra_paths for layer in spec.layers[1:4]] == [("blocks/w/bias/value",)] * LAYERS
    np.testing.assert_allclose(apply(params, X), twin_apply(twin_params, X), rtol=1e-6)
    rename = lambda name: re.sub(r"blocks/w\[(\d)\]", r"block\1/w", name)  # noqa: E731
    assert [(rename(n.name), tuple(map(rename, n.preds))) for n in spec.graph.nodes] == [
        (n.name, n.preds) for n in twin_spec.graph.nodes
    ]
    assert [rename(layer.name) for layer in spec.layers] == [layer.name for layer in twin_spec.layers]
    np.testing.assert_allclose(spec.c, twin_spec.c, atol=1e-9)

    def train(spec, params, apply):
        dyn = DynamicAlignment(apply, X, warmup_steps=1, solve_interval=2)
        tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.05))

        @jax.jit
        def step(p, s):
            updates, s = tx.update(jax.grad(lambda p: jnp.mean(apply(p, X) ** 2))(p), s, p)
            return optax.apply_updates(p, updates), s

        state = tx.init(params)
        for _ in range(20):
            params, state = step(params, state)
        return find_maxp_state(state)

    m1, m2 = train(spec, params, apply), train(twin_spec, twin_params, twin_apply)
    assert int(m1.solves) == int(m2.solves) > 5 and int(m1.failures) == 0
    np.testing.assert_allclose(np.asarray(m1.factors), np.asarray(m2.factors), rtol=1e-5)
    assert not np.allclose(np.asarray(m1.c), spec.c, atol=1e-3)
