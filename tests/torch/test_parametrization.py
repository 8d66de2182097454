"""maxp_torch.Parametrization against the core LP, numpy alignments and hand-computed rates."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from maxp_core import (
    InfeasibleError,
    MaxPError,
    StabilityError,
    StabilityLP,
    alignment,
    alignment_of_layers,
    chain,
    layer_alignment,
)
from maxp_torch import Parametrization, ParametrizedModule


class MLP(nn.Module):
    def __init__(self, width=64, depth=4, in_dim=16, out=10, dtype=torch.float32, dropout=0.0, bias=True):
        super().__init__()
        sizes = [in_dim] + [width] * (depth - 1) + [out]
        types = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
        self.layers = nn.ModuleList(
            ParametrizedModule(
                nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=dtype),
                width_dim=width,
                layer_type=types[i],
            )
            for i in range(depth)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.drop(torch.relu(x))
        return x


def data(n=64, in_dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_dim, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def test_static_rates_scales_and_init() -> None:
    model = MLP(width=128, depth=4)
    param = Parametrization(model, lr_prefactor=0.1, std_prefactor=2.0)
    expected_c = list(StabilityLP(chain(4), "adam").solve().c.values())  # muP chain, full alignment
    np.testing.assert_allclose(param.c, expected_c, atol=1e-9)
    assert param.get_last_lr() == pytest.approx([0.1 * 128**-c for c in expected_c])
    assert [g["layer_name"] for g in param.param_groups] == [f"layers.{i}" for i in range(4)]
    assert param.get_layer_names() == [f"layers.{i}" for i in range(4)]
    for layer, a in zip(model.layers, [-0.5, 0.0, 0.0, 0.5], strict=True):
        assert layer.scale == pytest.approx(128**-a)
        assert float(layer.inner.weight.detach().std()) == pytest.approx(2.0 * 128**-0.5, rel=0.1)
        assert float(layer.inner.bias.detach().abs().max()) == 0.0


def test_other_parameters_get_the_base_rate() -> None:
    model = MLP(depth=3)
    model.norm = nn.LayerNorm(64)
    param = Parametrization(model, lr_prefactor=0.01)
    assert param.param_groups[-1]["layer_name"] == "_other"
    assert param.param_groups[-1]["lr"] == 0.01
    assert len(param.param_groups[-1]["params"]) == 2


def test_torch_alignment_matches_numpy_to_1e6() -> None:
    rng = np.random.default_rng(0)
    for mode in ("rms", "spectral"):
        for _ in range(5):
            z0, w0 = rng.standard_normal((12, 40)), rng.standard_normal((30, 40))
            z, w = z0 + 0.3 * rng.standard_normal((12, 40)), w0 + 0.05 * rng.standard_normal((30, 40))
            expected = layer_alignment(z0, z, w0, w, mode)
            got = layer_alignment(*(torch.tensor(v) for v in (z0, z, w0, w)), mode, xp=torch)
            np.testing.assert_allclose([float(v) for v in got], list(expected), atol=1e-6)
            assert float(alignment(torch.tensor(z), torch.tensor(w), mode, xp=torch)) == pytest.approx(
                alignment(z, w, mode), abs=1e-6
            )
        z0, w0 = rng.standard_normal((4, 12, 40)), rng.standard_normal((4, 30, 40))
        z, w = z0 + 0.3 * rng.standard_normal(z0.shape), w0 + 0.05 * rng.standard_normal(w0.shape)
        layers = [tuple(torch.tensor(v[i]) for v in (z0, z, w0, w)) for i in range(4)]
        stacked = alignment_of_layers(layers, mode, xp=torch)
        for i in range(4):
            expected = layer_alignment(z0[i], z[i], w0[i], w[i], mode)
            np.testing.assert_allclose([float(v[i]) for v in stacked], list(expected), atol=1e-6)


def train(model, param, steps, x, y, lr_schedule=None):
    optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
    for t in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if lr_schedule is not None:
            param.lr_prefactor = lr_schedule(t)
        param.step(x, optimizer)
    return optimizer


def test_first_resolve_equals_core_lp_on_numpy_alignments() -> None:
    torch.manual_seed(0)
    model = MLP(width=96, depth=4, dtype=torch.float64)
    param = Parametrization(model, lr_prefactor=0.02, warmup_steps=0, solve_interval=3, sample_size=32)
    x, y = data(dtype=torch.float64)
    param.capture_initial(x)
    w0 = [layer.inner.weight.detach().clone().numpy() for layer in model.layers]

    def inputs(m):
        acts, h = [], x[:32]
        for i, layer in enumerate(m.layers):
            acts.append(h.detach().numpy().copy())
            h = layer(h)
            h = torch.relu(h) if i < 3 else h
        return acts

    z0 = inputs(model)
    train(model, param, 2, x, y)
    assert param.solves == 0
    optimizer = torch.optim.AdamW(param.param_groups)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    with torch.no_grad():
        z = inputs(model)
    w = [layer.inner.weight.detach().numpy() for layer in model.layers]
    param.step(x, optimizer)  # step 3: re-solve
    assert param.solves == 1
    measured = np.array([list(layer_alignment(z0[i], z[i], w0[i], w[i])) for i in range(4)])
    alpha, omega, u = param.get_alignment()
    np.testing.assert_allclose(np.array([alpha, omega, u]).T[1:], measured[1:], atol=1e-9)
    expected = StabilityLP(chain(4), "adam").solve(
        alpha=[1.0, *measured[1:, 0]], omega=[0.5, *measured[1:, 1]], u=[1.0, *measured[1:, 2]]
    )
    np.testing.assert_allclose(param.c, list(expected.c.values()), atol=1e-9)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(param.get_last_lr())


def test_resample_w0_matches_stored_w0() -> None:
    results = []
    for resample in (False, True):
        torch.manual_seed(1)
        model = MLP(width=48, depth=3)
        param = Parametrization(model, resample_w0=resample, warmup_steps=1, solve_interval=2, seed=3)
        x, y = data(seed=2)
        param.capture_initial(x)
        train(model, param, 5, x, y)
        results.append(param.c.copy())
    np.testing.assert_allclose(results[0], results[1], atol=1e-12)


def test_use_training_activations_measures_the_training_forward() -> None:
    """z comes from the training forward (before that step's update), z0 from the initial
    model on the same rows; the numpy reference on those tensors gives the same numbers."""
    torch.manual_seed(5)
    model = MLP(width=48, depth=4, dtype=torch.float64)
    param = Parametrization(model, use_training_activations=True, warmup_steps=0, solve_interval=2)
    x, y = data(seed=4, dtype=torch.float64)
    w0 = [layer.inner.weight.detach().clone().numpy() for layer in model.layers]
    seen: dict[int, np.ndarray] = {}

    def keep(module, args, i):
        if torch.is_grad_enabled():  # training forwards only, not maxP's own no-grad passes
            seen[i] = args[0].detach().numpy()[:32].copy()

    hooks = [
        layer.register_forward_pre_hook(lambda m, a, i=i: keep(m, a, i))
        for i, layer in enumerate(model.layers)
    ]
    model(x)
    z0 = dict(seen)
    param.capture_initial(x)
    train(model, param, 2, x, y)
    for hook in hooks:
        hook.remove()
    assert param.solves == 1
    w = [layer.inner.weight.detach().numpy() for layer in model.layers]
    measured = np.array([list(layer_alignment(z0[i], seen[i], w0[i], w[i])) for i in range(4)])
    alpha, omega, u = param.get_alignment()
    np.testing.assert_allclose(np.array([alpha, omega, u]).T[1:], measured[1:], atol=1e-9)


def test_lr_prefactor_is_settable_and_synced() -> None:
    model = MLP(depth=3)
    param = Parametrization(model, lr_prefactor=0.1, warmup_steps=100)
    x, y = data()
    param.capture_initial(x)
    optimizer = train(model, param, 3, x, y, lr_schedule=lambda t: 0.1 * 0.5 ** (t + 1))
    ratios = [g["lr"] / lr for g, lr in zip(optimizer.param_groups, param.get_last_lr(), strict=False)]
    assert ratios == pytest.approx([1.0] * 3)
    assert param.get_last_lr()[0] == pytest.approx(0.0125 * 64**-0.5 / 0.1 * 0.1)


def test_state_dict_resume_is_exact() -> None:
    def make():
        torch.manual_seed(7)
        model = MLP(width=32, depth=4)
        param = Parametrization(model, warmup_steps=1, solve_interval=2, alignment_ema=0.5, c_ema=0.2)
        return model, param

    x, y = data(seed=8)
    model, param = make()
    param.capture_initial(x)
    optimizer = torch.optim.AdamW(param.param_groups)

    def run(model, param, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            param.step(x, optimizer)

    run(model, param, optimizer, 3)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "param": param.state_dict()}, buffer
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    model2, param2 = make()
    model2.load_state_dict(checkpoint["model"])
    optimizer2 = torch.optim.AdamW(param2.param_groups)
    optimizer2.load_state_dict(checkpoint["opt"])
    param2.load_state_dict(checkpoint["param"])
    run(model, param, optimizer, 4)
    run(model2, param2, optimizer2, 4)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(param.c, param2.c)
    assert param.solves == param2.solves == 3


def test_errors() -> None:
    with pytest.raises(MaxPError, match="no ParametrizedModule in Sequential"):
        Parametrization(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(MaxPError, match="unknown layer_type 'middle'"):
        ParametrizedModule(nn.Linear(4, 4), width_dim=4, layer_type="middle")
    model = MLP(depth=3)
    model.layers[1].b = 1.0
    with pytest.raises(StabilityError, match=r"'layers.1' \(hidden\): a \+ b = 0.0 \+ 1.0"):
        Parametrization(model)
    param = Parametrization(MLP(depth=3), warmup_steps=0)
    with pytest.raises(MaxPError, match=r"step\(\) before capture_initial"):
        param.step()
    model = MLP(depth=3)
    param = Parametrization(model, warmup_steps=10)
    with pytest.raises(MaxPError, match=r"param groups .* do not match"):
        param.step(None, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(InfeasibleError, match=r"layers\.1"):
        Parametrization(MLP(depth=3), c_overrides={"hidden": -2.0})
    with pytest.raises(MaxPError, match="keyed by layer type"):
        Parametrization(MLP(depth=3), c_overrides={"layers.1": 1.0})


def test_failed_resolve_keeps_rates_and_warns_with_a_running_count(monkeypatch) -> None:
    model = MLP(depth=3)
    param = Parametrization(model, warmup_steps=0, solve_interval=1)
    x, y = data()
    param.capture_initial(x)
    before = param.get_last_lr()

    def refuse(**numbers):
        raise InfeasibleError("no learning rates keep every node stable (test)")

    monkeypatch.setattr(param.lp, "solve", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, param, 5, x, y)
    assert param.failures == 5 and param.solves == 0
    assert param.get_last_lr() == before
    told = [w for w in caught if "re-solve failed" in str(w.message)]
    # The 1st, 2nd and 4th failures are reported, each with the count so far.
    assert [str(w.message).split("(")[1].split(" ")[0] for w in told] == ["1", "2", "4"]
    assert all(w.filename == __file__ for w in told)  # the user's line, not the library's


def test_alignment_overrides_by_name_suffix_and_type() -> None:
    param = Parametrization(
        MLP(depth=4), alignment_overrides={"layers.3": (0.6, 0.5, 0.6), "hidden": (0.7, 0.5, 0.7)}
    )
    alpha, _, _ = param.get_alignment()
    assert alpha == [1.0, 0.7, 0.7, 0.6]


def test_compiled_model_gives_the_same_rates() -> None:
    results = []
    for compiled in (False, True):
        torch.manual_seed(3)
        model = MLP(width=32, depth=4)
        runner = torch.compile(model, backend="eager") if compiled else model
        param = Parametrization(runner, warmup_steps=0, solve_interval=2)
        x, y = data(seed=3)
        param.capture_initial(x)
        train(runner, param, 4, x, y)
        assert param.solves == 2
        results.append(param.get_last_lr())
    assert results[1] == pytest.approx(results[0], rel=1e-6)


class TinyAttention(nn.Module):
    """Embedding, q/k/v projections, a parameter-free q k^T readout-type op, output head."""

    def __init__(self, d=32):
        super().__init__()
        self.emb = ParametrizedModule(nn.Linear(8, d), width_dim=d, layer_type="embedding")
        self.q = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden")
        self.k = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden")
        self.v = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden")
        self.scores = ParametrizedModule(
            lambda q, k: q @ k.transpose(-2, -1), width_dim=d, layer_type="readout", a=1.0
        )
        self.head = ParametrizedModule(nn.Linear(d, 10), width_dim=d, layer_type="readout")

    def forward(self, x):
        h = self.emb(x)
        attn = torch.softmax(self.scores(self.q(h), self.k(h)), dim=-1)
        return self.head(attn @ self.v(h)).mean(1)


def test_bare_callable_gets_its_scale_and_joins_the_graph() -> None:
    model = TinyAttention()
    param = Parametrization(model, lr_prefactor=0.1)
    assert model.scores.scale == pytest.approx(32**-1.0)
    assert param.get_layer_names() == ["emb", "q", "k", "v", "head"]  # the callable has no group
    node = param.graph.node("scores")
    assert not node.has_weight and node.a == 1.0
    q, k = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    torch.testing.assert_close(model.scores(q, k), q @ k.transpose(-2, -1) / 32)
    x = torch.randn(4, 5, 8)
    param.capture_initial(x)
    optimizer = torch.optim.AdamW(param.param_groups)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
        optimizer.step()
        param.step(x, optimizer)
    assert param.solves == 3 and param.failures == 0


def test_feature_learning_pins_the_last_hidden_residual() -> None:
    model = MLP(depth=4)
    param = Parametrization(model, feature_learning=True, alignment="no")
    r = param.lp.solve().r
    assert r["layers.2"] == pytest.approx(0.0, abs=1e-9)


def test_a_widening_bias_free_readout_scales_its_input_and_matches_the_output_multiplier() -> None:
    torch.manual_seed(0)
    head = ParametrizedModule(nn.Linear(16, 256, bias=False), width_dim=16, layer_type="readout")
    head.scale = 0.3
    x = torch.randn(5, 16, requires_grad=True)
    out = head(x)
    # What runs: the smaller input scaled; what it equals: the output scaled, as the definition says.
    assert torch.equal(out, head.inner(x * 0.3))
    expected = 0.3 * head.inner(x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(out.square().sum(), (x, head.inner.weight))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, head.inner.weight))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_output_is_scaled_where_the_input_cannot_be_or_a_hook_watches() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    with_bias = ParametrizedModule(nn.Linear(16, 256), width_dim=16, layer_type="readout")
    narrowing = ParametrizedModule(nn.Linear(16, 4, bias=False), width_dim=16, layer_type="readout")
    watched = ParametrizedModule(nn.Linear(16, 256, bias=False), width_dim=16, layer_type="readout")
    seen = []
    watched.inner.register_forward_hook(lambda _, args, out: seen.append((args[0], out)))
    for layer in (with_bias, narrowing, watched):
        layer.scale = 0.3
        assert torch.equal(layer(x), layer.inner(x) * 0.3)
    # The hook saw the layer's own input and output, not ones carrying the multiplier.
    assert torch.equal(seen[0][0], x) and torch.equal(seen[0][1], watched.inner(x))
