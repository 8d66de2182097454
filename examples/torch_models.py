"""A small GPT-style transformer in PyTorch (its flax twin is :mod:`examples.flax_models`).

Pre-LN blocks with single-head causal attention and a SwiGLU MLP, token and position
embeddings and an untied readout. With ``parametrized=True`` every weight sits in a
:class:`maxp_torch.ParametrizedModule` and the attention scores are a parameter-free
layer with ``a = 1`` (scores scaled by ``1/d``, set by the parametrization); with
``parametrized=False`` it is the standard model: plain layers, PyTorch's default
initialisation, scores scaled by ``1/sqrt(d)``. Layers are named ``tok``, ``pos``,
``blocks.<i>.(q|k|v|o|gate|up|down)``, ``head``. :class:`ViT` reuses the block without the
causal mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from maxp_torch import ParametrizedModule


def _layer(module: Any, width: int, kind: str, parametrized: bool) -> Any:
    return ParametrizedModule(module, width_dim=width, layer_type=kind) if parametrized else module


def _scaled_scores(d: int) -> Any:
    def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return q @ k.transpose(-2, -1) / d**0.5

    return scores


def _product(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return q @ k.transpose(-2, -1)


class Block(nn.Module):
    """One pre-LN transformer block: causal single-head attention, then a SwiGLU MLP.

    ``zero_init`` names layers (``"v"``, ``"o"``, ``"gate"``, ...) whose weights start at zero
    (``b = inf``), as many recipes do for output projections and gates. ``scores_a`` is the
    scores' exponent: ``1`` scales them by ``1/d`` (muP), ``0.5`` by ``1/sqrt(d)`` (the published
    maxP tutorial's annotation).
    """

    def __init__(
        self,
        d: int,
        parametrized: bool = True,
        causal: bool = True,
        zero_init: tuple[str, ...] = (),
        scores_a: float = 1.0,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = (
            _layer(nn.Linear(d, d, bias=False), d, "hidden", parametrized) for _ in "qkv"
        )
        self.scores = (
            ParametrizedModule(_product, width_dim=d, layer_type="readout", a=scores_a)
            if parametrized
            else _scaled_scores(d)
        )
        self.o = _layer(nn.Linear(d, d, bias=False), d, "hidden", parametrized)
        self.up = _layer(nn.Linear(d, 2 * d, bias=False), d, "hidden", parametrized)
        self.gate = _layer(nn.Linear(d, 2 * d, bias=False), d, "hidden", parametrized)
        self.down = _layer(nn.Linear(2 * d, d, bias=False), 2 * d, "hidden", parametrized)
        for name in zero_init:
            layer = getattr(self, name)
            if not isinstance(layer, ParametrizedModule):
                raise ValueError(f"zero_init names {name!r}, which is not a parametrized layer of the block")
            layer.b = math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        scores = self.scores(self.q(h), self.k(h))
        if self.causal:
            length = x.shape[1]
            mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
            scores = scores.masked_fill(mask, float("-inf"))
        x = x + self.o(torch.softmax(scores, -1) @ self.v(h))
        h = self.ln2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position's logits against the next token of ``ids``.

    Example:
      >>> round(float(next_token_loss(torch.zeros(2, 8, 20), torch.zeros(2, 8, dtype=torch.long))), 4)
      2.9957
    """
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


class GPT(nn.Module):
    """Token + position embeddings, ``blocks`` blocks, a final LayerNorm and a readout to ``vocab``.

    Example:
      >>> GPT(d=16, blocks=1, vocab=20, ctx=8)(torch.zeros(2, 8, dtype=torch.long)).shape
      torch.Size([2, 8, 20])
    """

    def __init__(
        self,
        d: int = 32,
        blocks: int = 2,
        vocab: int = 50,
        ctx: int = 16,
        parametrized: bool = True,
        zero_init: tuple[str, ...] = (),
        scores_a: float = 1.0,
    ) -> None:
        super().__init__()
        self.tok = _layer(nn.Embedding(vocab, d), d, "embedding", parametrized)
        self.pos = _layer(nn.Embedding(ctx, d), d, "embedding", parametrized)
        self.blocks = nn.ModuleList(
            Block(d, parametrized, zero_init=zero_init, scores_a=scores_a) for _ in range(blocks)
        )
        self.ln = nn.LayerNorm(d)
        self.head = _layer(nn.Linear(d, vocab, bias=False), d, "readout", parametrized)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class ViT(nn.Module):
    """Patch embedding (a convolution), ``blocks`` bidirectional blocks, mean pooling, a readout.

    Example:
      >>> ViT(d=16, blocks=1)(torch.zeros(2, 3, 16, 16)).shape
      torch.Size([2, 10])
    """

    def __init__(
        self,
        d: int = 32,
        blocks: int = 2,
        patch: int = 4,
        image: int = 16,
        classes: int = 10,
        zero_init: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.patch = _layer(nn.Conv2d(3, d, patch, stride=patch), d, "embedding", True)
        self.pos = _layer(nn.Embedding((image // patch) ** 2, d), d, "embedding", True)
        self.blocks = nn.ModuleList(Block(d, causal=False, zero_init=zero_init) for _ in range(blocks))
        self.ln = nn.LayerNorm(d)
        self.head = _layer(nn.Linear(d, classes, bias=False), d, "readout", True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = x + self.pos(torch.arange(x.shape[1], device=images.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(1))
