"""Small flax models the JAX tests share."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from maxp_jax import MaxPSpec, Rule
from maxp_jax.layers import ScaledDense


class MLP(nn.Module):
    """``depth`` Dense layers of ``width``, ReLU between; ``multipliers`` scales outputs."""

    width: int = 64
    depth: int = 4
    out: int = 10
    multipliers: tuple[float, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        sizes = [self.width] * (self.depth - 1) + [self.out]
        for i, size in enumerate(sizes):
            m = 1.0 if self.multipliers is None else self.multipliers[i]
            x = ScaledDense(size, multiplier=m, name=f"Dense_{i}")(x)
            if i < len(sizes) - 1:
                x = nn.relu(x)
        return x


def mlp_rules(depth: int) -> list[Rule]:
    return [
        Rule(r"params/Dense_0/.*", "embedding"),
        *(
            [Rule(rf"params/Dense_({'|'.join(str(i) for i in range(1, depth - 1))})/.*", "hidden")]
            if depth > 2
            else []
        ),
        Rule(rf"params/Dense_{depth - 1}/.*", "readout"),
    ]


def mlp_and_spec(width=64, depth=4, in_dim=16, **spec_kwargs):
    model = MLP(width, depth)
    params = model.init(jax.random.key(0), jnp.ones((1, in_dim)))
    return model, params, MaxPSpec(params, mlp_rules(depth), **spec_kwargs)
