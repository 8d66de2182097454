"""Rules read from a model's params at two widths give the spec the hand-written rules give:
the same layers (names, roles, widths, fan-ins, leaves), the same c and the same factors."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples.flax_llama import Llama, llama_rules
from examples.flax_models import FlaxGPT, gpt_rules
from maxp_core import MaxPError, MaxPWarning
from maxp_jax.spec import MaxPSpec, Rule
from maxp_jax.width_rules import format_rules, rules_from_widths
from tests.jax.models import MLP, mlp_rules

eqx = pytest.importorskip("equinox")

IDS = jax.random.randint(jax.random.key(3), (2, 8), 0, 20)
X = jnp.ones((2, 16))


def abstract(model: nn.Module, x: jax.Array):
    """The params of a flax linen model as shapes (no arrays drawn)."""
    return jax.eval_shape(model.init, jax.random.key(0), x)


def layers(spec: MaxPSpec) -> list[tuple]:
    return [
        (layer.name, layer.role, layer.width, layer.fan_in, layer.shape, layer.weight_path, layer.extra_paths)
        for layer in spec.layers
    ]


def assert_same_spec(params, inferred: list[Rule], hand: list[Rule], **spec_kwargs) -> MaxPSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxPWarning)  # a tied table's warning: the same for both
        got, want = MaxPSpec(params, inferred, **spec_kwargs), MaxPSpec(params, hand, **spec_kwargs)
    assert layers(got) == layers(want)
    np.testing.assert_allclose(got.c, want.c, atol=1e-12)
    np.testing.assert_allclose(got.factors(), want.factors(), rtol=1e-12)
    assert got.describe() == want.describe()
    return got


@pytest.mark.parametrize("traced", [False, True])
def test_a_flax_mlp(traced: bool) -> None:
    small, large = MLP(width=16, depth=5), MLP(width=32, depth=5)
    trace = {"apply_fn": large.apply, "sample_input": X} if traced else {}
    rules = rules_from_widths(abstract(small, X), abstract(large, X), **trace)
    assert format_rules(rules) == "\n".join(
        [
            'Rule(r"params/Dense_0/(bias|kernel)", "embedding")',
            'Rule(r"params/Dense_[1-3]/(bias|kernel)", "hidden")',
            'Rule(r"params/Dense_4/(bias|kernel)", "readout")',
        ]
    )
    spec = assert_same_spec(abstract(large, X), rules, mlp_rules(5), **trace)
    assert [layer.role.value for layer in spec.layers] == [
        "embedding",
        "hidden",
        "hidden",
        "hidden",
        "readout",
    ]


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("tied", [False, True])
def test_the_llama_stacked_or_unrolled_tied_or_not(scan: bool, tied: bool) -> None:
    small = Llama(vocab=48, d=16, layers=2, scan=scan, tied=tied)
    large = Llama(vocab=48, d=32, layers=2, scan=scan, tied=tied)
    params = abstract(large, IDS)
    rules = rules_from_widths(abstract(small, IDS), params, apply_fn=large.apply, sample_input=IDS)
    blocks = "blocks" if scan else r"blocks_\d+"
    expected = [
        'Rule(r"params/embed/embedding", "embedding", layout="embedding")',
        f'Rule(r"params/{blocks}/(down|gate|k|o|q|up|v)/kernel", "hidden"{", stacked=True" if scan else ""})',
        *([] if tied else ['Rule(r"params/head/kernel", "readout")']),
    ]
    assert format_rules(rules) == "\n".join(expected)
    hand = llama_rules()[:2] if tied else llama_rules()
    spec = assert_same_spec(params, rules, hand, apply_fn=large.apply, sample_input=IDS)
    gate = next(layer for layer in spec.layers if layer.weight_path.endswith("gate/kernel"))
    assert (gate.width, gate.shape) == (32, (32, 64))
    readouts = [layer.name for layer in spec.layers if layer.role.value == "readout"]
    assert readouts == ["params/embed.readout" if tied else "params/head"]


def test_a_flax_gpt() -> None:
    small, large = FlaxGPT(d=16, blocks=2, vocab=20), FlaxGPT(d=32, blocks=2, vocab=20)
    params = abstract(large, IDS)
    rules = rules_from_widths(abstract(small, IDS), params, apply_fn=large.apply, sample_input=IDS)
    assert format_rules(rules) == "\n".join(
        [
            'Rule(r"params/(pos|tok)/embedding", "embedding", layout="embedding")',
            r'Rule(r"params/blocks_\d+/(down|gate|k|o|q|up|v)/kernel", "hidden")',
            'Rule(r"params/head/kernel", "readout")',
        ]
    )
    assert_same_spec(params, rules, gpt_rules(), apply_fn=large.apply, sample_input=IDS)
    assert rules_from_widths(abstract(small, IDS), params) == rules  # the leaf names say as much


class NnxBlock(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.down = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.down(jax.nn.relu(self.up(h)))


class NnxNet(nnx.Module):
    """An embedding, two blocks made by ``nnx.vmap`` and run by ``nnx.scan``, a norm, a readout."""

    def __init__(self, d: int, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(20, d, rngs=rngs)

        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs) -> NnxBlock:
            return NnxBlock(d, rngs)

        self.blocks = create(rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.out = nnx.Linear(d, 5, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(h: jax.Array, block: NnxBlock) -> jax.Array:
            return block(h)

        return self.out(self.norm(run(self.embed(ids), self.blocks)))


def test_an_nnx_model_with_scanned_blocks() -> None:
    small = nnx.state(NnxNet(8, nnx.Rngs(0)), nnx.Param)
    graphdef, params = nnx.split(NnxNet(16, nnx.Rngs(0)), nnx.Param)

    def apply(p, ids):
        return nnx.merge(graphdef, p)(ids)

    rules = rules_from_widths(small, params, apply_fn=apply, sample_input=IDS)
    assert format_rules(rules) == "\n".join(
        [
            'Rule(r"embed/embedding", "embedding", layout="embedding")',
            'Rule(r"blocks/(down|up)/(bias|kernel)", "hidden", stacked=True)',
            'Rule(r"out/(bias|kernel)", "readout")',
        ]
    )
    hand = [
        Rule("embed/embedding", "embedding", layout="embedding"),
        Rule("blocks/(up|down)/.*", "hidden"),
        Rule("out/.*", "readout"),
    ]
    spec = assert_same_spec(params, rules, hand, apply_fn=apply, sample_input=IDS)
    assert spec.layers[1].extra_paths == ("blocks/down/bias/value",)  # the stacked bias follows its slice
    with pytest.raises(MaxPError, match=r"blocks/down/bias/value \(shape \(2, 8\) at the small width"):
        rules_from_widths(small, params)  # without the scan, a stacked (2, d) bias is a mystery


class EqxNet(eqx.Module):
    """An equinox table, two linear layers and a readout, applied to one token id."""

    embed: eqx.nn.Embedding
    layers: list
    head: eqx.nn.Linear

    def __init__(self, d: int, key: jax.Array) -> None:
        keys = jax.random.split(key, 4)
        self.embed = eqx.nn.Embedding(10, d, key=keys[0])
        self.layers = [eqx.nn.Linear(d, d, key=keys[1]), eqx.nn.Linear(d, 2 * d, key=keys[2])]
        self.head = eqx.nn.Linear(2 * d, 5, key=keys[3])

    def __call__(self, token: jax.Array) -> jax.Array:
        h = self.embed(token)
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.head(h)


EQX_RULES = [
    Rule("embed/weight", "embedding", layout="embedding"),
    Rule(r"layers/\d+/.*", "hidden", layout="torch"),
    Rule("head/.*", "readout", layout="torch"),
]
TOKENS = jnp.array([1, 2, 3])


def eqx_params(d: int):
    return eqx.partition(EqxNet(d, jax.random.key(0)), eqx.is_array)


def eqx_apply(static):
    return lambda p, tokens: jax.vmap(eqx.combine(p, static))(tokens)


@pytest.mark.parametrize("traced", [False, True])
def test_an_equinox_model_with_a_table(traced: bool) -> None:
    (small, _), (params, static) = eqx_params(8), eqx_params(16)
    trace = {"apply_fn": eqx_apply(static), "sample_input": TOKENS}
    rules = rules_from_widths(small, params, **(trace if traced else {}))
    assert format_rules(rules) == "\n".join(
        [
            'Rule(r"embed/weight", "embedding", layout="embedding")',
            r'Rule(r"layers/\d+/(bias|weight)", "hidden", layout="torch")',
            'Rule(r"head/(bias|weight)", "readout", layout="torch")',
        ]
    )
    spec = assert_same_spec(params, rules, EQX_RULES, **trace)
    assert [(layer.width, layer.fan_in) for layer in spec.layers] == [(16, 10), (16, 16), (16, 16), (32, 32)]


def test_an_equinox_mlp() -> None:
    def mlp(d: int):
        return eqx.filter(eqx.nn.MLP(4, 3, d, depth=4, key=jax.random.key(0)), eqx.is_array)

    rules = rules_from_widths(mlp(8), mlp(16))
    assert format_rules(rules) == "\n".join(
        [
            'Rule(r"layers/0/(bias|weight)", "embedding", layout="torch")',
            'Rule(r"layers/[1-3]/(bias|weight)", "hidden", layout="torch")',
            'Rule(r"layers/4/(bias|weight)", "readout", layout="torch")',
        ]
    )
    hand = [
        Rule("layers/0/.*", "embedding", layout="torch"),
        Rule("layers/[123]/.*", "hidden", layout="torch"),
        Rule("layers/4/.*", "readout", layout="torch"),
    ]
    assert_same_spec(mlp(16), rules, hand)


def torch_style(params) -> dict:
    """An :class:`EqxNet`'s arrays as a torch-style state dict: every table and matrix a ``weight``."""
    layer = lambda m: {"weight": m.weight, "bias": m.bias}  # noqa: E731
    return {
        "embed": {"weight": params.embed.weight},
        "layers": [layer(m) for m in params.layers],
        "head": layer(params.head),
    }


def torch_style_apply(p, tokens):
    h = p["embed"]["weight"][tokens]
    for layer in p["layers"]:
        h = jax.nn.relu(h @ layer["weight"].T + layer["bias"])
    return h @ p["head"]["weight"].T + p["head"]["bias"]


def test_a_weight_that_may_be_a_table_or_a_readout_is_read_from_its_use() -> None:
    small, large = torch_style(eqx_params(8)[0]), torch_style(eqx_params(16)[0])
    with pytest.raises(
        MaxPError, match=r"embed/weight \(shape \(10, 8\) at the small width, \(10, 16\) at the large"
    ):
        rules_from_widths(small, large)
    rules = rules_from_widths(small, large, apply_fn=torch_style_apply, sample_input=TOKENS)
    assert (rules[0].pattern, rules[0].role, rules[0].layout) == ("embed/weight", "embedding", "embedding")
    assert_same_spec(large, rules, EQX_RULES, apply_fn=torch_style_apply, sample_input=TOKENS)


def test_names_that_say_nothing_are_read_from_the_products() -> None:
    def params(d: int) -> dict:
        return {"w_in": jnp.zeros((4, d)), "w_h": jnp.zeros((d, 2 * d)), "w_out": jnp.zeros((3, 2 * d))}

    def apply(p, x):
        return jnp.tanh(jnp.tanh(x @ p["w_in"]) @ p["w_h"]) @ p["w_out"].T

    with pytest.raises(
        MaxPError, match=r"w_h \(shape \(8, 16\) at the small width, \(16, 32\) at the large\)"
    ):
        rules_from_widths(params(8), params(16))
    x = jnp.ones((2, 4))
    rules = rules_from_widths(params(8), params(16), apply_fn=apply, sample_input=x)
    assert [(r.pattern, r.role, r.layout) for r in rules] == [
        ("w_in", "embedding", "dense"),
        ("w_h", "hidden", "dense"),
        ("w_out", "readout", "torch"),
    ]
    hand = [Rule("w_in", "embedding"), Rule("w_h", "hidden"), Rule("w_out", "readout", layout="torch")]
    assert_same_spec(params(16), rules, hand, apply_fn=apply, sample_input=x)


def test_rules_given_for_what_the_widths_cannot_tell_are_kept() -> None:
    def params(d: int) -> dict:
        layer = lambda shape, w="kernel": {w: jnp.zeros(shape), "bias": jnp.zeros(shape[-1])}  # noqa: E731
        return {"inp": layer((4, d)), "mid": layer((d, d), w="w"), "out": layer((d, 3))}

    with pytest.raises(
        MaxPError, match=r"mid/w \(shape \(8, 8\) at the small width, \(16, 16\) at the large\)"
    ):
        rules_from_widths(params(8), params(16))
    mine = Rule("mid/.*", "hidden", c=1.0)
    rules = rules_from_widths(params(8), params(16), rules=[mine])
    assert [(r.pattern, r.role) for r in rules] == [
        ("inp/(bias|kernel)", "embedding"),
        ("mid/.*", "hidden"),
        ("out/(bias|kernel)", "readout"),
    ]
    assert rules[1] is mine
    MaxPSpec(params(16), rules)  # a spec that builds


class Bottleneck(nn.Module):
    """An MLP whose third layer narrows to a fixed 8 between growing layers."""

    d: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for features in (self.d, self.d, 8, self.d):
            x = nn.relu(nn.Dense(features)(x))
        return nn.Dense(3)(x)


def test_a_fixed_size_hidden_dimension_asks_for_a_rule() -> None:
    small, large = Bottleneck(16), Bottleneck(32)
    ps, pl = abstract(small, X), abstract(large, X)
    trace = {"apply_fn": large.apply, "sample_input": X}
    with pytest.raises(
        MaxPError, match=r"params/Dense_2/kernel \(shape \(16, 8\) .* its output reaches params/Dense_3"
    ):
        rules_from_widths(ps, pl, **trace)
    with pytest.raises(
        MaxPError, match=r"params/Dense_2/kernel .*params/Dense_4/kernel .* all look like readouts"
    ):
        rules_from_widths(ps, pl)
    narrow = Rule("params/Dense_2/.*", "hidden")
    with pytest.raises(
        MaxPError, match=r"params/Dense_3/kernel \(shape \(8, 16\) .* looks like an embedding"
    ):
        rules_from_widths(ps, pl, rules=[narrow], **trace)
    rules = rules_from_widths(ps, pl, rules=[Rule("params/Dense_[23]/.*", "hidden", width=8)], **trace)
    assert [r.pattern for r in rules] == [
        "params/Dense_0/(bias|kernel)",
        "params/Dense_[23]/.*",
        "params/Dense_1/(bias|kernel)",
        "params/Dense_4/(bias|kernel)",
    ]
    MaxPSpec(pl, rules, **trace)  # a spec that builds


def dense(*shapes: tuple[int, ...]) -> dict:
    return {"params": {f"Dense_{i}": {"kernel": jnp.zeros(s)} for i, s in enumerate(shapes)}}


def test_params_that_are_not_one_model_at_two_widths_are_refused() -> None:
    base = dense((4, 8), (8, 3))
    with pytest.raises(
        MaxPError, match=r"only in the small params: \[\], only in the large: \['params/extra'\]"
    ):
        rules_from_widths(base, {"params": {**base["params"], "extra": jnp.zeros(3)}})
    with pytest.raises(
        MaxPError, match=r"params/Dense_0/kernel: shape \(4, 16\) at the small width, \(4, 8\) at"
    ):
        rules_from_widths(dense((4, 16), (16, 3)), base)
    with pytest.raises(
        MaxPError, match=r"params/Dense_1/kernel: shape \(8, 3\) at the small width, \(8, 3, 1\)"
    ):
        rules_from_widths(base, dense((4, 8), (8, 3, 1)))
    with pytest.raises(
        MaxPError, match=r"params/Dense_0/kernel \(shape \(3, 3, 4, 8\) .*: axes \[0, 1\] grow"
    ):
        rules_from_widths(dense((3, 3, 4, 8), (8, 3)), dense((5, 5, 4, 16), (16, 3)))
    with pytest.raises(MaxPError, match=r"no leaf grows"):
        rules_from_widths(base, base)
    with pytest.raises(MaxPError, match=r"give both apply_fn and sample_input"):
        rules_from_widths(base, dense((4, 16), (16, 3)), apply_fn=lambda p, x: x)


def test_patterns_match_exactly_their_leaves() -> None:
    deep = lambda d: dense((4, d), *[(d, d)] * 10, (d, 3))  # noqa: E731
    rules = rules_from_widths(deep(8), deep(16))
    assert [r.pattern for r in rules] == [
        "params/Dense_0/kernel",
        "params/Dense_([1-9]|10)/kernel",
        "params/Dense_11/kernel",
    ]
    spec = MaxPSpec(deep(16), rules)
    assert [layer.role.value for layer in spec.layers] == ["embedding"] + ["hidden"] * 10 + ["readout"]

    def nested(d: int) -> dict:  # s1/b1 is the readout, so neither s\d+ nor s[01] may cover b1
        w = lambda shape: {"kernel": jnp.zeros(shape)}  # noqa: E731
        return {
            "in": w((3, d)),
            "s0": {"b0": w((d, d)), "b1": w((d, d))},
            "s1": {"b0": w((d, d)), "b1": w((d, 3)), "norm": {"scale": jnp.ones(d)}},
        }

    rules = rules_from_widths(nested(8), nested(16))
    assert [(r.pattern, r.role) for r in rules] == [
        ("in/kernel", "embedding"),
        ("s0/(b0|b1)/kernel", "hidden"),
        ("s1/b0/kernel", "hidden"),
        ("s1/b1/kernel", "readout"),
    ]
    index = MaxPSpec(nested(16), rules).leaf_layer_index()
    assert sorted(index) == ["in/kernel", "s0/b0/kernel", "s0/b1/kernel", "s1/b0/kernel", "s1/b1/kernel"]
