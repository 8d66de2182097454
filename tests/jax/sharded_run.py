"""Run a few dynamic maxP steps unsharded and sharded over 8 host devices; print the gap.

Started by test_sharding.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import json

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import maxp_jax
from tests.jax.models import mlp_and_spec
from tests.jax.test_transform import batch, loss_fn


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(0))
    x, y = batch(0, n=64)
    dyn = maxp_jax.DynamicAlignment(model.apply, x, warmup_steps=1, solve_interval=2)
    tx = optax.chain(
        optax.scale_by_adam(), maxp_jax.scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02)
    )

    @jax.jit
    def step(p, s, xb, yb):
        grads = jax.grad(loss_fn, argnums=1)(model, p, xb, yb)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    def run(p, xb, yb):
        s = tx.init(p)
        for _ in range(6):
            p, s = step(p, s, xb, yb)
        return p, maxp_jax.find_maxp_state(s)

    plain_p, plain_s = run(params, x, y)
    mesh = Mesh(np.array(jax.devices()), ("model",))

    def shard(path, leaf):
        if leaf.ndim == 2 and leaf.shape[1] % 8 == 0:  # split kernels along their output axis
            return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(None, "model")))
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec()))

    sharded_params = jax.tree_util.tree_map_with_path(shard, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded_p, sharded_s = run(sharded_params, jax.device_put(x, replicated), jax.device_put(y, replicated))
    gap = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(plain_p), jax.tree.leaves(sharded_p), strict=True)
    )
    print(
        json.dumps(
            {
                "param_gap": gap,
                "factor_gap": float(
                    np.abs(np.asarray(plain_s.factors) - np.asarray(sharded_s.factors)).max()
                ),
                "c_gap": float(np.abs(np.asarray(plain_s.c) - np.asarray(sharded_s.c)).max()),
                "solves": [int(plain_s.solves), int(sharded_s.solves)],
                "kernel_sharding": str(jax.tree.leaves(sharded_p)[1].sharding),
            }
        )
    )


if __name__ == "__main__":
    main()
