"""A small GPT-style transformer in flax, the twin of :mod:`examples.torch_models`.

Same blocks, same parameter shapes; flax names the layers ``tok``, ``pos``,
``blocks_<i>/(q|k|v|o|gate|up|down)``, ``head`` (:func:`flax_to_torch_name` maps
them to the PyTorch names); :class:`FlaxViT` reuses the block without the causal mask.
With ``parametrized=True`` the attention scores are marked as a parameter-free layer
with ``a = 1`` (scaled by ``1/d``) for graph discovery; the weights get their exponents
from a :class:`maxp_jax.MaxPSpec` built with :func:`gpt_rules`. With
``parametrized=False`` it is the standard model, scores scaled by ``1/sqrt(d)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import maxp_jax


class FlaxBlock(nn.Module):
    """One pre-LN block; ``index`` names its scores node ``blocks.<index>.scores``."""

    index: int
    d: int
    parametrized: bool = True
    causal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.d
        h = nn.LayerNorm()(x)
        q, k = nn.Dense(d, use_bias=False, name="q")(h), nn.Dense(d, use_bias=False, name="k")(h)
        if self.parametrized:
            product = maxp_jax.activation(
                f"blocks.{self.index}.scores", lambda a, b: a @ jnp.swapaxes(b, -2, -1) / d, a=1.0
            )
            scores = product(q, k)
        else:
            scores = q @ jnp.swapaxes(k, -2, -1) / d**0.5
        if self.causal:
            mask = jnp.triu(jnp.ones((x.shape[1], x.shape[1]), bool), 1)
            scores = jnp.where(mask, -jnp.inf, scores)
        attn = jax.nn.softmax(scores, -1)
        x = x + nn.Dense(d, use_bias=False, name="o")(attn @ nn.Dense(d, use_bias=False, name="v")(h))
        h = nn.LayerNorm()(x)
        gated = jax.nn.silu(nn.Dense(2 * d, use_bias=False, name="gate")(h))
        gated = gated * nn.Dense(2 * d, use_bias=False, name="up")(h)
        return x + nn.Dense(d, use_bias=False, name="down")(gated)


class FlaxGPT(nn.Module):
    """Token + position embeddings, ``blocks`` blocks, a final LayerNorm and a readout.

    Example:
      >>> model = FlaxGPT(d=16, blocks=1, vocab=20, ctx=8)
      >>> ids = jnp.zeros((2, 8), jnp.int32)
      >>> model.apply(model.init(jax.random.key(0), ids), ids).shape
      (2, 8, 20)
    """

    d: int = 32
    blocks: int = 2
    vocab: int = 50
    ctx: int = 16
    parametrized: bool = True
    #: Output multipliers of ``tok``, ``pos`` and ``head``: a ``MaxPSpec(multipliers="explicit")``'s
    #: ``spec.multiplier(name)`` (under muP the blocks' are 1).
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        tok, pos, head = self.scales
        x = tok * nn.Embed(self.vocab, self.d, name="tok")(ids)
        x = x + pos * nn.Embed(self.ctx, self.d, name="pos")(jnp.arange(ids.shape[1]))
        for i in range(self.blocks):
            x = FlaxBlock(i, self.d, self.parametrized, name=f"blocks_{i}")(x)
        return head * nn.Dense(self.vocab, use_bias=False, name="head")(nn.LayerNorm()(x))


class FlaxViT(nn.Module):
    """Patch embedding (a convolution), bidirectional blocks, mean pooling, a readout: the
    twin of :class:`examples.torch_models.ViT` (images are ``(batch, height, width, 3)``).

    Example:
      >>> model = FlaxViT(d=16, blocks=1)
      >>> images = jnp.zeros((2, 16, 16, 3))
      >>> model.apply(model.init(jax.random.key(0), images), images).shape
      (2, 10)
    """

    d: int = 32
    blocks: int = 2
    patch: int = 4
    image: int = 16
    classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = nn.Conv(self.d, (self.patch, self.patch), strides=self.patch, padding="VALID", name="patch")(
            images
        )
        x = x.reshape(x.shape[0], -1, self.d)
        x = x + nn.Embed((self.image // self.patch) ** 2, self.d, name="pos")(jnp.arange(x.shape[1]))
        for i in range(self.blocks):
            x = FlaxBlock(i, self.d, causal=False, name=f"blocks_{i}")(x)
        return nn.Dense(self.classes, use_bias=False, name="head")(nn.LayerNorm()(x).mean(1))


def gpt_rules() -> list[maxp_jax.Rule]:
    """The rules that give :class:`FlaxGPT`'s weights their roles."""
    return [
        maxp_jax.Rule("params/(tok|pos)/embedding", "embedding", layout="embedding"),
        maxp_jax.Rule(r"params/blocks_\d+/(q|k|v|o|gate|up|down)/kernel", "hidden"),
        maxp_jax.Rule("params/head/kernel", "readout"),
    ]


def flax_to_torch_name(name: str) -> str:
    """A :class:`FlaxGPT` layer name as :class:`examples.torch_models.GPT` names it.

    Example:
      >>> flax_to_torch_name("params/blocks_1/q")
      'blocks.1.q'
    """
    return name.removeprefix("params/").replace("blocks_", "blocks.").replace("/", ".")
