"""Rules: roles by name on an unmodified model, checked against wrapping, hand derivations and torch."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxp_core import MaxPError, MaxPWarning, layer_alignment
from maxp_core.symmetry import fold_multiplier
from maxp_torch import (
    ChainedMaxPScheduler,
    MaxPScheduler,
    Parametrization,
    ParametrizedModule,
    Rule,
    conv_patches,
    create_param_groups,
    initialize_abc_weights,
)
from maxp_torch.layers import TRANSPOSED, AttentionScope

D, CTX, VOCAB = 16, 8, 20


class Attention(nn.Module):
    """Causal single-head attention, written either way: wrapped scores or the fused kernel."""

    def __init__(self, wrapped: bool) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.q, self.k, self.v, self.o = (self.linear(wrapped) for _ in "qkvo")
        if wrapped:
            product = lambda q, k: q @ k.transpose(-2, -1)  # noqa: E731
            self.scores = ParametrizedModule(product, width_dim=D, layer_type="hidden", a=1.0)

    @staticmethod
    def linear(wrapped: bool) -> nn.Module:
        layer = nn.Linear(D, D, bias=False)
        return ParametrizedModule(layer, width_dim=D, layer_type="hidden") if wrapped else layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(h), self.k(h), self.v(h)
        if not self.wrapped:
            return self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        mask = torch.triu(torch.ones(CTX, CTX, dtype=torch.bool), 1)
        scores = self.scores(q, k).masked_fill(mask, float("-inf"))
        return self.o(torch.softmax(scores, -1) @ v)


class TinyGPT(nn.Module):
    def __init__(self, wrapped: bool) -> None:
        super().__init__()
        wrap = (
            (lambda m, w, t: ParametrizedModule(m, width_dim=w, layer_type=t))
            if wrapped
            else (lambda m, w, t: m)
        )
        self.tok = wrap(nn.Embedding(VOCAB, D), D, "embedding")
        self.blocks = nn.ModuleList(Attention(wrapped) for _ in range(2))
        self.norm = nn.LayerNorm(D)
        self.head = wrap(nn.Linear(D, VOCAB), D, "readout")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


GPT_RULES = [
    Rule("tok", "embedding"),
    Rule(r"blocks\.\d+\.[qkvo]", "hidden"),
    Rule("head", "readout"),
    Rule(r"blocks\.\d+", "attention"),
]


def ids(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, CTX), generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, param: Parametrization, steps: int) -> list[float]:
    x = ids()
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)
    for _ in range(steps):
        logits = model(x)
        F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
        param.step(x, optimizer)
    return param.get_last_lr()


def test_rules_and_wrapping_give_the_same_graph_c_and_rates() -> None:
    wrapped, plain = TinyGPT(wrapped=True), TinyGPT(wrapped=False)
    kwargs = {"sample_input": ids(), "lr_prefactor": 0.01, "warmup_steps": 2, "solve_interval": 2, "seed": 3}
    by_wrapping = Parametrization(wrapped, **kwargs)
    by_rules = Parametrization(plain, rules=GPT_RULES, strict=True, **kwargs)

    def nodes(param: Parametrization) -> list[tuple]:
        return [(n.name, n.preds, n.merge, n.a, n.b, n.has_weight, n.contraction) for n in param.graph.nodes]

    assert nodes(by_rules) == nodes(by_wrapping)
    assert by_rules.graph.node("blocks.0.scores").contraction  # the fused kernel's q @ k^T
    np.testing.assert_allclose(by_rules.c, by_wrapping.c, rtol=1e-12)
    # Same seeded draws: the same initial weights under the same layer names.
    for name, weight in plain.state_dict().items():
        other = wrapped.state_dict()[name.replace("tok.", "tok.inner.").replace("head.", "head.inner.")
                                     .replace(".q.", ".q.inner.").replace(".k.", ".k.inner.")
                                     .replace(".v.", ".v.inner.").replace(".o.", ".o.inner.")]  # fmt: skip
        torch.testing.assert_close(weight, other, rtol=0, atol=0)
    rates = train(plain, by_rules, 8), train(wrapped, by_wrapping, 8)
    assert by_rules.solves == by_wrapping.solves == 3  # after steps 3, 5 and 7
    np.testing.assert_allclose(*rates, rtol=1e-5)
    assert rates[0] != pytest.approx(by_rules.lr_prefactor * np.array([D**-0.5] * len(rates[0])))


def test_rules_keep_classes_and_state_dict_keys_and_remove_cleanly() -> None:
    model = TinyGPT(wrapped=False)
    keys = list(model.state_dict())
    before = model(ids()).detach()
    param = Parametrization(model, rules=GPT_RULES, reinit=False, sample_input=ids())
    assert list(model.state_dict()) == keys
    assert type(model.blocks[0].q) is nn.Linear
    # Output multipliers: the embedding by D^0.5, the readout by D^-0.5 (muP's a), attention by 1/D.
    assert param.modules[0].scale == pytest.approx(D**0.5)
    assert not torch.allclose(model(ids()), before)
    param.remove()
    torch.testing.assert_close(model(ids()), before)
    with pytest.raises(MaxPError, match="matches nothing"):
        Parametrization(model, rules=[Rule("tok", "embedding"), Rule("lm_head", "readout")])


def test_uncovered_weights_are_listed_and_strict_refuses() -> None:
    model = TinyGPT(wrapped=False)
    partial = [Rule("tok", "embedding"), Rule("head", "readout")]
    with pytest.warns(MaxPWarning, match=r"blocks\.0\.q\.weight \(16, 16\) would train at lr_prefactor"):
        Parametrization(model, rules=partial)
    with pytest.raises(MaxPError, match=r"no maxP layer covers: blocks\.0\.q\.weight"):
        Parametrization(model, rules=partial, strict=True)


def test_rule_errors_name_the_layer_and_what_is_valid() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    with pytest.raises(MaxPError, match=r"module '1' is a LayerNorm; rules give roles to nn.Linear"):
        Parametrization(model, rules=[Rule("0|1", "embedding"), Rule("2", "readout")])
    with pytest.raises(MaxPError, match=r"module '0' is an nn.Embedding .* not a readout"):
        Parametrization(model, rules=[Rule("0", "readout"), Rule("2", "readout")])
    with pytest.raises(MaxPError, match="matched by two rules"):
        Parametrization(model, rules=[Rule("0", "embedding"), Rule("0|2", "readout")])
    with pytest.raises(MaxPError, match=r"attention rule .* c do not apply"):
        Rule("blocks", "attention", c=1.0)
    with pytest.raises(MaxPError, match=r"rules\[1\] must be a maxp_torch.Rule"):
        Parametrization(model, rules=[Rule("0", "embedding"), ("2", "readout")])


class Tokens(nn.Module):
    """A class token and a position embedding, bare parameters added to a linear embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, D))
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), self.proj(x)], dim=1) + self.pos_embed
        return self.head(h[:, 0])


def test_bare_parameters_fold_their_multiplier_into_init_and_rate() -> None:
    rules = [Rule("proj", "embedding"), Rule("cls_token|pos_embed", "embedding"), Rule("head", "readout")]
    model = Tokens()
    param = Parametrization(
        model, rules=rules, strict=True, sample_input=torch.randn(2, 4, 4), lr_prefactor=1.0
    )
    a, b = -0.5, 0.5  # muP's embedding
    (c,) = {float(param.c[j]) for j, k in enumerate(param.weighted) if param.names[k] == "cls_token"}
    _, b_folded, c_folded = fold_multiplier(a, b, c, "adam")
    assert (b_folded, c_folded) == (b + a, c + a)  # Adam: a multiplier n^-a is n^-a on init and rate
    rates = dict(zip(param.get_layer_names(), param.get_last_lr(), strict=True))
    assert rates["cls_token"] == pytest.approx(D**-c_folded)
    assert model.pos_embed.std().item() == pytest.approx(D**-b_folded, rel=0.2)
    assert param.graph.node("cls_token").preds == () and "cls_token" in param.graph.node("add1").preds
    with pytest.raises(MaxPError, match=r"bare parameter, added to its input .* only be an embedding"):
        Parametrization(
            Tokens(), rules=[Rule("proj", "embedding"), Rule("pos_embed", "hidden"), Rule("head", "readout")]
        )


def test_tied_weight_has_one_group_at_the_smaller_rate() -> None:
    model = TinyGPT(wrapped=False)
    model.head = nn.Linear(D, VOCAB, bias=False)
    model.head.weight = model.tok.weight
    with pytest.warns(MaxPWarning, match="tok and head share one weight"):
        param = Parametrization(model, rules=GPT_RULES, strict=True, sample_input=ids(), alignment="no")
    group = param.param_groups[0]
    assert group["tied"] == ["tok", "head"] and group["params"] == [model.tok.weight]
    assert all(g["params"] for g in param.param_groups)
    optimizer = torch.optim.AdamW(param.param_groups)  # no duplicate-parameter warning, no empty group
    logged = param.metrics()
    wanted = [param.lr_prefactor * logged[f"maxp/lr_factor/{n}"] for n in ("tok", "head")]
    assert logged["maxp/lr/tok"] == logged["maxp/lr/head"] == pytest.approx(min(wanted))
    assert wanted[0] != pytest.approx(wanted[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(min(wanted))
    # The shared table is drawn once, at the smaller std (the readout's muP n^-0.5 here, as the embedding's).
    assert model.tok.weight.std().item() == pytest.approx(D**-0.5, rel=0.15)


def test_unruled_tied_use_is_reported() -> None:
    model = TinyGPT(wrapped=False)
    model.head = nn.Linear(D, VOCAB, bias=False)
    model.head.weight = model.tok.weight
    rules = [Rule("tok", "embedding"), Rule(r"blocks\.\d+\.[qkvo]", "hidden")]
    with pytest.raises(
        MaxPError, match=r"head uses the weight of tok \(tied\) but its own use is no maxP layer"
    ):
        Parametrization(model, rules=rules, strict=True)


@pytest.mark.parametrize(
    "conv, x",
    [
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.randn(2, 3, 9, 7)),
        (
            nn.Conv2d(3, 4, (3, 2), dilation=(2, 1), padding="same", padding_mode="reflect"),
            torch.randn(2, 3, 8, 8),
        ),
        (nn.Conv1d(3, 5, 4, stride=3, padding=2, padding_mode="circular"), torch.randn(3, 3, 11)),
        (nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), torch.randn(1, 2, 4, 5, 3)),
        (nn.Conv2d(3, 4, 3), torch.randn(3, 6, 6)),  # unbatched
    ],
)
def test_conv_patches_times_the_weight_is_the_convolution(conv: nn.Module, x: torch.Tensor) -> None:
    batched = x if x.dim() == len(conv.kernel_size) + 2 else x.unsqueeze(0)
    out = conv(batched) - conv.bias.reshape(-1, *[1] * len(conv.kernel_size))
    expected = out.movedim(1, -1).reshape(-1, conv.out_channels)
    got = conv_patches(conv, x) @ conv.weight.reshape(conv.out_channels, -1).T
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3)))


def test_conv_alignment_is_measured_on_patches() -> None:
    model = CNN()
    rules = [Rule("stem", "embedding"), Rule("conv", "hidden"), Rule("head", "readout")]
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    param = Parametrization(model, rules=rules, strict=True, sample_size=64, lr_prefactor=0.05)
    inputs: list[torch.Tensor] = []
    model.conv.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    param.capture_initial(x)
    w0 = model.conv.weight.detach().clone()
    optimizer = torch.optim.AdamW(param.param_groups)
    for _ in range(3):
        F.cross_entropy(model(x), torch.arange(4)).backward()
        optimizer.step()
        optimizer.zero_grad()
    param.step(x, optimizer)
    # Independent: torch's own unfold gives the patches, (channels, kh, kw) as the weight flattens.
    rows = [F.unfold(inputs[k], 3, padding=1).transpose(1, 2).reshape(-1, 16 * 9)[:64] for k in (0, -1)]
    w = model.conv.weight.detach()
    expected = layer_alignment(
        rows[0], rows[1], w0.reshape(16, -1), w.reshape(16, -1), fan_in=16 * 9, xp=torch
    )
    alpha, omega, u = param.get_alignment()
    assert [alpha[1], omega[1], u[1]] == pytest.approx([float(v) for v in expected], rel=1e-5)


class HFStyleConv1D(nn.Module):
    """The layout of transformers' Conv1D: ``y = x @ W + b`` with ``W`` of shape ``(in, nf)``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


HFStyleConv1D.__name__ = "Conv1D"


def test_transposed_layout_is_measured_as_its_linear_twin() -> None:
    def model(transposed: bool) -> nn.Module:
        torch.manual_seed(0)
        middle = HFStyleConv1D(24, 16) if transposed else nn.Linear(16, 24)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), middle, nn.ReLU(), nn.Linear(24, 4))

    rules = [Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")]
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    results = []
    for transposed in (True, False):
        net = model(transposed)
        param = Parametrization(
            net, rules=rules, strict=True, lr_prefactor=0.05, optimizer_type="sgd", seed=0
        )
        assert param.modules[1].kind.name == ("transposed" if transposed else "linear")
        assert param.modules[1].width_dim == 16  # the input size, read from (in, nf) or (out, in)
        optimizer = torch.optim.SGD(param.param_groups)
        param.capture_initial(x)
        for _ in range(3):
            F.cross_entropy(net(x), torch.arange(16) % 4).backward()
            optimizer.step()
            optimizer.zero_grad()
            param.step(x, optimizer)
        results.append(np.array(param.get_alignment()))
    # The same initial draws (in each layout) and the same updates: the same alignments.
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
    assert TRANSPOSED.matrix(torch.arange(6.0).reshape(2, 3)).shape == (3, 2)


def test_attention_scope_sets_the_fused_kernels_scale() -> None:
    module = nn.Identity()
    q, k, v = (torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    called = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        called["out"] = F.scaled_dot_product_attention(q, k, v, scale=0.3)
        return x

    module.forward = forward
    scope = AttentionScope(module, a=1.0)
    module(torch.zeros(1))
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8, -1) @ v
    torch.testing.assert_close(called["out"], expected)
    scope.remove()
    module(torch.zeros(1))
    torch.testing.assert_close(called["out"], torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1) @ v)


def test_unscoped_fused_attention_under_mup_is_warned_about() -> None:
    rules = GPT_RULES[:-1]
    with pytest.warns(
        MaxPWarning, match=r"blocks\.0\.scores: scaled_dot_product_attention runs at scale 0\.25"
    ):
        param = Parametrization(TinyGPT(wrapped=False), rules=rules, sample_input=ids())
    assert param.graph.node("blocks.0.scores").a == pytest.approx(0.5)


def test_schedulers_are_lr_schedulers() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    initialize_abc_weights(model, parametrization="mup")
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=0.1, parametrization="mup"))
    scheduler = MaxPScheduler(
        optimizer, model, lr_prefactor=0.1, parametrization="mup", solver_warmup_steps=1
    )
    chained = ChainedMaxPScheduler(
        scheduler, [torch.optim.lr_scheduler.LinearLR(optimizer, 0.5, total_iters=2)]
    )
    for s in (scheduler, chained):
        assert isinstance(s, torch.optim.lr_scheduler.LRScheduler)
    assert scheduler.last_epoch == 0
    assert scheduler.base_lrs == pytest.approx([0.1 * 32**-0.5, 0.1 / 32, 0.1 * 32**-0.5, 0.1])
    x = torch.randn(8, 8)
    chained.capture_initial(x)
    for step in range(1, 4):
        model(x).sum().backward()
        optimizer.step()
        chained.step()
        assert chained.last_epoch == scheduler.last_epoch == step
    assert chained.get_last_lr() == [g["lr"] for g in optimizer.param_groups[:3]]
    restored = copy.deepcopy(chained.state_dict())
    assert restored["maxp"]["param"]["step_count"] == 3


def test_describe_and_metrics_report_each_layer() -> None:
    param = Parametrization(TinyGPT(wrapped=False), rules=GPT_RULES, sample_input=ids(), lr_prefactor=0.1)
    table = param.describe().splitlines()
    assert table[0].split() == ["layer", "role", "kind", "width", "a", "b", "c", "alpha", "omega", "u", "lr"]
    row = next(line.split() for line in table if line.split()[0] == "blocks.1.v")
    assert row[1:4] == ["hidden", "linear", str(D)] and float(row[-1]) == pytest.approx(0.1 / D)
    logged = param.metrics()
    assert logged["maxp/lr/blocks.1.v"] == pytest.approx(0.1 / D) and logged["maxp/c/blocks.1.v"] == 1.0
    assert logged["maxp/step"] == 0.0 and math.isfinite(logged["maxp/u/head"])
    assert "TinyGPT, 10 layers" in repr(param)


def test_first_release_api_refuses_models_with_layers_it_cannot_place() -> None:
    model = CNN()
    with pytest.raises(MaxPError, match=r"'stem \(Conv2d\)', 'conv \(Conv2d\)'\], whose roles it cannot"):
        initialize_abc_weights(model, parametrization="mup")
