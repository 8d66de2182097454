"""abc initialisation of a params pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from maxp_jax.spec import MaxPSpec, TiedUses, leaf_key, path_string


def abc_init(spec: MaxPSpec, params: Any, key: jax.Array, std_prefactor: float = 1.0) -> Any:
    """Re-initialise the maxP layers of ``params``: weights ``N(0, std^2)``, the rest zero.

    ``std = std_prefactor * n^-b`` with the layer's width ``n`` and ``b`` after folding
    (``b + a`` when ``spec.multipliers == "folded"``). Biases and other leaves of a layer
    start at zero; leaves outside every layer are returned unchanged.

    Args:
      spec: the :class:`~maxp_jax.MaxPSpec`.
      params: the params pytree to re-initialise (same structure as the spec's).
      key: a PRNG key; each layer draws from ``jax.random.fold_in(key, layer_index)``
        (each slice of a stacked leaf too, so a scan-stacked model starts from the
        weights of its unrolled twin).
      std_prefactor: a constant factor on every standard deviation.

    Returns:
      A new params pytree.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from maxp_jax import MaxPSpec, Rule
      >>> params = {"w_in": jnp.zeros((8, 256)), "w_out": jnp.zeros((256, 4))}
      >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_out", "readout")])
      >>> new = abc_init(spec, params, jax.random.key(0))
      >>> round(float(new["w_out"].std() * 256), 1)   # muP readout, folded: std = 1/n
      1.0
    """
    stds = spec.init_std(std_prefactor)
    index = spec.leaf_layer_index()
    weights = {leaf_key(layer.weight_path) for layer in spec.layers}

    def draw(i: int, shape: tuple[int, ...]) -> jax.Array:
        return jax.random.normal(jax.random.fold_in(key, i), shape, dtype=jnp.float32) * stds[i]

    def init_leaf(path: Any, leaf: Any) -> Any:
        name = leaf_key(path_string(path))
        if name in weights:
            i = index[name]
            shape = jnp.shape(leaf)
            if isinstance(i, TiedUses):  # one table, two uses: the smaller of their two stds
                noise = draw(min(i, key=lambda k: stds[k]), shape)
            elif isinstance(i, int):
                noise = draw(i, shape)
            else:  # each slice as its own layer would draw it: the unrolled twin's weights
                noise = jnp.stack([draw(k, shape[1:]) for k in i])
            return noise.astype(jnp.asarray(leaf).dtype)
        if name in index:
            return jnp.zeros_like(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(init_leaf, params)
