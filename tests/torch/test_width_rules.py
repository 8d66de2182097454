"""Rules read from two widths: the same layers, roles, c and rates as hand-written rules, and refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from maxp_core import MaxPError
from maxp_torch.parametrization import Parametrization
from maxp_torch.rules import Rule, apply_rules
from maxp_torch.width_rules import rules_from_widths
from tests.torch.test_hf import GPT2_RULES, LLAMA_RULES

VOCAB, CTX, IMAGE, CLASSES = 64, 16, 16, 10


def transformers() -> Any:
    return pytest.importorskip("transformers")


# --- the models, at a width ------------------------------------------------------------------


def llama(width: int, head_dim: int | None = None) -> nn.Module:
    heads = 4 if head_dim is None else width // head_dim
    config = transformers().LlamaConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,  # grouped-query attention
        head_dim=head_dim,
        vocab_size=VOCAB,
        max_position_embeddings=CTX,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers().LlamaForCausalLM(config).eval()


def gpt2(width: int, layers: int = 2) -> nn.Module:
    config = transformers().GPT2Config(
        n_embd=width,
        n_layer=layers,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=CTX,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers().GPT2LMHeadModel(config).eval()


def bert(width: int) -> nn.Module:
    config = transformers().BertConfig(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        vocab_size=VOCAB,
        max_position_embeddings=CTX,
    )
    return transformers().BertForMaskedLM(config).eval()


def vit(width: int) -> nn.Module:
    config = transformers().ViTConfig(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * width,
        image_size=IMAGE,
        patch_size=4,
        num_labels=CLASSES,
    )
    return transformers().ViTForImageClassification(config).eval()


def resnet(width: int) -> nn.Module:
    config = transformers().ResNetConfig(
        embedding_size=width,
        hidden_sizes=[width, 2 * width],
        depths=[1, 1],
        layer_type="bottleneck",
        num_labels=CLASSES,
    )
    return transformers().ResNetForImageClassification(config).eval()


def tokens() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, CTX), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


# --- hand-written rules (GPT-2's and Llama's from tests/torch/test_hf.py) ----------------

BERT_RULES = [
    Rule(r"bert\.embeddings\.(word|position|token_type)_embeddings", "embedding"),
    Rule(
        r"bert\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense)", "hidden"
    ),
    Rule(r"bert\.encoder\.layer\.\d+\.(intermediate|output)\.dense", "hidden"),
    Rule(r"cls\.predictions\.transform\.dense", "hidden"),
    Rule(r"cls\.predictions\.decoder", "readout"),  # tied to word_embeddings
    Rule(r"bert\.encoder\.layer\.\d+\.attention\.self", "attention"),
]
VIT_RULES = [
    Rule(r"vit\.embeddings\.patch_embeddings\.projection", "embedding"),
    Rule(r"vit\.embeddings\.(cls_token|position_embeddings)", "embedding"),
    Rule(r"vit\.layers\.\d+\.(attention\.[qkvo]_proj|mlp\.fc[12])", "hidden"),
    Rule("classifier", "readout"),
    Rule(r"vit\.layers\.\d+\.attention", "attention"),
]
RESNET_RULES = [
    Rule(r"resnet\.embedder\.embedder\.convolution", "embedding"),
    Rule(r"resnet\.encoder\.stages\.\d+\.layers\.\d+\.(layer\.\d+|shortcut)\.convolution", "hidden"),
    Rule(r"classifier\.1", "readout"),
]

MODELS = {
    "llama": (llama, 32, 64, tokens, LLAMA_RULES),
    "gpt2": (gpt2, 32, 64, tokens, GPT2_RULES),
    "bert": (bert, 32, 64, tokens, BERT_RULES),
    "vit": (vit, 32, 64, images, VIT_RULES),
    "resnet": (resnet, 8, 16, images, RESNET_RULES),
}


def parametrize(build: Callable[[int], nn.Module], width: int, rules: list[Rule], x: Any) -> Parametrization:
    torch.manual_seed(0)
    return Parametrization(build(width), rules=rules, strict=True, sample_input=x, lr_prefactor=1e-2, seed=0)


@pytest.mark.filterwarnings("ignore:.*share one weight")
@pytest.mark.parametrize("model", list(MODELS))
def test_inferred_rules_parametrize_like_hand_written_ones(model: str) -> None:
    build, small, large, sample, hand = MODELS[model]
    x = sample()
    inferred = rules_from_widths(build(small), build(large), sample_input=x)
    assert [r.role for r in inferred] == list(dict.fromkeys(r.role for r in hand))  # one rule per role
    ours, theirs = parametrize(build, large, inferred, x), parametrize(build, large, hand, x)
    assert ours.names == theirs.names
    assert [(m.layer_type, m.kind.name, m.width_dim) for m in ours.modules] == [
        (m.layer_type, m.kind.name, m.width_dim) for m in theirs.modules
    ]
    np.testing.assert_array_equal(ours.c, theirs.c)
    assert [(g["layer_name"], g["lr"]) for g in ours.param_groups] == [
        (g["layer_name"], g["lr"]) for g in theirs.param_groups
    ]
    assert ours.graph.nodes == theirs.graph.nodes  # the traced graph: names, roles, merges, scores
    assert ours.describe() == theirs.describe()


def test_inferred_rules_read_like_hand_written_ones() -> None:
    x = tokens()
    rules = {r.role: r.pattern for r in rules_from_widths(gpt2(32), gpt2(64), sample_input=x)}
    assert rules == {
        "embedding": r"transformer\.(wte|wpe)",
        "hidden": r"transformer\.h\.\d+\.(attn\.(c_attn|c_proj)|mlp\.(c_fc|c_proj))",
        "readout": "lm_head",  # tied to wte: both uses get their rule
        "attention": r"transformer\.h\.\d+\.attn",
    }
    rules = {r.role: r.pattern for r in rules_from_widths(llama(32), llama(64), sample_input=x)}
    attention, mlp = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)", r"mlp\.(gate_proj|up_proj|down_proj)"
    assert rules["hidden"] == rf"model\.layers\.\d+\.({attention}|{mlp})"
    assert rules["attention"] == r"model\.layers\.\d+\.self_attn"
    # No sample input: the same layer rules, no attention rule (Parametrization's trace warns).
    assert [r.role for r in rules_from_widths(llama(32), llama(64))] == ["embedding", "hidden", "readout"]
    # classifier.1 stays exact: classifier\.\d+ would also catch the Flatten at classifier.0.
    rules = {r.role: r.pattern for r in rules_from_widths(resnet(8), resnet(16))}
    assert rules["readout"] == r"classifier\.1"


def test_rules_print_readably_and_can_be_edited() -> None:
    rules = rules_from_widths(mlp(16), mlp(32))
    assert "pattern='head', role='readout'" in repr(rules)
    assert [(r.pattern, r.role) for r in rules] == [
        ("stem", "embedding"),
        ("blocks", "hidden"),
        ("head", "readout"),
    ]
    edited = [dataclasses.replace(r, c=1.0) if r.role == "hidden" else r for r in rules]
    param = Parametrization(mlp(32), rules=edited, strict=True, lr_prefactor=1.0)
    assert param.c[1] == 1.0


# --- small hand-written models -------------------------------------------------------------


class Blocks(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = h + torch.relu(layer(h))
        return h


class MLP(nn.Module):
    def __init__(self, width: int, blocks: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.blocks: nn.Module = Blocks(width) if blocks else nn.Linear(width, width)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.blocks(torch.relu(self.stem(x)))))


def mlp(width: int) -> nn.Module:
    return MLP(width)


def test_indices_are_generalized_only_where_no_other_role_is_caught() -> None:
    def stack(w: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, w), nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, 4))

    rules = rules_from_widths(stack(16), stack(32))
    assert [(r.pattern, r.role) for r in rules] == [("0", "embedding"), ("(1|2)", "hidden"), ("3", "readout")]
    rules = rules_from_widths(MLP(16, blocks=True), MLP(32, blocks=True))
    assert [r.pattern for r in rules] == ["stem", r"blocks\.layers\.\d+", "head"]
    model = MLP(32, blocks=True)
    found = apply_rules(model, rules)
    assert [(name, layer.layer_type) for name, layer in found.layers] == [
        ("stem", "embedding"),
        ("blocks.layers.0", "hidden"),
        ("blocks.layers.1", "hidden"),
        ("head", "readout"),
    ]
    found.remove()


class Tokens(nn.Module):
    """A class token and a position embedding (bare parameters) around a linear embedding."""

    def __init__(self, width: int, positions: int = 5) -> None:
        super().__init__()
        self.proj = nn.Linear(4, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, width))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), self.proj(x)], dim=1) + self.pos_embed
        return self.head(h[:, 0])


def test_bare_parameters_whose_last_axis_grows_are_embeddings() -> None:
    rules = rules_from_widths(Tokens(16), Tokens(32), sample_input=torch.randn(2, 4, 4))
    assert [(r.pattern, r.role) for r in rules] == [
        ("(proj|cls_token|pos_embed)", "embedding"),
        ("head", "readout"),
    ]
    with pytest.raises(
        MaxPError, match=r"parameter 'pos_embed' .*\(1, 5, 16\) at the small width, \(1, 6, 32\)"
    ):
        rules_from_widths(Tokens(16), Tokens(32, positions=6))


# --- undecidable: bottlenecks and attention whose head count grows ---------------------------


class Bottleneck(nn.Module):
    """A fixed-size hidden dimension: ``squeeze`` looks like a readout but ``expand`` reads it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.squeeze = nn.Linear(width, 4)
        self.expand = nn.Linear(4, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.expand(torch.relu(self.squeeze(h)))))


def test_a_fixed_size_bottleneck_is_refused_by_name() -> None:
    by_flow = r"'squeeze' looks like a readout \(weight \(4, 16\) .* \(4, 32\) .*its output feeds 'expand'"
    with pytest.raises(MaxPError, match=by_flow):
        rules_from_widths(Bottleneck(16), Bottleneck(32), sample_input=torch.randn(2, 8))
    with pytest.raises(MaxPError, match=r"'squeeze' looks like a readout .* a later layer, 'expand', reads"):
        rules_from_widths(Bottleneck(16), Bottleneck(32))


class Routed(nn.Module):
    """A router (input grows, output fixed) whose weights mix two experts: a readout, no bottleneck."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.router = nn.Linear(width, 2)
        self.experts = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)])
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        weights = torch.softmax(self.router(h), -1)
        h = h + sum(weights[:, k : k + 1] * expert(h) for k, expert in enumerate(self.experts))
        return self.head(h)


def test_a_readout_feeding_only_growing_inputs_is_no_bottleneck() -> None:
    rules = rules_from_widths(Routed(16), Routed(32), sample_input=torch.randn(2, 8))
    assert [(r.pattern, r.role) for r in rules] == [
        ("stem", "embedding"), (r"experts\.\d+", "hidden"), ("(router|head)", "readout")
    ]  # fmt: skip


def test_attention_whose_head_count_grows_is_refused_by_name() -> None:
    with pytest.raises(
        MaxPError,
        match=r"attention in 'model\.layers\.0\.self_attn' keeps its head dimension at 8 .*\(2, 4, 16, 8\) "
        r"at the small width, \(2, 8, 16, 8\) at the large one.* width=",
    ):
        rules_from_widths(llama(32, head_dim=8), llama(64, head_dim=8), sample_input=tokens())


# --- refusals: other architectures, other changes ----------------------------------------------


def test_different_architectures_are_refused() -> None:
    with pytest.raises(
        MaxPError, match=r"not the same architecture: .*only in the large one: transformer\.h\.2"
    ):
        rules_from_widths(gpt2(32), gpt2(64, layers=3))
    with pytest.raises(MaxPError, match=r"no layer's weight differs"):
        rules_from_widths(mlp(16), mlp(16))


class CNN(nn.Module):
    def __init__(self, width: int, kernel: int = 3, groups: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv = nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=groups)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3)))


def test_changes_other_than_growth_are_refused_by_name() -> None:
    assert [r.role for r in rules_from_widths(CNN(8), CNN(16))] == ["embedding", "hidden", "readout"]
    with pytest.raises(
        MaxPError, match=r"Conv2d 'conv' .*\(8, 8, 3, 3\) at the small width, \(16, 16, 5, 5\)"
    ):
        rules_from_widths(CNN(8), CNN(16, kernel=5))
    with pytest.raises(
        MaxPError,
        match=r"Linear 'stem' .*\(16, 8\) at the small width, \(8, 8\) .*output axis shrinks from 16 to 8",
    ):
        rules_from_widths(mlp(16), mlp(8))
    with pytest.raises(MaxPError, match=r"Conv2d 'conv' .*: groups 8 at the small width, 16 at the large"):
        rules_from_widths(CNN(8, groups=8), CNN(16, groups=16))


def test_the_sample_pass_leaves_torchs_random_state_alone() -> None:
    def train(w: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, w), nn.Dropout(0.5), nn.Linear(w, 4)).train()

    small, large, x = train(16), train(32), torch.randn(2, 8)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    rules_from_widths(small, large, sample_input=x)
    torch.testing.assert_close(torch.rand(3), expected)


def test_the_models_are_left_as_they_were() -> None:
    x = torch.randn(4, 8)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    before = model(x)
    rules_from_widths(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), model, sample_input=x)
    torch.testing.assert_close(model(x), before)
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks  # every hook taken off
