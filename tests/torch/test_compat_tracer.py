"""The published Tracer, window alignment, compute_alignment dispatcher and op tracing."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxp_core import MaxPWarning
from maxp_core.compat.alignment import compute_alignment as core_compute_alignment
from maxp_core.compat.alignment import compute_alignments_for_pms
from maxp_core.errors import CallOrderError, MaxPError
from maxp_torch import Parametrization, ParametrizedModule
from maxp_torch.compat.ops import (
    TRACED_FUNCTIONS,
    ClassifiedOp,
    TracedOp,
    classify,
    measure_activations,
    trace_forward,
)
from maxp_torch.compat.tracer import (
    LayerSnapshot,
    StepTrace,
    Tracer,
    TraceWindow,
    compute_alignment,
    compute_window_alignment,
)
from maxp_torch.layers import HookedLayer


def small_net(width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, width, bias=False),
        nn.ReLU(),
        nn.Linear(width, width, bias=False),
        nn.ReLU(),
        nn.Linear(width, 2, bias=False),
    )


def nudge(model: nn.Module, scale: float = 0.05) -> None:
    """Move every weight a little, as a training step would."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


# --- Tracer -------------------------------------------------------------------------------


def test_tracer_snapshots_first_rows_steps_and_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    tracer = Tracer(model, sample_size=2)
    assert tracer.layer_names == ["0", "2"]
    assert all(isinstance(m, nn.Linear) for m in tracer.modules) and len(tracer.modules) == 2
    assert tracer.fan_in == [4, 8] and tracer.initial is None
    assert (tracer.model, tracer.sample_size, tracer.bl, tracer.resample_w0) == (model, 2, None, False)
    x = torch.randn(5, 4)
    init = tracer.capture_initial(x)
    current = tracer.capture(x, step=1)
    assert tracer.initial is init and (init.step, current.step) == (0, 1)
    assert init.layers.keys() == current.layers.keys() == {"0", "2"}
    for snapshot in (*init.layers.values(), *current.layers.values()):
        assert isinstance(snapshot, LayerSnapshot)
        assert snapshot.input.shape[0] == 2 and snapshot.output.shape[0] == 2 and snapshot.weight.ndim == 2
        assert snapshot.input.device.type == "cpu" and not snapshot.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(init.layers["0"].output, model[0](x[:2]))
        assert torch.equal(init.layers["2"].input, model[1](model[0](x[:2])))
        model[0].weight.add_(1.0)  # the snapshots are copies
    assert not torch.equal(init.layers["0"].weight, model[0].weight)
    tracer.remove_hooks()


def test_hooks_record_only_while_capturing_and_come_off() -> None:
    model = small_net()
    tracer = Tracer(model, sample_size=None)
    x = torch.randn(7, 4)
    init = tracer.capture_initial(x)
    model(torch.randn(3, 4))  # an ordinary forward pass records nothing
    assert init.layers["0"].input.shape == (7, 4)
    assert tracer.capture(x).step == 0
    tracer.remove_hooks()
    assert all(not m._forward_hooks for m in tracer.modules)
    assert tracer.capture(x).layers == {}


def test_sequence_inputs_keep_the_first_samples() -> None:
    model = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
    tracer = Tracer(model, sample_size=3)
    trace = tracer.capture_initial(torch.randn(5, 10, 6))
    assert trace.layers["2"].input.shape == (3, 10, 12)


def test_captures_run_in_eval_mode_and_leave_the_random_state_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 4))
    model.train()
    tracer = Tracer(model)
    x = torch.randn(4, 8)
    state = torch.get_rng_state()
    first, second = tracer.capture_initial(x), tracer.capture(x, step=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.layers["2"].input, second.layers["2"].input)  # no dropout noise
    assert model.training and model[1].training


def test_snapshot_output_is_taken_before_the_hooked_multiplier() -> None:
    model = small_net()
    layer = HookedLayer(model[0], "embedding", 8)
    layer.scale = 4.0
    tracer = Tracer(model)
    x = torch.randn(3, 4)
    trace = tracer.capture_initial(x)
    with torch.no_grad():
        raw = F.linear(x, model[0].weight)
    assert torch.allclose(trace.layers["0"].output, raw)
    assert torch.allclose(trace.layers["2"].input, torch.relu(4.0 * raw))
    layer.remove()


def test_linear_layers_inside_a_linear_subclass_are_not_traced_twice() -> None:
    class Wrapped(nn.Linear):
        def __init__(self) -> None:
            super().__init__(4, 4)
            self.extra = nn.Linear(4, 4)

    model = nn.Sequential(Wrapped(), nn.Linear(4, 2))
    assert Tracer(model).layer_names == ["0", "1"]


def test_tracer_errors_name_what_is_wrong() -> None:
    with pytest.raises(MaxPError, match=r"has no nn\.Linear layer"):
        Tracer(nn.Sequential(nn.ReLU()))
    with pytest.raises(
        MaxPError, match=r"bl has 1 values but the model has 3 nn.Linear layers \['0', '2', '4'\]"
    ):
        Tracer(small_net(), bl=[0.5])
    with pytest.raises(MaxPError, match="sample_size must be an integer >= 1"):
        Tracer(small_net(), sample_size=0)
    assert Tracer(small_net(), bl=[0.5, 0.5, 0.5]).bl == [0.5, 0.5, 0.5]


def test_window_before_capture_initial_is_a_call_order_error() -> None:
    tracer = Tracer(small_net())
    current = tracer.capture(torch.randn(3, 4), step=1)
    with pytest.raises(CallOrderError, match=r"before capture_initial\(X\)") as caught:
        tracer.window(current)
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, MaxPError)
    tracer.capture_initial(torch.randn(3, 4))
    window = tracer.window(current)
    assert isinstance(window, TraceWindow)
    assert (window.n_layers, window.fan_in, window.layer_names) == (3, [4, 8, 8], ["0", "2", "4"])
    with pytest.raises(MaxPError, match="takes the StepTrace of capture"):
        tracer.window(window)  # type: ignore[arg-type]


def test_window_names_layers_the_model_did_not_call() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    tracer = Tracer(Skips())
    tracer.capture_initial(torch.randn(2, 4))
    with pytest.raises(
        MaxPError, match=r"layers \['unused'\] were not called by the model during capture_initial"
    ):
        tracer.window(tracer.capture(torch.randn(2, 4)))


# --- compute_alignment(window) ------------------------------------------------------------


def trained_window(norm_width: int = 32) -> tuple[Tracer, TraceWindow]:
    model = small_net(norm_width)
    tracer = Tracer(model, sample_size=16)
    x = torch.randn(24, 4)
    tracer.capture_initial(x)
    nudge(model)
    return tracer, tracer.window(tracer.capture(x, step=1))


@pytest.mark.parametrize("norm_mode", ["rms", "spectral"])
def test_window_alignment_is_the_core_function_on_the_snapshots(norm_mode: str) -> None:
    tracer, window = trained_window()
    alpha, omega, u = compute_window_alignment(window, norm_mode=norm_mode)
    assert len(alpha) == len(omega) == len(u) == 3
    for index, name in enumerate(window.layer_names):
        init, current = window.init.layers[name], window.current.layers[name]
        expected = core_compute_alignment(
            init.input.numpy(), init.weight.numpy(), current.input.numpy(), current.weight.numpy(),
            tracer.fan_in[index], norm_mode,
        )  # fmt: skip
        got = (alpha[index], omega[index], u[index])
        if index == 0:  # the first layer's input is the data: omega and u are 0.0 as published
            assert got == (expected[0], 0.0, 0.0) and math.isnan(expected[1])
        else:
            assert got == pytest.approx(expected, abs=1e-12)
            assert all(0.0 < v <= 1.0 for v in got)
    assert compute_alignment(window, norm_mode=norm_mode) == (alpha, omega, u)


def test_window_alignment_matches_what_parametrization_measures() -> None:
    """Parametrization measures each non-embedding layer on the capture_initial sample in eval mode,
    with fan_in = the weight's input size; a Tracer capturing the same sample gives the same numbers."""
    torch.manual_seed(1)
    width = 64
    model = nn.Sequential(
        ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding"),
        nn.Tanh(),
        ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden"),
        nn.Tanh(),
        ParametrizedModule(nn.Linear(width, 4), width_dim=width, layer_type="readout"),
    )
    param = Parametrization(model, lr_prefactor=0.05, warmup_steps=0, solve_interval=1)
    x = torch.randn(32, 8)
    tracer = Tracer(model, sample_size=32)
    tracer.capture_initial(x)
    param.capture_initial(x)
    optimizer = torch.optim.AdamW(param.param_groups)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        optimizer.step()
    param.step(None, optimizer)
    assert tracer.layer_names == ["0.inner", "2.inner", "4.inner"]
    ours = compute_alignment(tracer.window(tracer.capture(x, step=3)))
    theirs = param.get_alignment()
    for layer in (1, 2):  # the embedding keeps its preset in Parametrization
        for mine, measured in zip(ours, theirs, strict=True):
            assert mine[layer] == pytest.approx(measured[layer], abs=1e-4)


def test_resample_w0_uses_the_exact_initial_weight() -> None:
    model = small_net(16)
    tracer = Tracer(model, bl=[0.0, 0.5, 0.5], resample_w0=True)
    x = torch.randn(8, 4)
    init = tracer.capture_initial(x)
    assert all(s.weight is not None for s in init.layers.values())
    nudge(model)
    window = tracer.window(tracer.capture(x, step=1))
    assert window.resample_w0 and window.bl == [0.0, 0.5, 0.5]
    exact = compute_alignment(window, resample_w0=False)
    assert compute_alignment(window) == exact == compute_alignment(window, True, std_prefactor=2**0.5)
    without_w0 = TraceWindow(
        init=StepTrace(0, {n: LayerSnapshot(s.input, s.output, None) for n, s in init.layers.items()}),
        current=window.current,
        n_layers=3,
        fan_in=window.fan_in,
        layer_names=window.layer_names,
        bl=window.bl,
        resample_w0=True,
    )
    with pytest.raises(MaxPError, match=r"layer 0 \('0'\) has no initial weight; .*random W0"):
        compute_alignment(without_w0)


def test_window_alignment_errors() -> None:
    _, window = trained_window()
    with pytest.raises(MaxPError, match=r"norm_mode must be one of \['rms', 'spectral'\]"):
        compute_alignment(window, norm_mode="l2")
    broken = TraceWindow(window.init, StepTrace(1, {}), 3, window.fan_in, window.layer_names)
    with pytest.raises(
        CallOrderError, match=r"layer 0 \('0'\) has no input or weight in the window's current"
    ):
        compute_alignment(broken)
    short = TraceWindow(window.init, window.current, 3, [4], window.layer_names)
    with pytest.raises(MaxPError, match="3 layer names, 1 fan_in values"):
        compute_alignment(short)


# --- compute_alignment(z0, w0, z, w, fan_in) on tensors -----------------------------------


def test_the_dispatcher_takes_tensors_as_the_current_release_does() -> None:
    torch.manual_seed(3)
    z0, w0 = torch.randn(2, 5, 32), torch.randn(16, 32, requires_grad=True)
    z, w = z0 + 0.1 * torch.randn_like(z0), w0.detach() + 0.1 * torch.randn(16, 32)
    expected = core_compute_alignment(z0.numpy(), w0.detach().numpy(), z.numpy(), w.numpy(), 32)
    assert compute_alignment(z0, w0, z, w, 32) == pytest.approx(expected, abs=1e-12)
    assert compute_alignment(z0=z0, w0=w0, z=z, w=w, fan_in=32) == pytest.approx(expected, abs=1e-12)
    assert compute_alignment(z0.numpy(), w0.detach().numpy(), z.numpy(), w.numpy(), 32) == expected
    halves = [t.to(torch.bfloat16) for t in (z0, w0.detach(), z, w)]
    assert compute_alignment(*halves, 32) == pytest.approx(expected, abs=0.05)
    lists = compute_alignments_for_pms([((z0, w0), (z, w)), None], [32, 32], norm_mode="spectral")
    assert (lists[0][1], lists[1][1], lists[2][1]) == (1.0, 0.5, 1.0) and 0.0 < lists[0][0] <= 1.0


def test_the_dispatcher_explains_what_it_takes() -> None:
    _, window = trained_window()
    assert compute_alignment(window=window) == compute_window_alignment(window)
    for wrong in ("z0", None, 3.0):
        with pytest.raises(MaxPError, match=r"takes a TraceWindow .* or one layer's tensors"):
            compute_alignment(wrong)
    with pytest.raises(MaxPError, match=r"pass tracer.window\(trace\) instead of the trace"):
        compute_alignment(window.current)
    with pytest.raises(MaxPError, match="norm_mode"):
        compute_alignment(torch.ones(2, 4), torch.ones(3, 4), torch.ones(2, 4), torch.ones(3, 4), 4, "l1")


# --- trace_forward, classify, measure_activations -----------------------------------------


class Attention(nn.Module):
    """One attention block; ``fused`` uses F.scaled_dot_product_attention, else explicit matmuls."""

    def __init__(self, width: int, heads: int = 2, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.fused:
            mixed = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            mixed = torch.softmax(scores, dim=-1) @ v
        heads = torch.cat(list(mixed.unbind(1)), dim=-1)  # concatenation works while tracing
        return self.proj(heads)


class Block(nn.Module):
    def __init__(self, width: int, fused: bool = False) -> None:
        super().__init__()
        self.attn = Attention(width, fused=fused)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.attn(x))


def test_trace_forward_lists_the_mlp_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    ops = trace_forward(model, torch.randn(3, 4))
    assert [(o.index, o.op, o.param_name, o.module_path) for o in ops] == [
        (0, "linear", "0.weight", "0"),
        (1, "linear", "2.weight", "2"),
        (2, "linear", "4.weight", "4"),
    ]
    assert ops[0] == TracedOp(
        0, "linear", [(3, 4), (16, 4), (16,)], (3, 16), "0.weight", "0", ops[0].source_loc
    )
    assert ops[0].source_loc.startswith("test_compat_tracer.py:")


def test_trace_forward_lists_attention_matmuls_and_fused_attention() -> None:
    x = torch.randn(2, 5, 8)
    explicit = trace_forward(Block(8), x)
    assert [(o.op, o.param_name, o.module_path) for o in explicit] == [
        ("linear", "attn.qkv.weight", "attn.qkv"),
        ("matmul", None, "attn"),
        ("matmul", None, "attn"),
        ("linear", "attn.proj.weight", "attn.proj"),
        ("linear", "head.weight", "head"),
    ]
    assert explicit[1].input_shapes == [(2, 2, 5, 4), (2, 2, 4, 5)] and explicit[1].output_shape == (
        2,
        2,
        5,
        5,
    )
    line = int(explicit[1].source_loc.split(":")[1])
    assert explicit[1].source_loc.startswith("test_compat_tracer.py:") and line < int(
        explicit[2].source_loc.split(":")[1]
    )
    fused = trace_forward(Block(8, fused=True), x)
    assert [o.op for o in fused] == ["linear", "scaled_dot_product_attention", "linear", "linear"]
    assert fused[1].input_shapes == [(2, 2, 5, 4)] * 3


def test_trace_forward_records_embeddings_convolutions_and_tensor_methods() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(10, 6)
            self.conv = nn.Conv1d(6, 4, 3)
            self.w = nn.Parameter(torch.randn(4, 5))
            self.b = nn.Parameter(torch.zeros(5))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.conv(self.table(ids).transpose(1, 2)).mean(-1)
            return h.mm(self.w) + torch.addmm(self.b, h, self.w) + torch.bmm(h[None], self.w[None])[0]

    ops = trace_forward(Mixed(), torch.randint(0, 10, (2, 7)))
    assert [(o.op, o.param_name) for o in ops] == [
        ("embedding", "table.weight"),
        ("conv1d", "conv.weight"),
        ("mm", "w"),
        ("addmm", "w"),  # the matrix parameter, not the bias that comes first
        ("bmm", "w"),  # a view starting where the parameter starts
    ]
    assert ops[1].input_shapes == [(2, 6, 7), (4, 6, 3), (4,)]
    assert set(TRACED_FUNCTIONS.values()) >= {"matmul", "linear", "embedding", "conv2d"}


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
    )


def test_classify_gives_the_mlp_roles_by_width() -> None:
    ops = classify(mlp(16), mlp(32), torch.randn(3, 4), torch.randn(3, 4))
    assert all(isinstance(o, ClassifiedOp) for o in ops)
    assert [(o.index, o.op, o.layer_type, o.param_name) for o in ops] == [
        (0, "linear", "embedding", "0.weight"),
        (1, "linear", "hidden", "2.weight"),
        (2, "linear", "readout", "4.weight"),
        (3, "elementwise", "embedding", "0.bias"),
        (4, "elementwise", "embedding", "2.bias"),
        (5, "elementwise", "embedding", "4.bias"),
    ]
    assert ops[1].input_shapes_small[0] == (3, 16) and ops[1].input_shapes_large[0] == (3, 32)
    assert (ops[2].output_shape_small, ops[2].output_shape_large) == ((3, 2), (3, 2))
    assert ops[3].module_path == "0" and ops[3].parametrized and ops[3].input_shapes_small == []


def test_classify_reads_convolution_channels_and_attention() -> None:
    def cnn(width: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(3, width, 3, bias=False),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, bias=False),
            nn.Flatten(),
            nn.Linear(width * 4 * 4, 10, bias=False),
        )

    ops = classify(cnn(4), cnn(8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    assert [o.layer_type for o in ops] == ["embedding", "hidden", "readout"]
    attention = classify(
        Block(8, fused=True), Block(16, fused=True), torch.randn(1, 3, 8), torch.randn(1, 3, 16)
    )
    assert [(o.op, o.layer_type, o.parametrized) for o in attention[:4]] == [
        ("linear", "hidden", True),
        ("scaled_dot_product_attention", "hidden", False),
        ("linear", "hidden", True),
        ("linear", "readout", True),
    ]


def test_classify_refuses_different_architectures() -> None:
    deeper = nn.Sequential(mlp(32), nn.Linear(2, 2))
    with pytest.raises(
        MaxPError, match="Op count mismatch: the small model ran 3 traced ops and the large one 4"
    ):
        classify(mlp(16), deeper, torch.randn(3, 4), torch.randn(3, 4))

    class Product(nn.Module):
        def __init__(self, width: int, method: bool) -> None:
            super().__init__()
            self.fc, self.w, self.method = nn.Linear(4, width), nn.Parameter(torch.randn(width, 2)), method

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return h.mm(self.w) if self.method else h @ self.w

    with pytest.raises(
        MaxPError, match=r"op 1 is 'mm' in the small model \(root\) but 'matmul' in the large one"
    ):
        classify(Product(8, True), Product(16, False), torch.randn(3, 4), torch.randn(3, 4))


def test_measure_activations_applies_the_innermost_maxp_multiplier() -> None:
    torch.manual_seed(5)
    scaled = ParametrizedModule(nn.Linear(8, 8, bias=False), width_dim=8, layer_type="hidden")
    scaled.scale = 0.25
    unit = ParametrizedModule(nn.Linear(8, 8, bias=False), width_dim=8, layer_type="hidden")
    score = ParametrizedModule(lambda q, k: q @ k.transpose(-2, -1), width_dim=8, layer_type="readout")
    score.scale = 8**-0.5
    plain = nn.Linear(8, 8, bias=False)
    plain.scale = 10.0  # not a maxP multiplier: not read
    hooked_linear = nn.Linear(8, 8, bias=False)
    hooked = HookedLayer(hooked_linear, "hidden", 8)
    hooked.scale = 0.5

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scaled, self.unit, self.score, self.plain, self.hooked = (
                scaled,
                unit,
                score,
                plain,
                hooked_linear,
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.unit(self.scaled(x))
            return self.hooked(self.plain(self.score(h, h)))

    x = torch.randn(2, 8, 8)  # 8 tokens: the scores (2, 8, 8) feed the next Linear(8, 8)
    values = measure_activations(Net(), x)
    assert len(values) == len(trace_forward(Net(), x)) == 5
    with torch.no_grad():
        h1 = scaled(x)
        h2 = unit(h1)
        s = score(h2, h2)
        p = plain(s)
        expected = [h1, h2, s, p, hooked_linear(p)]
    for value, out in zip(values, expected, strict=True):
        assert value == pytest.approx(float(out.abs().double().mean()), rel=1e-6)
    hooked.remove()


def test_snapshot_tensors_feed_compute_alignments_for_pms() -> None:
    _, window = trained_window()
    names = window.layer_names
    init, current = window.init.layers, window.current.layers
    snapshots = [((init[n].input, init[n].weight), (current[n].input, current[n].weight)) for n in names]
    alpha, omega, u = compute_alignments_for_pms(snapshots, window.fan_in)
    by_window = compute_window_alignment(window)
    assert alpha == by_window[0] and omega[1:] == by_window[1][1:] and u[1:] == by_window[2][1:]
    assert np.isnan(omega[0]) and np.isnan(u[0])  # the per-layer form does not special-case layer 0


def test_resample_w0_redraws_the_initial_weight_of_a_model_maxp_initialised() -> None:
    """No copy of W0 is kept; each window redraws it bit for bit, so the alignments are the
    kept-W0 tracer's exactly."""
    from maxp_torch import initialize_abc_weights

    model = small_net(16)
    initialize_abc_weights(model, parametrization="mup", seed=7)
    keeping, redrawing = Tracer(model), Tracer(model, resample_w0=True)
    x = torch.randn(8, 4)
    kept = keeping.capture_initial(x)
    init = redrawing.capture_initial(x)
    assert all(s.weight is None for s in init.layers.values())
    assert all(s.weight is not None for s in kept.layers.values())
    nudge(model)
    a = compute_alignment(keeping.window(keeping.capture(x, step=1)))
    window = redrawing.window(redrawing.capture(x, step=1))
    for name, snapshot in window.init.layers.items():
        assert torch.equal(snapshot.weight, kept.layers[name].weight)
    assert compute_alignment(window) == a


def test_resample_w0_on_a_model_maxp_did_not_draw_says_it_keeps_w0() -> None:
    with pytest.warns(MaxPWarning, match=r"Tracer\(resample_w0=True\) redraws W0 .* the exact W0 is kept"):
        tracer = Tracer(small_net(16), resample_w0=True)
    assert all(s.weight is not None for s in tracer.capture_initial(torch.randn(8, 4)).layers.values())


def test_resample_w0_refuses_a_capture_after_the_weights_moved() -> None:
    from maxp_torch import initialize_abc_weights

    model = small_net(16)
    initialize_abc_weights(model, parametrization="mup", seed=7)
    tracer = Tracer(model, resample_w0=True)
    nudge(model)
    with pytest.raises(MaxPError, match=r"no longer holds the weight initialize_abc_weights drew"):
        tracer.capture_initial(torch.randn(8, 4))
