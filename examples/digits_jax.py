"""Train a flax MLP on scikit-learn's digits with dynamic maxP (AdamW).

Run ``python -m examples.digits_jax``. Prints each layer's learning rate before and
after the first re-solve, the loss along the way, and the test accuracy.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import maxp_jax
from examples.common import RateLog, digits_arguments, digits_split


class MLP(nn.Module):
    width: int
    depth: int
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.depth - 1):
            x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(self.classes)(x)


def train_step(model: nn.Module, tx: optax.GradientTransformation):
    """One jitted AdamW step of the classifier (params and state donated): ``-> (params, state, loss)``."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def learning_rates(opt_state, base_lr: float) -> list[float]:
    return [base_lr * float(f) for f in maxp_jax.find_maxp_state(opt_state).factors]


def main(argv: list[str] | None = None) -> None:
    args = digits_arguments(__doc__.split("\n\n")[0], argv)

    x_train, x_test, y_train, y_test = digits_split()

    model = MLP(args.width, args.depth)
    params = model.init(jax.random.key(0), jnp.ones((1, 64)))
    rules = [maxp_jax.Rule(r"params/Dense_0/.*", "embedding")]
    rules += [maxp_jax.Rule(rf"params/Dense_{i}/.*", "hidden") for i in range(1, args.depth - 1)]
    rules += [maxp_jax.Rule(rf"params/Dense_{args.depth - 1}/.*", "readout")]
    spec = maxp_jax.MaxPSpec(params, rules, parametrization="mup", optimizer="adam", alignment="full")
    params = maxp_jax.abc_init(spec, params, jax.random.key(1))

    dynamic = maxp_jax.DynamicAlignment(
        model.apply,
        jnp.asarray(x_train[:64]),
        warmup_steps=args.warmup_steps,
        solve_interval=args.solve_interval,
    )
    tx = optax.chain(
        optax.scale_by_adam(),
        maxp_jax.scale_by_maxp(spec, dynamic),
        optax.scale_by_learning_rate(args.lr),
    )
    opt_state = tx.init(params)

    step = train_step(model, tx)

    names = [layer.name for layer in spec.layers]
    log = RateLog(names, [layer.role.value for layer in spec.layers], learning_rates(opt_state, args.lr))
    print(f"maxP (muP, Adam) on digits: width {args.width}, depth {args.depth}, JAX\n")
    print(log.table())
    rng = np.random.default_rng(0)
    progress = tqdm(range(args.steps), desc="training", unit="step", leave=False, mininterval=0.5)
    for _ in progress:
        idx = rng.integers(0, len(x_train), args.batch)
        params, opt_state, loss = step(
            params, opt_state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
        )
        state = maxp_jax.find_maxp_state(opt_state)
        log.update(int(state.solves), learning_rates(opt_state, args.lr), np.asarray(state.alignment))
        progress.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    print()
    print(log.table())
    accuracy = float((model.apply(params, jnp.asarray(x_test)).argmax(-1) == jnp.asarray(y_test)).mean())
    print(
        f"\nfinal loss {float(loss):.4f}; test accuracy {accuracy:.3f} after {args.steps} steps; "
        f"re-solves: {log.solves}"
    )


if __name__ == "__main__":
    main()
