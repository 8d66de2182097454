"""abc initialisation of a params pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from maxp_core import MaxPError
from maxp_core.initial import warn_on_growing_init
from maxp_jax.spec import MaxPSpec, TiedUses, leaf_key, path_string


def abc_init(spec: MaxPSpec, params: Any, key: jax.Array | None = None, std_prefactor: float = 1.0) -> Any:
    """Initialise the maxP layers of ``params`` as maxP asks.

    Without a base width: weights ``N(0, std^2)`` with ``std = std_prefactor * n^-b`` (the
    layer's width ``n``, ``b`` after folding: ``b + a`` when ``spec.multipliers ==
    "folded"``; a convolution's window counted, :mod:`maxp_core.initial`); biases and other
    leaves of a layer start at zero. A hidden layer whose initial forward gain would make
    activations grow through depth is named in a warning.

    With ``spec.base_width``: the params' own weights (your model's init, e.g. flax's
    ``lecun_normal``) are kept and multiplied by ``std_prefactor * (n / n_base)^-(b -
    b_standard)`` (:meth:`MaxPSpec.init_scale`), and biases stay as they are: at the base
    width the params come back unchanged. ``key`` is not used.

    Leaves outside every layer are returned unchanged.

    Args:
      spec: the :class:`~maxp_jax.MaxPSpec`.
      params: the params pytree (same structure as the spec's).
      key: a PRNG key (not needed with a base width); each layer draws from
        ``jax.random.fold_in(key, layer_index)`` (each slice of a stacked leaf too, so a
        scan-stacked model starts from the weights of its unrolled twin).
      std_prefactor: a constant factor on every standard deviation.

    Returns:
      A new params pytree.

    Raises:
      MaxPError: no ``key`` without a base width.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from maxp_jax import MaxPSpec, Rule
      >>> params = {"w_in": jnp.zeros((8, 256)), "w_out": jnp.zeros((256, 4))}
      >>> spec = MaxPSpec(params, [Rule("w_in", "embedding"), Rule("w_out", "readout")])
      >>> new = abc_init(spec, params, jax.random.key(0))
      >>> round(float(new["w_out"].std() * 256), 1)   # muP readout, folded: std = 1/n
      1.0
      >>> own = {"w_in": jnp.ones((8, 256)), "w_out": jnp.ones((256, 4))}
      >>> based = MaxPSpec(own, [Rule("w_in", "embedding"), Rule("w_out", "readout")], base_width=64)
      >>> float(abc_init(based, own)["w_out"][0, 0])  # 4x the base width: the readout's (n/n0)^-1/2, folded
      0.5
    """
    if spec.base_width is not None:
        return _rescale(spec, params, spec.init_scale(std_prefactor))
    if key is None:
        raise MaxPError(
            "abc_init draws the weights from a PRNG key: give key=jax.random.key(...), or keep the params' "
            "own initialisation with MaxPSpec(..., base_width=<the width you tuned at>)"
        )
    gains = spec.forward_gains(std_prefactor)
    warn_on_growing_init([(layer.name, layer.role, g) for layer, g in zip(spec.layers, gains, strict=True)])
    return _draw(spec, params, key, spec.init_std(std_prefactor))


def _layer_value(spec: MaxPSpec, name: str, values: Any, shape: tuple[int, ...]) -> Any:
    """The per-layer number for the leaf ``name``: a tied table's smaller one, a stacked
    leaf's per slice (shaped to broadcast over the slices)."""
    i = spec.leaf_layer_index()[name]
    if isinstance(i, TiedUses):
        return min(values[k] for k in i)
    if isinstance(i, int):
        return values[i]
    return jnp.asarray([values[k] for k in i]).reshape((len(i),) + (1,) * (len(shape) - 1))


def _rescale(spec: MaxPSpec, params: Any, scales: Any) -> Any:
    weights = {leaf_key(layer.weight_path) for layer in spec.layers}

    def scale_leaf(path: Any, leaf: Any) -> Any:
        name = leaf_key(path_string(path))
        if name not in weights:
            return leaf
        array = jnp.asarray(leaf)
        return (array * _layer_value(spec, name, scales, array.shape)).astype(array.dtype)

    return jax.tree_util.tree_map_with_path(scale_leaf, params)


def _draw(spec: MaxPSpec, params: Any, key: jax.Array, stds: Any) -> Any:
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
