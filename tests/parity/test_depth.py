"""Depth rules (maxp_core.depth) in both adapters: every rate, init scale and branch multiplier
the rule asks for, the same in JAX and in PyTorch, and activations kept through a dense DAG."""

from __future__ import annotations

import itertools
import math
import warnings

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from examples.flax_models import FlaxGPT, flax_to_torch_name, gpt_rules
from examples.torch_models import GPT
from maxp_core import BranchScaling, ChenScaling
from maxp_jax import MaxPSpec, Rule, abc_init
from maxp_torch import Parametrization, ParametrizedModule
from tests.jax.models import MLP, mlp_rules
from tests.parity.test_graphs import CTX, VOCAB

WIDTH = 64


def torch_mlp(depth: int, in_dim: int = 16) -> nn.Sequential:
    sizes = [in_dim] + [WIDTH] * (depth - 1) + [10]
    roles = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i, role in enumerate(roles):
        layers += [ParametrizedModule(nn.Linear(sizes[i], sizes[i + 1]), width_dim=WIDTH, layer_type=role)]
        layers += [nn.ReLU()] if i < depth - 1 else []
    return nn.Sequential(*layers)


@pytest.mark.parametrize(("depth", "base"), [(8, 4), (6, 3)])
def test_chen_scales_every_rate_by_the_chain_factor_in_both_frameworks(depth: int, base: int) -> None:
    expected = (depth / base) ** -1.5
    rates = {}
    for rule in (None, ChenScaling(base=base)):
        model = MLP(WIDTH, depth)
        params = model.init(jax.random.key(0), jnp.ones((1, 16)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            param = Parametrization(torch_mlp(depth), lr_prefactor=0.1, depth=rule)
            spec = MaxPSpec(params, mlp_rules(depth), multipliers="explicit", depth=rule)
        untraced = [w for w in caught if "ChenScaling on an untraced graph" in str(w.message)]
        assert len(untraced) == (2 if rule else 0)  # a chain here, but neither adapter can know
        rates[rule is not None] = (np.array(param.get_last_lr()), 0.1 * spec.factors())
    for k in (0, 1):  # torch, jax
        np.testing.assert_allclose(rates[True][k] / rates[False][k], expected, rtol=1e-12)
    np.testing.assert_allclose(rates[True][0], rates[True][1], rtol=1e-12)


def gpt_spec(blocks: int, rule: BranchScaling | None, multipliers: str = "explicit") -> MaxPSpec:
    model = FlaxGPT(d=32, blocks=blocks, vocab=VOCAB, ctx=CTX)
    ids = jnp.zeros((2, CTX), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    return MaxPSpec(
        params, gpt_rules(), multipliers=multipliers, apply_fn=model.apply, sample_input=ids, depth=rule
    )


def test_branch_scaling_on_the_gpt_in_both_frameworks() -> None:
    """depth-muP from 2 to 4 blocks: o and down multiplied by 2^-1/2, hidden rates by 2^-1/2."""
    rule = BranchScaling(alpha=0.5, depth=4, base_depth=2)
    ids = torch.randint(0, VOCAB, (2, CTX))
    plain_model, model = GPT(blocks=4), GPT(blocks=4)
    plain = Parametrization(plain_model, lr_prefactor=0.01, sample_input=ids)
    scaled = Parametrization(model, lr_prefactor=0.01, sample_input=ids, depth=rule)
    names = scaled.get_layer_names()
    ratio = dict(zip(names, np.array(scaled.get_last_lr()) / np.array(plain.get_last_lr()), strict=True))
    for name, r in ratio.items():
        assert r == pytest.approx(2**-0.5 if name.startswith("blocks.") else 1.0), name
        m = model.get_submodule(name).scale / plain_model.get_submodule(name).scale
        assert m == pytest.approx(2**-0.5 if name.endswith((".o", ".down")) else 1.0), name
    spec, spec_scaled = gpt_spec(4, None), gpt_spec(4, rule)
    for layer, f0, f1 in zip(spec.layers, spec.factors(), spec_scaled.factors(), strict=True):
        torch_name = flax_to_torch_name(layer.name)
        assert 0.01 * f1 == pytest.approx(scaled.get_last_lr()[names.index(torch_name)], rel=1e-12)
        assert f1 / f0 == pytest.approx(ratio[torch_name], rel=1e-12)
        assert spec_scaled.multiplier(layer.name) == pytest.approx(
            model.get_submodule(torch_name).scale, rel=1e-12
        )


def test_folded_branch_multiplier_moves_into_init_and_rate() -> None:
    """With folded multipliers (the flax GPT untouched), a branch layer's init std is times m
    and its Adam rate times m: CompleteP from 1 to 4 blocks, m = 1/4."""
    rule = BranchScaling(alpha=1.0, depth=4, base_depth=1)
    folded, plain = gpt_spec(4, rule, "folded"), gpt_spec(4, None, "folded")
    for i, layer in enumerate(folded.layers):
        m = 0.25 if layer.name.endswith(("/o", "/down")) else 1.0  # CompleteP keeps hidden rates
        assert folded.init_std()[i] == pytest.approx(plain.init_std()[i] * m, rel=1e-12), layer.name
        assert folded.factors()[i] == pytest.approx(plain.factors()[i] * m, rel=1e-12), layer.name
        assert folded.multiplier(layer.name) == plain.multiplier(layer.name)


DAG_WIDTH = 512  # the ReLU mean's direction makes a width-n layer's gain vary by sqrt(2/n)


class TorchDenseDAG(nn.Module):
    """x_j = relu(sum_{i<j} W_ij x_i) over ``vertices`` vertices, a stem into x_0, a readout."""

    def __init__(self, vertices: int, in_dim: int = 16) -> None:
        super().__init__()
        self.vertices = vertices
        self.stem = ParametrizedModule(nn.Linear(in_dim, DAG_WIDTH, bias=False), DAG_WIDTH, "embedding")
        self.edges = nn.ModuleDict(
            {
                f"e{i}_{j}": ParametrizedModule(
                    nn.Linear(DAG_WIDTH, DAG_WIDTH, bias=False), DAG_WIDTH, "hidden"
                )
                for i, j in itertools.combinations(range(vertices), 2)
            }
        )
        self.head = ParametrizedModule(nn.Linear(DAG_WIDTH, 10, bias=False), DAG_WIDTH, "readout")
        self.activations: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [torch.relu(self.stem(x))]
        for j in range(1, self.vertices):
            xs.append(torch.relu(sum(self.edges[f"e{i}_{j}"](xs[i]) for i in range(j))))
        self.activations = xs
        return self.head(xs[-1])


class FlaxDenseDAG(fnn.Module):
    vertices: int

    @fnn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        xs = [fnn.relu(fnn.Dense(DAG_WIDTH, use_bias=False, name="stem")(x))]
        for j in range(1, self.vertices):
            terms = [fnn.Dense(DAG_WIDTH, use_bias=False, name=f"e{i}_{j}")(xs[i]) for i in range(j)]
            xs.append(fnn.relu(sum(terms)))
            self.sow("intermediates", f"x{j}", xs[-1])
        self.sow("intermediates", "x0", xs[0])
        return fnn.Dense(10, use_bias=False, name="head")(xs[-1])


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def test_chen_init_keeps_activations_through_a_dense_dag_in_both_frameworks() -> None:
    """Width 512, 6 vertices, He-scaled muP (std_prefactor sqrt 2): each vertex's RMS within 10%
    of the first's with the target in-degree, in PyTorch and in JAX; same stds in both."""
    vertices, batch = 6, 512
    rule = ChenScaling(base=3, init="target")
    x = torch.randn(batch, 16, generator=torch.Generator().manual_seed(0))
    model = TorchDenseDAG(vertices)
    param = Parametrization(model, std_prefactor=math.sqrt(2), sample_input=x[:8], depth=rule)
    with torch.no_grad():
        model(x)
    torch_rms = [rms(a) for a in model.activations]
    assert max(abs(r / torch_rms[0] - 1) for r in torch_rms) < 0.10, torch_rms
    for i, j in itertools.combinations(range(vertices), 2):
        weight = model.edges[f"e{i}_{j}"].weight
        assert float(weight.detach().std()) == pytest.approx(math.sqrt(2 / DAG_WIDTH / j), rel=0.05)

    net = FlaxDenseDAG(vertices)
    xj = jnp.asarray(x.numpy())
    params = net.init(jax.random.key(0), xj[:8])
    rules = [Rule(r"params/stem/.*", "embedding"), Rule(r"params/e\d_\d/.*", "hidden"),
             Rule(r"params/head/.*", "readout")]  # fmt: skip
    spec = MaxPSpec(
        params, rules, multipliers="explicit", apply_fn=net.apply, sample_input=xj[:8], depth=rule
    )
    new = abc_init(spec, params, jax.random.key(1), std_prefactor=math.sqrt(2))
    _, state = net.apply(new, xj, mutable=["intermediates"])
    jax_rms = [rms(state["intermediates"][f"x{j}"][0]) for j in range(vertices)]
    assert max(abs(r / jax_rms[0] - 1) for r in jax_rms) < 0.10, jax_rms
    torch_std = {name: param._init_std(param._group_of(k)) for k, name in enumerate(param.names)}
    for layer, std in zip(spec.layers, spec.init_std(math.sqrt(2)), strict=True):
        name = layer.name.removeprefix("params/")
        assert std == pytest.approx(torch_std[f"edges.{name}" if name[0] == "e" else name], rel=1e-12)
    factor = rule.lr_factor(spec.graph)
    assert factor == pytest.approx(rule.lr_factor(param.graph))
    assert factor < 0.5  # 16 paths of depth 3..7 against a chain of 3
