"""Graph discovery from a sample forward pass in PyTorch, against hand-written graphs."""

import pytest
import torch
from torch import nn

from examples.torch_models import GPT
from maxp_core import MaxPError, StabilityLP
from maxp_torch import Parametrization, ParametrizedModule


def pm(module, width, kind, **kw):
    return ParametrizedModule(module, width_dim=width, layer_type=kind, **kw)


def expected_gpt(blocks: int) -> list[tuple[str, tuple[str, ...], str, bool]]:
    """(name, preds, merge, has_weight) in call order, merges numbered as they appear."""
    nodes = [("tok", (), "min", True), ("pos", (), "min", True), ("add1", ("tok", "pos"), "min", False)]
    stream, k = "add1", 1
    for b in range(blocks):
        p = f"blocks.{b}."
        nodes += [(p + "q", (stream,), "min", True), (p + "k", (stream,), "min", True)]
        nodes += [(p + "scores", (p + "q", p + "k"), "product", False), (p + "v", (stream,), "min", True)]
        nodes += [
            (f"mul{k + 1}", (p + "scores", p + "v"), "product", False),
            (p + "o", (f"mul{k + 1}",), "min", True),
        ]
        nodes += [(f"add{k + 2}", (stream, p + "o"), "min", False)]
        stream = f"add{k + 2}"
        nodes += [(p + "gate", (stream,), "min", True), (p + "up", (stream,), "min", True)]
        nodes += [
            (f"mul{k + 3}", (p + "gate", p + "up"), "product", False),
            (p + "down", (f"mul{k + 3}",), "min", True),
        ]
        nodes += [(f"add{k + 4}", (stream, p + "down"), "min", False)]
        stream, k = f"add{k + 4}", k + 4
    return [*nodes, ("head", (stream,), "min", True)]


def test_gpt_graph_matches_the_hand_written_one() -> None:
    model = GPT(blocks=2)
    ids = torch.randint(0, 50, (2, 16))
    param = Parametrization(model, sample_input=ids)
    got = [(n.name, n.preds, n.merge, n.has_weight) for n in param.graph.nodes]
    assert got == expected_gpt(2)
    assert param.graph.node("blocks.0.scores").a == 1.0
    sol = StabilityLP(param.graph).solve()
    assert set(sol.c) == set(param.get_layer_names())


def test_residual_stream_grows_linearly_with_depth() -> None:
    sizes = {}
    for blocks in (2, 4, 8):
        param = Parametrization(GPT(blocks=blocks), sample_input=torch.randint(0, 50, (1, 16)))
        sizes[blocks] = len(param.graph)
        assert max(len(n.preds) for n in param.graph.nodes) == 2
    assert sizes[8] - sizes[4] == 2 * (sizes[4] - sizes[2])


def test_dynamic_steps_on_the_traced_gpt() -> None:
    torch.manual_seed(0)
    model = GPT(blocks=2)
    ids = torch.randint(0, 50, (4, 16))
    param = Parametrization(
        model, sample_input=ids, lr_prefactor=0.01, warmup_steps=2, solve_interval=3, sample_size=16
    )
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(ids)
    for _ in range(20):
        optimizer.zero_grad()
        logits = model(ids)
        nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1)).backward()
        optimizer.step()
        param.step(ids, optimizer)
    assert param.solves == 6 and param.failures == 0
    alpha, _, _ = param.get_alignment()
    assert all(0.0 <= a <= 1.0 for a in alpha)


def test_residual_mlp_graph() -> None:
    class ResMLP(nn.Module):
        def __init__(self, d=32, depth=3):
            super().__init__()
            self.inp = pm(nn.Linear(8, d), d, "embedding")
            self.hidden = nn.ModuleList(pm(nn.Linear(d, d), d, "hidden") for _ in range(depth))
            self.out = pm(nn.Linear(d, 3), d, "readout")

        def forward(self, x):
            h = self.inp(x)
            for layer in self.hidden:
                h = h + torch.relu(layer(h))
            return self.out(h)

    param = Parametrization(ResMLP(), sample_input=torch.randn(4, 8))
    got = [(n.name, n.preds, n.merge) for n in param.graph.nodes]
    assert got == [
        ("inp", (), "min"),
        ("hidden.0", ("inp",), "min"),
        ("add1", ("inp", "hidden.0"), "min"),
        ("hidden.1", ("add1",), "min"),
        ("add2", ("add1", "hidden.1"), "min"),
        ("hidden.2", ("add2",), "min"),
        ("add3", ("add2", "hidden.2"), "min"),
        ("out", ("add3",), "min"),
    ]


def test_unreached_layer_is_an_error() -> None:
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = pm(nn.Linear(4, 8), 8, "embedding")
            self.unused = pm(nn.Linear(8, 8), 8, "hidden")
            self.b = pm(nn.Linear(8, 2), 8, "readout")

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(MaxPError, match=r"never called \['unused'\]"):
        Parametrization(Skips(), sample_input=torch.randn(2, 4))
