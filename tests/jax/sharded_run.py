"""Run a few dynamic maxP steps unsharded and sharded over 8 host devices; print the gaps.

Two layouts: the kernels split along their output axis (tensor parallel, batch replicated),
and FSDP as MaxText and levanter shard (every kernel's rows split over a ``data`` axis that
also splits the batch); each re-solving in the step and between steps.

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

STEPS = 6


def gap(a, b) -> float:
    return max(
        float(np.abs(np.asarray(u) - np.asarray(v)).max())
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    model, params, spec = mlp_and_spec(width=64, depth=4)
    params = maxp_jax.abc_init(spec, params, jax.random.key(0))
    x, y = batch(0, n=64)

    def run(p, xb, yb, in_step: bool):
        dyn = maxp_jax.DynamicAlignment(model.apply, xb, warmup_steps=1, solve_interval=2, in_step=in_step)
        tx = optax.chain(
            optax.scale_by_adam(), maxp_jax.scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.02)
        )
        solve = None if in_step else maxp_jax.SolveBetweenSteps(spec, dyn)

        @jax.jit
        def step(p, s):
            grads = jax.grad(loss_fn, argnums=1)(model, p, xb, yb)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        s = tx.init(p)
        for k in range(1, STEPS + 1):
            p, s = step(p, s)
            if solve is not None:
                s = solve(s, p, updates_done=k)
        return p, maxp_jax.find_maxp_state(s)

    mesh = Mesh(np.array(jax.devices()), ("x",))
    replicated = NamedSharding(mesh, PartitionSpec())

    def layout(axes):
        def shard(path, leaf):
            if leaf.ndim == 2 and leaf.shape[0] % 8 == 0 and leaf.shape[1] % 8 == 0:
                return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(*axes)))
            return jax.device_put(leaf, replicated)

        return jax.tree_util.tree_map_with_path(shard, params)

    rows = NamedSharding(mesh, PartitionSpec("x"))
    layouts = {
        "tensor": (layout((None, "x")), jax.device_put(x, replicated), jax.device_put(y, replicated)),
        "fsdp": (layout(("x", None)), jax.device_put(x, rows), jax.device_put(y, rows)),
    }
    result = {}
    for in_step in (True, False):
        plain_p, plain_s = run(params, x, y, in_step)
        mode = "in_step" if in_step else "between"
        for name, (p0, xb, yb) in layouts.items():
            if name == "tensor" and not in_step:
                continue  # the row-split layout covers between steps; one layout is enough there
            sharded_p, sharded_s = run(p0, xb, yb, in_step)
            result[f"{name}/{mode}"] = {
                "param_gap": gap(plain_p, sharded_p),
                "factor_gap": gap(plain_s.factors, sharded_s.factors),
                "c_gap": gap(plain_s.c, sharded_s.c),
                "solves": [int(plain_s.solves), int(sharded_s.solves)],
                "kernel_sharding": str(jax.tree.leaves(sharded_p)[3].sharding.spec),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
