"""A LLaMA-style decoder in flax linen (RMSNorm, RoPE, SwiGLU, tied or untied embeddings),
its blocks stacked with ``nn.scan(nn.remat(Block))`` as large JAX models write them, or
unrolled. The stacked-layer tests and ``python -m benchmarks.overhead --model scan-gpt``
use it.

Layer ``t`` of the stacked model is ``params/blocks/<w>[t]`` in the spec and
``params/blocks_<t>/<w>`` in its unrolled twin (:func:`unrolled_name` maps one to the other).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

import maxp_jax
from maxp_jax import Rule


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale


def rope(x: jax.Array) -> jax.Array:
    """Rotary position embedding over the last axis of ``(batch, tokens, d)``."""
    half = x.shape[-1] // 2
    angle = jnp.arange(x.shape[-2])[:, None] / 10000 ** (jnp.arange(half) / half)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class LlamaBlock(nn.Module):
    """A pre-norm block; its scores are the activation node ``scores[<index>]``."""

    d: int
    index: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        d = self.d
        h = RMSNorm(name="attn_norm")(x)
        q = rope(nn.Dense(d, use_bias=False, name="q")(h))
        k = rope(nn.Dense(d, use_bias=False, name="k")(h))
        v = nn.Dense(d, use_bias=False, name="v")(h)
        label = "scores" if self.index is None else f"scores[{self.index}]"
        scores = maxp_jax.activation(label, lambda a, b: a @ jnp.swapaxes(b, -2, -1) / d, a=1.0)(q, k)
        mask = jnp.triu(jnp.ones((x.shape[1], x.shape[1]), bool), 1)
        attn = jax.nn.softmax(jnp.where(mask, -jnp.inf, scores), -1)
        x = x + nn.Dense(d, use_bias=False, name="o")(attn @ v)
        h = RMSNorm(name="mlp_norm")(x)
        gated = jax.nn.silu(nn.Dense(2 * d, use_bias=False, name="gate")(h))
        return x + nn.Dense(d, use_bias=False, name="down")(
            gated * nn.Dense(2 * d, use_bias=False, name="up")(h)
        ), None


class Llama(nn.Module):
    """Embedding, ``layers`` blocks (``scan``: stacked by ``nn.scan(nn.remat(...))``), a
    final RMSNorm and a readout (``tied``: ``embed.attend``).

    Example:
      >>> from maxp_jax import MaxPSpec
      >>> ids = jnp.zeros((2, 8), jnp.int32)
      >>> model = Llama(d=16, layers=2)
      >>> params = model.init(jax.random.key(0), ids)
      >>> params["params"]["blocks"]["q"]["kernel"].shape
      (2, 16, 16)
      >>> spec = MaxPSpec(params, llama_rules(), apply_fn=model.apply, sample_input=ids)
      >>> [layer.name for layer in spec.layers if layer.weight_path.endswith("q/kernel")]
      ['params/blocks/q[0]', 'params/blocks/q[1]']
    """

    vocab: int = 32
    d: int = 32
    layers: int = 3
    scan: bool = True
    tied: bool = False

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        embed = nn.Embed(self.vocab, self.d, name="embed")
        x = embed(ids)
        if self.scan:
            stack = nn.scan(
                nn.remat(LlamaBlock),
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.layers,
            )
            x, _ = stack(self.d, name="blocks")(x, None)
        else:
            for i in range(self.layers):
                x, _ = LlamaBlock(self.d, index=i, name=f"blocks_{i}")(x)
        h = RMSNorm(name="final_norm")(x)
        return embed.attend(h) if self.tied else nn.Dense(self.vocab, use_bias=False, name="head")(h)


def llama_rules() -> list[Rule]:
    """Roles for both the stacked model and its unrolled twin."""
    return [
        Rule("params/embed/embedding", "embedding", layout="embedding"),
        Rule(r"params/blocks(_\d+)?/(q|k|v|o|gate|up|down)/kernel", "hidden"),
        Rule("params/head/kernel", "readout"),
    ]


def unrolled_name(name: str) -> str:
    """The unrolled twin's name of a stacked model's layer or node (``blocks/q[2]`` -> ``blocks_2/q``)."""
    return re.sub(r"blocks/(\w+)\[(\d+)\]", r"blocks_\2/\1", name)
