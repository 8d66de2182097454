"""``trace_pm_dag``: the published graph of a model's ParametrizedModule layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxp_core import MaxPError
from maxp_core.compat.dag import MergeType, OpGraph
from maxp_core.compat.solver import find_c
from maxp_torch import Parametrization, ParametrizedModule
from maxp_torch.compat.dag import trace_pm_dag

WIDTH = 32
PRESETS = {"full": (1.0, 0.5, 1.0), "no": (0.5, 0.5, 0.5)}


def layer(n_in: int, n_out: int, layer_type: str, **exponents: float) -> ParametrizedModule:
    return ParametrizedModule(
        nn.Linear(n_in, n_out, bias=False), width_dim=WIDTH, layer_type=layer_type, **exponents
    )


class ResidualMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = layer(8, WIDTH, "embedding")
        self.fc = layer(WIDTH, WIDTH, "hidden")
        self.head = layer(WIDTH, 3, "readout")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + F.relu(self.fc(h))
        return self.head(h)


class GatedMLP(nn.Module):
    def __init__(self, **up_exponents: float) -> None:
        super().__init__()
        self.emb = layer(8, WIDTH, "embedding")
        self.gate = layer(WIDTH, WIDTH, "hidden")
        self.up = layer(WIDTH, WIDTH, "hidden", **up_exponents)
        self.down = layer(WIDTH, WIDTH, "hidden")
        self.head = layer(WIDTH, 3, "readout")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.down(F.silu(self.gate(h)) * self.up(h))
        return self.head(h)


def sample() -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(0))


def edges(graph: OpGraph) -> dict[str, tuple[list[str], list[str], MergeType]]:
    return {n.name: (n.predecessors, n.successors, n.merge_type) for n in graph.nodes.values()}


def test_residual_mlp_graph() -> None:
    graph = trace_pm_dag(ResidualMLP(), sample())
    graph.validate()
    assert edges(graph) == {
        "emb": ([], ["fc", "_add_0"], MergeType.MIN),
        "fc": (["emb"], ["_add_0"], MergeType.MIN),
        "_add_0": (["emb", "fc"], ["head"], MergeType.MIN),
        "head": (["_add_0"], [], MergeType.MIN),
    }
    nodes = graph.nodes
    assert [(n.a, n.b, n.layer_type, n.has_weight, n.width_dim) for n in nodes.values()] == [
        (-0.5, 0.5, "embedding", True, WIDTH),
        (0.0, 0.5, "hidden", True, WIDTH),
        (0.0, 0.5, "merge", False, 0),
        (0.5, 0.5, "readout", True, WIDTH),
    ]
    assert all((n.alpha, n.omega, n.u) == PRESETS["full"] for n in nodes.values())


def test_gated_mlp_graph() -> None:
    graph = trace_pm_dag(GatedMLP(), sample())
    assert edges(graph) == {
        "emb": ([], ["gate", "up", "_add_1"], MergeType.MIN),
        "gate": (["emb"], ["_mul_0"], MergeType.MIN),
        "up": (["emb"], ["_mul_0"], MergeType.MIN),
        "_mul_0": (["gate", "up"], ["down"], MergeType.SUM),
        "down": (["_mul_0"], ["_add_1"], MergeType.MIN),
        "_add_1": (["emb", "down"], ["head"], MergeType.MIN),
        "head": (["_add_1"], [], MergeType.MIN),
    }
    assert graph.nodes["_mul_0"].layer_type == "merge"
    assert graph.nodes["_mul_0"].zero_inputs == []


def test_exponents_follow_ab_then_the_module() -> None:
    model = GatedMLP(a=0.25, b=0.25)
    graph = trace_pm_dag(model, sample(), ab={"hidden": (0.5, 0.0)})
    assert (graph.nodes["gate"].a, graph.nodes["gate"].b) == (0.5, 0.0)
    assert (graph.nodes["up"].a, graph.nodes["up"].b) == (0.25, 0.25)
    assert (graph.nodes["emb"].a, graph.nodes["emb"].b) == (-0.5, 0.5)
    sp = trace_pm_dag(model, sample(), parametrization="sp")
    assert (sp.nodes["emb"].a, sp.nodes["emb"].b) == (0.0, 0.0)


def with_alignment(graph: OpGraph, preset: str) -> OpGraph:
    for node in graph.nodes.values():
        node.alpha, node.omega, node.u = PRESETS[preset]
    return graph


@pytest.mark.parametrize("make", [ResidualMLP, GatedMLP, lambda: GatedMLP(b=math.inf)])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("alignment", ["full", "no"])
def test_find_c_of_the_trace_equals_parametrization(
    make: type[nn.Module], optimizer: str, alignment: str
) -> None:
    torch.manual_seed(0)
    model = make()
    x = sample()
    param = Parametrization(model, optimizer_type=optimizer, alignment=alignment, sample_input=x)
    graph = with_alignment(trace_pm_dag(model, x), alignment)
    result = find_c(graph, optimizer)
    assert [result[name][0] for name in param.names] == pytest.approx(list(param.c), abs=1e-9)


def test_a_zero_initialised_factor_is_marked() -> None:
    torch.manual_seed(0)
    model = GatedMLP(b=math.inf)
    Parametrization(model, sample_input=sample())  # initialises `up` at zero
    graph = trace_pm_dag(model, sample())
    assert graph.nodes["_mul_0"].zero_inputs == ["up"]
    assert graph.nodes["up"].b == math.inf


def test_tracing_leaves_the_model_as_it_was() -> None:
    model = GatedMLP()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = [m.scale for m in model.modules() if isinstance(m, ParametrizedModule)]
    rng = torch.get_rng_state()
    trace_pm_dag(model, sample())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scales == [m.scale for m in model.modules() if isinstance(m, ParametrizedModule)]
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(m._tracer is None for m in model.modules() if isinstance(m, ParametrizedModule))


def test_errors() -> None:
    with pytest.raises(MaxPError, match="no ParametrizedModule in Sequential"):
        trace_pm_dag(nn.Sequential(nn.Linear(8, 8)), sample())
    with pytest.raises(MaxPError, match="unknown key 'attention'"):
        trace_pm_dag(ResidualMLP(), sample(), ab={"attention": (1.0, 0.0)})
    with pytest.raises(MaxPError, match=r"ab\['hidden'\] must be a pair"):
        trace_pm_dag(ResidualMLP(), sample(), ab={"hidden": 0.5})  # type: ignore[dict-item]
