"""Sweep the learning rate of your own JAX model: a maxP arm and a muP arm, three widths.

Run ``python -m examples.sweep_jax --out runs/sweep-jax`` (``--lrs``, ``--widths``, ``--seeds``,
``--steps``, ``--jobs``, ``--backend ray``), then read ``runs/sweep-jax/sweep-report.md``.
The training function below is what you write for your own flax model: it takes a run's
config and yields one record per step, with maxP's per-layer rates and alignments
(``maxp_jax.metrics``) in some of them for the report's trajectory plots.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import maxp_jax
from examples.common import digits_split, sweep_main
from examples.digits_jax import MLP, train_step

LOG_EVERY = 10


def train(config: dict[str, Any]) -> Iterator[dict[str, float]]:
    """One run: ``config`` holds ``lr``, ``width``, ``method`` (``maxp`` or ``mup``), ``seed``, ``steps``."""
    x_train, _, y_train, _ = digits_split()
    model = MLP(config["width"], depth=4)
    params = model.init(jax.random.key(config["seed"]), jnp.ones((1, 64)))
    roles = ["embedding", "hidden", "hidden", "readout"]  # in the order the layers are applied
    rules = [maxp_jax.Rule(f"params/Dense_{i}/.*", role) for i, role in enumerate(roles)]
    spec = maxp_jax.MaxPSpec(params, rules)
    params = maxp_jax.abc_init(spec, params, jax.random.key(config["seed"] + 1))
    dynamic = config["method"] == "maxp"
    # muP: the LP's rates for full alignment, fixed; maxP: re-solved from measured alignments.
    alignment = (
        maxp_jax.DynamicAlignment(model.apply, jnp.asarray(x_train[:64]), warmup_steps=20)
        if dynamic
        else None
    )
    tx = maxp_jax.adamw(spec, learning_rate=config["lr"], weight_decay=0.0, dynamic=alignment)
    opt_state = tx.init(params)

    step = train_step(model, tx)

    rng = np.random.default_rng(config["seed"])
    for t in range(config["steps"]):
        idx = rng.integers(0, len(x_train), 128)
        params, opt_state, loss = step(
            params, opt_state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
        )
        record: dict[str, float] = {"step": t, "loss": float(loss)}
        if dynamic and (t % LOG_EVERY == 0 or t == config["steps"] - 1):
            record.update({k: float(v) for k, v in maxp_jax.metrics(opt_state, spec, config["lr"]).items()})
        yield record


if __name__ == "__main__":
    sweep_main("examples.sweep_jax", __doc__)
