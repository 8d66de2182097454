"""Sweep runs in JAX (flax + optax Adam without weight decay), for :mod:`benchmarks.sweep`.

A :class:`Trainer` compiles one training step per task, method and width; the learning
rate and the seed are inputs, so every rate and seed of a sweep reuses that step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import maxp_jax
from benchmarks.sweep_tasks import (
    MEASURED,
    TRAJECTORY_EVERY,
    Task,
    diverged,
    run_record,
    tie_rule,
    warmup_factor,
)
from examples.digits_jax import MLP
from examples.flax_models import FlaxGPT, gpt_rules
from maxp_core.tables import AlignmentTable

MAXP_WARMUP, MAXP_INTERVAL = 20, 10
CHECK_EVERY = 25  # steps between reads of the losses


def _loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class Trainer:
    """Train ``method`` at ``width`` on ``task`` for any learning rate and seed.

    ``sp`` is flax's default initialisation with one global rate; the muP methods
    re-initialise with :func:`maxp_jax.abc_init` and scale each layer's Adam update by
    its ``n^-c`` (``maxp``: re-solved from measured alignments). ``device`` is
    ``"cpu"`` or ``None`` for JAX's default backend.
    """

    def __init__(
        self,
        task: Task,
        method: str,
        width: int,
        device: str | None = None,
        table: AlignmentTable | None = None,
        warmup: int = 0,
    ) -> None:
        if method == "maxp-meas" and table is None:
            raise ValueError("maxp-meas trains with a measured alignment table; pass table=")
        self.task, self.method, self.width, self.warmup = task, method, width, warmup
        self.device = jax.devices("cpu" if device == "cpu" else None)[0]
        parametrized = method != "sp"
        if task.name == "chars":
            self.model: Any = FlaxGPT(
                d=width, blocks=task.blocks, vocab=task.classes, ctx=task.context, parametrized=parametrized
            )
            rules = gpt_rules()
        else:
            self.model = MLP(width, task.depth, classes=task.classes)
            last = task.depth - 1
            rules = [maxp_jax.Rule(r"params/Dense_0/.*", "embedding")]
            rules += [maxp_jax.Rule(rf"params/Dense_{i}/.*", "hidden") for i in range(1, last)]
            rules += [maxp_jax.Rule(rf"params/Dense_{last}/.*", "readout")]
        with jax.default_device(self.device):
            self.probe = jnp.asarray(task.probe)
            shapes = jax.eval_shape(self.model.init, jax.random.key(0), self.probe)
            self.spec = None
            if parametrized:
                self.spec = maxp_jax.MaxPSpec(
                    shapes,
                    rules,
                    parametrization="mup",
                    optimizer="adam",
                    alignment="no" if method in ("mup-no", "maxp-meas") else "full",
                    alignment_overrides=table if method == "maxp-meas" else None,
                    apply_fn=self.model.apply if task.name == "chars" else None,
                    sample_input=self.probe if task.name == "chars" else None,
                    tie_rule=tie_rule(method),
                )
            self.tx = self._transform()
            self.step = jax.jit(self._step, donate_argnums=(0, 1))

    def _transform(self) -> optax.GradientTransformation:
        if self.spec is None:
            return optax.scale_by_adam()
        dynamic = None
        if self.method in MEASURED:
            dynamic = maxp_jax.DynamicAlignment(
                self.model.apply,
                self.probe,
                warmup_steps=MAXP_WARMUP,
                solve_interval=MAXP_INTERVAL,
                measure_only=self.method == "mup-no",
            )
        return optax.chain(optax.scale_by_adam(), maxp_jax.scale_by_maxp(self.spec, dynamic))

    def _step(self, params: Any, state: Any, x: jax.Array, y: jax.Array, lr: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(lambda p: _loss(self.model.apply(p, x), y))(params)
        updates, state = self.tx.update(grads, state, params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), state, loss

    def init(self, seed: int) -> Any:
        """Initial parameters for ``seed``."""
        key_model, key_abc = jax.random.split(jax.random.key(seed))
        params = self.model.init(key_model, self.probe)
        if self.spec is not None:
            params = maxp_jax.abc_init(self.spec, params, key_abc)
        return params

    def run(self, lr: float, seed: int, steps: int) -> dict[str, object]:
        """Train for ``steps`` steps (stopping early on divergence) and return the run's record."""
        with jax.default_device(self.device):
            params = self.init(seed)
            state = self.tx.init(params)
            rng = np.random.default_rng(seed)
            pending: list[jax.Array] = []
            losses: list[float] = []
            trajectory: list[dict[str, float]] = []
            stopped = False
            for step in range(steps):
                x, y = (jnp.asarray(v) for v in self.task.sample(rng))
                rate = jnp.float32(lr * warmup_factor(step, self.warmup))
                params, state, loss = self.step(params, state, x, y, rate)
                pending.append(loss)
                if self.method in MEASURED and ((step + 1) % TRAJECTORY_EVERY == 0 or step + 1 == steps):
                    assert self.spec is not None
                    next_rate = lr * warmup_factor(step + 1, self.warmup)
                    logged = jax.device_get(maxp_jax.metrics(state, self.spec, learning_rate=next_rate))
                    trajectory.append({k: float(f"{float(v):.6g}") for k, v in logged.items()})
                # Reading each loss back would wait for every step; read them in blocks instead.
                if len(pending) == CHECK_EVERY or step == steps - 1:
                    losses.extend(float(v) for v in jax.device_get(pending))
                    pending = []
                    bad = [i for i, v in enumerate(losses) if diverged(v, losses[0])]
                    if bad:
                        losses, stopped = losses[: bad[0] + 1], True
                        break
            x_test, y_test = (jnp.asarray(v) for v in self.task.held_out)
            test_loss = float(_loss(self.model.apply(params, x_test), y_test))
        settings = {"framework": "jax", "task": self.task.name, "method": self.method, "width": self.width}
        record = run_record(
            {**settings, "lr": lr, "seed": seed, "device": str(self.device.platform)},
            losses,
            stopped,
            test_loss,
        )
        record["warmup"] = self.warmup
        if trajectory and self.spec is not None:
            record["layers"] = {layer.name: layer.role.value for layer in self.spec.layers}
            kept = [t for t in trajectory if int(t["maxp/step"]) <= len(losses)]
            record["metrics"] = [t | {"loss": losses[int(t["maxp/step"]) - 1]} for t in kept]
        return record
