"""A timm-style ViT (conv patch embedding, class token, position embedding, fused attention) by rules.

timm itself needs torchvision, which has no CPU build for the pinned torch here, so the model is
written in the layout and with the module names of timm's ``VisionTransformer``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxp_torch import Parametrization, Rule

D, HEADS, PATCH, IMAGE, CLASSES = 32, 2, 4, 16, 10


class Attention(nn.Module):
    """timm's layout: a fused ``qkv``, ``proj``, and ``F.scaled_dot_product_attention`` with no scale."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, D))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(D), Attention(), nn.LayerNorm(D), Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, D, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.randn(1, (IMAGE // PATCH) ** 2 + 1, D) * 0.02)
        self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


RULES = [
    Rule(r"patch_embed\.proj", "embedding"),
    Rule("cls_token|pos_embed", "embedding"),
    Rule(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])", "hidden"),
    Rule("head", "readout"),
    Rule(r"blocks\.\d+\.attn", "attention"),
]


def images(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE, IMAGE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def test_vit_end_to_end() -> None:
    model = ViT()
    keys = list(model.state_dict())
    x, y = images()
    param = Parametrization(model, rules=RULES, strict=True, sample_input=x, lr_prefactor=1e-2)
    assert list(model.state_dict()) == keys and type(model.patch_embed.proj) is nn.Conv2d
    kinds = {param.names[k]: param.modules[k].kind.name for k in param.weighted}
    assert kinds["patch_embed.proj"] == "conv" and kinds["cls_token"] == kinds["pos_embed"] == "parameter"
    assert param.modules[param.names.index("patch_embed.proj")].width_dim == D  # an embedding: its outputs
    # The class token, the patches and the position embedding meet in the stream.
    graph = param.graph
    (stream,) = graph.node("blocks.0.attn.qkv").preds
    upstream = {stream}
    while frontier := {p for name in upstream for p in graph.node(name).preds} - upstream:
        upstream |= frontier
    assert {"cls_token", "pos_embed", "patch_embed.proj"} <= upstream
    scores = graph.node("blocks.0.attn.scores")
    assert scores.contraction and scores.a == pytest.approx(1.0) and scores.preds == ("blocks.0.attn.qkv",)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)
    start = np.array(param.get_last_lr())
    for _ in range(20):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        param.step(x, optimizer)
    end = np.array(param.get_last_lr())
    assert np.isfinite(end).all() and param.solves == 20 and param.failures == 0
    measured = [j for j, k in enumerate(param.weighted) if param.modules[k].layer_type != "embedding"]
    assert (np.abs(end[measured] / start[measured] - 1) > 1e-3).all()
    # A stock instance loads the trained state dict, key for key.
    fresh = ViT()
    fresh.load_state_dict(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
