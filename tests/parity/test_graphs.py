"""The same architectures give the same graph and the same c in JAX and in PyTorch."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import maxp_jax
from examples.flax_models import FlaxBlock, FlaxGPT, flax_to_torch_name, gpt_rules
from examples.torch_models import GPT, Block
from maxp_core import OpGraph, StabilityLP
from maxp_core.render import canonical_form
from maxp_torch import Parametrization
from tests.torch.test_trace import expected_gpt, pm

D, VOCAB, CTX = 32, 50, 16


def flax_spec(blocks: int, rules=None):
    model = FlaxGPT(d=D, blocks=blocks, vocab=VOCAB, ctx=CTX)
    ids = jnp.zeros((2, CTX), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    spec = maxp_jax.MaxPSpec(
        params, rules or gpt_rules(), multipliers="explicit", apply_fn=model.apply, sample_input=ids
    )
    return model, params, spec


def assert_same_graph(graph: OpGraph, torch_graph: OpGraph, rename) -> None:
    form = canonical_form(graph, rename)
    assert len(form) == len(graph)  # no two nodes share a canonical name
    assert form == canonical_form(torch_graph, lambda n: n)


def assert_same_c(spec: maxp_jax.MaxPSpec, param: Parametrization, seed: int) -> None:
    """Same c at the preset and at random per-layer alignments."""
    names = param.get_layer_names()
    np.testing.assert_allclose(
        spec.c, [param.c[names.index(flax_to_torch_name(layer.name))] for layer in spec.layers], atol=1e-9
    )
    rng = np.random.default_rng(seed)
    per_layer = {n: rng.uniform([0.3, 0.3, 0.3], [1.0, 0.5, 1.0]) for n in names}
    kw_t = {f: {n: v[j] for n, v in per_layer.items()} for j, f in enumerate(("alpha", "omega", "u"))}
    c_t = StabilityLP(param.graph).solve(**kw_t).c
    alignment = np.array([per_layer[flax_to_torch_name(layer.name)] for layer in spec.layers])
    np.testing.assert_allclose(
        spec.solve(alignment), [c_t[flax_to_torch_name(layer.name)] for layer in spec.layers], atol=1e-9
    )


@pytest.mark.parametrize("blocks", [1, 2])
def test_gpt_same_graph_and_c_in_both_frameworks(blocks: int) -> None:
    _, _, spec = flax_spec(blocks)
    param = Parametrization(GPT(blocks=blocks), sample_input=torch.randint(0, VOCAB, (2, CTX)))
    assert_same_graph(spec.graph, param.graph, flax_to_torch_name)
    # And the torch graph is the hand-written one (tests/torch/test_trace.py).
    assert [(n.name, n.preds, n.merge, n.has_weight) for n in param.graph.nodes] == expected_gpt(blocks)
    # Attention scores contract q and k over the width; no factor starts at zero.
    for graph, rename in ((spec.graph, flax_to_torch_name), (param.graph, lambda n: n)):
        assert {rename(n.name) for n in graph.nodes if n.contraction} == {
            f"blocks.{b}.scores" for b in range(blocks)
        }
        assert all(n.zero_inputs == () for n in graph.nodes)
    assert_same_c(spec, param, blocks)


@pytest.mark.parametrize("tie_rule", ["preset", "later"])
def test_each_tie_rule_gives_the_same_c_in_both_frameworks(tie_rule: str) -> None:
    """Re-solves with measured-like alignments pick the same point of a tied optimum."""
    model = FlaxGPT(d=D, blocks=1, vocab=VOCAB, ctx=CTX)
    ids = jnp.zeros((2, CTX), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    spec = maxp_jax.MaxPSpec(params, gpt_rules(), apply_fn=model.apply, sample_input=ids, tie_rule=tie_rule)
    sample = torch.randint(0, VOCAB, (2, CTX))
    param = Parametrization(GPT(blocks=1), sample_input=sample, tie_rule=tie_rule)
    other = Parametrization(
        GPT(blocks=1), sample_input=sample, tie_rule={"preset": "later"}.get(tie_rule, "preset")
    )
    rows = {flax_to_torch_name(layer.name): k for k, layer in enumerate(spec.layers)}
    rng = np.random.default_rng(3)
    differ = 0
    for _ in range(8):
        per_layer = {n: rng.uniform([0.4, 0.45, 0.4], [1.0, 0.6, 1.0]) for n in rows}
        numbers = {f: {n: v[j] for n, v in per_layer.items()} for j, f in enumerate(("alpha", "omega", "u"))}
        c_torch, c_other = param.lp.solve(**numbers).c, other.lp.solve(**numbers).c
        c_jax = spec.solve(np.array([per_layer[n] for n in rows]))
        np.testing.assert_allclose(c_jax, [c_torch[n] for n in rows], atol=1e-9)
        differ += max(abs(c_torch[n] - c_other[n]) for n in rows) > 1e-6
    assert differ > 0  # the draws meet ties, where the rule decides


def test_zero_initialised_v_same_graph_and_c_in_both_frameworks() -> None:
    blocks = 2
    rules = [
        maxp_jax.Rule("params/(tok|pos)/embedding", "embedding", layout="embedding"),
        maxp_jax.Rule(r"params/blocks_\d+/(q|k|o|gate|up|down)/kernel", "hidden"),
        maxp_jax.Rule(r"params/blocks_\d+/v/kernel", "hidden", b=math.inf),
        maxp_jax.Rule("params/head/kernel", "readout"),
    ]
    _, params, spec = flax_spec(blocks, rules)
    assert float(jnp.abs(params["params"]["blocks_0"]["v"]["kernel"]).max()) > 0  # flax's own init
    model = GPT(blocks=blocks, zero_init=("v",))
    param = Parametrization(model, sample_input=torch.randint(0, VOCAB, (2, CTX)))
    assert not model.blocks[0].v.weight.detach().any()
    assert_same_graph(spec.graph, param.graph, flax_to_torch_name)
    assert [(n.name, n.preds, n.merge, n.has_weight) for n in param.graph.nodes] == expected_gpt(blocks)
    # attn @ v is mul2 and mul6 in both traces (tests/torch/test_trace.py::expected_gpt).
    for graph, v in ((spec.graph, "params/blocks_{}/v"), (param.graph, "blocks.{}.v")):
        zero = {n.name: n.zero_inputs for n in graph.nodes if n.zero_inputs}
        assert zero == {"mul2": (v.format(0),), "mul6": (v.format(1),)}
        assert [graph.node(v.format(b)).b for b in range(blocks)] == [math.inf] * blocks
    assert_same_c(spec, param, 3)


def train_dynamic(apply, params, spec, sample, loss_of_output, steps=20):
    """Adam + dynamic maxP (warm-up 2, every 3 steps) for ``steps`` steps; the final maxP state."""
    dyn = maxp_jax.DynamicAlignment(apply, sample, warmup_steps=2, solve_interval=3, sample_size=16)
    tx = optax.chain(
        optax.scale_by_adam(), maxp_jax.scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.01)
    )

    @jax.jit
    def step(p, s):
        grads = jax.grad(lambda q: loss_of_output(apply(q, sample)))(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return maxp_jax.find_maxp_state(state)


class TorchViT(torch.nn.Module):
    def __init__(self, blocks: int = 2, patch: int = 4, image: int = 16):
        super().__init__()
        self.patch = pm(torch.nn.Conv2d(3, D, patch, stride=patch), D, "embedding")
        self.pos = torch.nn.Parameter(torch.zeros((image // patch) ** 2, D))
        self.blocks = torch.nn.ModuleList(Block(D) for _ in range(blocks))
        self.ln = torch.nn.LayerNorm(D)
        self.head = pm(torch.nn.Linear(D, 10), D, "readout")

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(1))


class FlaxViT(nn.Module):
    blocks: int = 2

    @nn.compact
    def __call__(self, images):  # NHWC
        x = nn.Conv(D, (4, 4), strides=(4, 4), padding="VALID", name="patch")(images)
        x = x.reshape(x.shape[0], -1, D) + self.param("pos", nn.initializers.zeros, (16, D))
        for i in range(self.blocks):
            x = FlaxBlock(i, D, name=f"blocks_{i}")(x)
        return nn.Dense(10, name="head")(nn.LayerNorm()(x).mean(1))


def test_vit_same_graph_and_c_in_both_frameworks() -> None:
    model = FlaxViT()
    images = jnp.zeros((2, 16, 16, 3))
    params = model.init(jax.random.key(0), images)
    rules = [
        maxp_jax.Rule("params/patch/.*", "embedding"),
        maxp_jax.Rule(r"params/blocks_\d+/(q|k|v|o|gate|up|down)/kernel", "hidden"),
        maxp_jax.Rule("params/head/.*", "readout"),
    ]
    spec = maxp_jax.MaxPSpec(params, rules, multipliers="explicit", apply_fn=model.apply, sample_input=images)
    param = Parametrization(TorchViT(), sample_input=torch.zeros(2, 3, 16, 16))
    assert_same_graph(spec.graph, param.graph, flax_to_torch_name)
    assert spec.graph.node("params/blocks_0/q").preds == ("params/patch",)  # the pos add has no layer
    names = param.get_layer_names()
    np.testing.assert_allclose(
        spec.c, [param.c[names.index(flax_to_torch_name(layer.name))] for layer in spec.layers], atol=1e-9
    )


class TorchResMLP(torch.nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        from tests.torch.test_trace import pm

        self.inp = pm(torch.nn.Linear(8, D), D, "embedding")
        self.hidden = torch.nn.ModuleList(pm(torch.nn.Linear(D, D), D, "hidden") for _ in range(depth))
        self.out = pm(torch.nn.Linear(D, 3), D, "readout")

    def forward(self, x):
        h = self.inp(x)
        for layer in self.hidden:
            h = h + torch.relu(layer(h))
        return self.out(h)


class FlaxResMLP(nn.Module):
    depth: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(D, name="inp")(x)
        for i in range(self.depth):
            h = h + jax.nn.relu(nn.Dense(D, name=f"hidden_{i}")(h))
        return nn.Dense(3, name="out")(h)


def test_residual_mlp_same_graph_and_c_in_both_frameworks() -> None:
    model = FlaxResMLP()
    x = jnp.ones((2, 8))
    params = model.init(jax.random.key(0), x)
    rules = [
        maxp_jax.Rule("params/inp/.*", "embedding"),
        maxp_jax.Rule(r"params/hidden_\d+/.*", "hidden"),
        maxp_jax.Rule("params/out/.*", "readout"),
    ]
    spec = maxp_jax.MaxPSpec(params, rules, multipliers="explicit", apply_fn=model.apply, sample_input=x)
    param = Parametrization(TorchResMLP(), sample_input=torch.ones(2, 8))

    def rename(name: str) -> str:
        return name.removeprefix("params/").replace("hidden_", "hidden.")

    assert_same_graph(spec.graph, param.graph, rename)
    rng = np.random.default_rng(7)
    alignment = rng.uniform([0.3, 0.3, 0.3], [1.0, 0.5, 1.0], size=(len(spec.layers), 3))
    names = [rename(layer.name) for layer in spec.layers]
    c_t = (
        StabilityLP(param.graph)
        .solve(
            **{
                f: dict(zip(names, alignment[:, j], strict=True))
                for j, f in enumerate(("alpha", "omega", "u"))
            }
        )
        .c
    )
    np.testing.assert_allclose(spec.solve(alignment), [c_t[n] for n in names], atol=1e-9)


def test_dynamic_steps_on_the_vit_in_both_frameworks() -> None:
    model = FlaxViT()
    images = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    labels = jnp.arange(4)
    params = model.init(jax.random.key(0), images)
    rules = [
        maxp_jax.Rule("params/patch/.*", "embedding"),
        maxp_jax.Rule(r"params/blocks_\d+/(q|k|v|o|gate|up|down)/kernel", "hidden"),
        maxp_jax.Rule("params/head/.*", "readout"),
    ]
    spec = maxp_jax.MaxPSpec(params, rules, apply_fn=model.apply, sample_input=images)

    def class_loss(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    assert int(train_dynamic(model.apply, params, spec, images, class_loss).solves) == 5

    vit = TorchViT()
    torch_images = torch.randn(4, 3, 16, 16)
    param = Parametrization(vit, sample_input=torch_images, warmup_steps=2, solve_interval=3, sample_size=16)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(torch_images)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(vit(torch_images), torch.arange(4)).backward()
        optimizer.step()
        param.step(torch_images, optimizer)
    assert param.solves == 6 and param.failures == 0
