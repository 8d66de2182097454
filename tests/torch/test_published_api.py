"""The published maxP's README examples and documented behaviours, with only the import changed.

Each example below is the published code with ``from maxp import ...`` replaced by
``from maxp_torch.published import ...`` (or ``from maxp_torch import published as maxp``);
the names the READMEs leave to the reader (``train_loader``, ``criterion``, ``X_init``, ``MyModel``) are small
fixtures. The numbers are checked against this project's documented expectations: the
LP solved by :mod:`maxp_core` on the alignments the run measured, and the README's
"Differences from the published maxP" where the behaviour differs on purpose.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import maxp_core
import maxp_torch
from maxp_core import CallOrderError, MaxPWarning, StabilityLP, chain, named_parametrization
from maxp_core.compat import get_abc_parametrization
from maxp_torch import published as maxp

# Every public name of the published first release and current release.
FIRST_RELEASE = [
    "MaxPScheduler",
    "ChainedMaxPScheduler",
    "Tracer",
    "LayerSnapshot",
    "StepTrace",
    "TraceWindow",
    "compute_alignment",
    "find_c",
    "find_c_adam",
    "find_c_sgd",
    "ABCParametrization",
    "ScaledLinear",
    "create_param_groups",
    "get_abc_parametrization",
    "get_linear_layers",
    "initialize_abc_weights",
]
CURRENT_RELEASE = [
    "ParametrizedModule",
    "Parametrization",
    "compute_alignment",
    "compute_alignments_for_pms",
    "TracedOp",
    "ClassifiedOp",
    "trace_forward",
    "classify",
    "measure_activations",
    "OpGraph",
    "DagNode",
    "MergeType",
    "trace_pm_dag",
    "find_c_dag",
    "find_c_dag_adam",
    "find_c_dag_sgd",
    "diagnose_axis",
    "print_axis",
    "plot_axis",
]


def loader(steps: int, in_dim: int = 784, batch: int = 8, classes: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, in_dim, generator=gen), torch.randint(0, classes, (batch,), generator=gen))
        for _ in range(steps)
    ]


def lp_rates(lr: float, width: int, a, b, alignment, optimizer="adam", **kwargs) -> list[float]:
    """The rates the LP gives a chain with these exponents and measured alignments."""
    graph = chain(len(a), a=a, b=b, alignment=list(zip(*alignment, strict=True)))
    c = StabilityLP(graph, optimizer, **kwargs).solve().c.values()
    return [lr * width**-x for x in c]


def test_every_published_name_is_in_the_published_namespace() -> None:
    missing = [n for n in FIRST_RELEASE + CURRENT_RELEASE if not hasattr(maxp, n)]
    assert missing == []
    assert set(FIRST_RELEASE + CURRENT_RELEASE) <= set(maxp.__all__)


def test_published_only_names_leave_the_maxp_torch_namespace_with_a_warning() -> None:
    """``maxp_torch.OpGraph`` was the published class while ``maxp_core.OpGraph`` is the LP's."""
    published_only = sorted({n for n in FIRST_RELEASE + CURRENT_RELEASE if n not in maxp_torch.__all__})
    maxp_torch._WARNED.clear()  # each name warns once per process
    assert {"OpGraph", "find_c", "Tracer", "trace_pm_dag"} <= set(published_only)
    for name in published_only:
        with pytest.warns(FutureWarning, match=f"maxp_torch.published import {name}"):
            assert getattr(maxp_torch, name) is getattr(maxp, name)
    shared = [n for n in maxp.__all__ if n in maxp_torch.__all__]
    assert all(getattr(maxp_torch, n) is getattr(maxp, n) for n in shared)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = maxp_torch.not_a_name


def test_no_name_means_two_things_across_maxp_core_and_maxp_torch() -> None:
    both = set(maxp_core.__all__) & set(maxp_torch.__all__)
    assert [n for n in both if getattr(maxp_core, n) is not getattr(maxp_torch, n)] == []


# --- the first release's README -------------------------------------------------------------


def test_first_release_quick_start() -> None:
    train_loader = loader(101)
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    # README, "Quick Start", with `from maxp import` -> `from maxp_torch.published import`.
    from maxp_torch.published import MaxPScheduler, create_param_groups, initialize_abc_weights

    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    initialize_abc_weights(model, parametrization="mup")
    lr_prefactor = 0.001
    param_groups = create_param_groups(model, lr_prefactor=lr_prefactor, parametrization="mup")
    optimizer = torch.optim.AdamW(param_groups)
    scheduler = MaxPScheduler(
        optimizer, model, parametrization="mup", lr_prefactor=lr_prefactor, solver_warmup_steps=100
    )
    X_init = next(iter(train_loader))[0]
    scheduler.capture_initial(X_init)
    starting = [lr_prefactor * 256**-c for c in (0.5, 1.0, 0.5)]
    assert scheduler.get_last_lr() == pytest.approx(starting, rel=1e-12)
    for step, (X, y) in enumerate(train_loader, start=1):
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        scheduler.step(X)
        if step == 100:  # the solver warm-up keeps the starting rates and measures nothing
            assert scheduler.get_last_lr() == pytest.approx(starting, rel=1e-12)
            assert scheduler.get_alignment() == (None, None, None)
    # Multipliers: n^-a with n = 256 for every layer (the embedding's n is its width).
    assert [type(m).__name__ for m in model] == ["ScaledLinear", "ReLU", "Linear", "ReLU", "ScaledLinear"]
    assert (model[0].scale, model[4].scale) == pytest.approx((16.0, 1 / 16))
    alignment = scheduler.get_alignment()
    assert all(0.0 <= v <= 1.0 for values in alignment for v in values)
    expected = lp_rates(lr_prefactor, 256, [-0.5, 0.0, 0.5], [0.5] * 3, alignment)
    assert scheduler.get_last_lr() == pytest.approx(expected, rel=1e-7)
    assert [g["layer_name"] for g in optimizer.param_groups] == ["0", "2", "4", "_other"]
    assert optimizer.param_groups[-1]["lr"] == lr_prefactor  # biases: never touched


def four_layer_mlp(width: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


def test_first_release_custom_abc_values() -> None:
    torch.manual_seed(0)
    model = four_layer_mlp()
    # README, "Custom ABC Values".
    from maxp_torch.published import MaxPScheduler, create_param_groups, initialize_abc_weights

    al = [-0.5, 0.0, 0.0, 0.5]  # Layer output multipliers
    bl = [0.5, 0.5, 0.5, 0.5]  # Initialization variance exponents
    cl = [0.5, 1.0, 1.0, 0.5]  # Initial learning rate exponents
    initialize_abc_weights(model, al=al, bl=bl)
    param_groups = create_param_groups(model, lr_prefactor=0.1, cl=cl)
    optimizer = torch.optim.AdamW(param_groups)
    scheduler = MaxPScheduler(
        optimizer,
        model,
        al=al,
        bl=bl,
        lr_prefactor=0.1,
    )
    assert scheduler.al == al and scheduler.bl == bl and scheduler.n_layers == 4
    assert scheduler.get_last_lr() == pytest.approx([0.1 * 64**-c for c in cl])
    assert [g["c"] for g in param_groups[:4]] == cl and [g["fan_in"] for g in param_groups[:4]] == [64] * 4
    # The LP takes over after the solver warm-up: c is re-solved, not pinned to cl.
    assert scheduler.param.schedule.warmup_steps == 100 and scheduler.param.lp.c_fixed == {}


def readme_setup(width: int = 64, optimizer_cls=torch.optim.AdamW, lr: float = 0.1, **group_kwargs):
    torch.manual_seed(0)
    model = four_layer_mlp(width)
    maxp.initialize_abc_weights(model, parametrization="mup")
    param_groups = maxp.create_param_groups(model, lr_prefactor=lr, parametrization="mup")
    return model, param_groups, optimizer_cls(param_groups, **group_kwargs)


def test_first_release_memory_efficient_feature_learning_and_solve_interval() -> None:
    model, param_groups, optimizer = readme_setup(lr=0.001)
    from maxp_torch.published import MaxPScheduler

    # README, "Memory-Efficient Mode".
    scheduler = MaxPScheduler(
        optimizer, model,
        parametrization="mup",
        lr_prefactor=0.001,
        resample_w0=True,  # Don't store initial weights
    )  # fmt: skip
    scheduler.capture_initial(torch.randn(8, 32))
    assert scheduler.param._w0 == {}
    # README, "Feature Learning Constraint".
    optimizer = torch.optim.SGD(param_groups, lr=0.1)
    scheduler = MaxPScheduler(
        optimizer, model,
        parametrization="ntk",
        lr_prefactor=0.1,
        feature_learning=True,  # Enforces r=0 for last HIDDEN layer
    )  # fmt: skip
    assert scheduler.optimizer_type == "sgd" and scheduler._param_name == "ntk-sgd-full"
    graph = chain(4, a=scheduler.al, b=scheduler.bl)
    expected = StabilityLP(graph, "sgd", feature_learning=True).solve().c
    assert scheduler.param.c.tolist() == pytest.approx(list(expected.values()), abs=1e-9)
    # README, "Solve Interval".
    scheduler = MaxPScheduler(
        optimizer, model,
        parametrization="mup",
        lr_prefactor=0.001,
        solver_warmup_steps=100,
        solve_interval=10,  # Solve LP every 10 steps
    )  # fmt: skip
    assert [scheduler.param.schedule.should_solve(s) for s in (100, 105, 110, 120)] == [
        False,
        False,
        True,
        True,
    ]


def test_first_release_wsd_schedule() -> None:
    model, _, optimizer = readme_setup(lr=0.001)
    from maxp_torch.published import MaxPScheduler

    # README, "WSD (Warmup-Stable-Decay) Schedule".
    scheduler = MaxPScheduler(
        optimizer, model,
        parametrization="mup",
        lr_prefactor=0.001,
        solver_warmup_steps=100,       # LP solver starts after 100 steps
        wsd_warmup_steps=500,          # Linear LR warmup: 500 steps
        wsd_stable_steps=9000,         # Stable LR phase: 9000 steps
        wsd_decay_steps=500,           # Decay phase: 500 steps
        wsd_decay_type="cosine",       # "cosine" or "linear"
        wsd_min_factor=0.0,            # Decay to 0% of base LR
    )  # fmt: skip
    rates = [0.001 * 64**-c for c in (0.5, 1.0, 1.0, 0.5)]
    scheduler.capture_initial(torch.randn(8, 32))
    for _ in range(3):
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([r * 3 / 500 for r in rates])
    assert scheduler.param.schedule.stop_after == 9499  # the solver stops where the decay starts
    # Warm-up with no decay: a linear ramp, then the base rate (the published behaviour).
    ramp = MaxPScheduler(optimizer, model, 0.001, parametrization="mup", wsd_warmup_steps=4)
    ramp.capture_initial(torch.randn(8, 32))
    seen = []
    for _ in range(6):
        ramp.step()
        seen.append(ramp.get_last_lr()[0] / rates[0])
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_first_release_chaining_checkpointing_and_state(tmp_path) -> None:
    model, _, optimizer = readme_setup()
    train_loader = loader(6, in_dim=32)
    criterion = nn.CrossEntropyLoss()
    X_init = train_loader[0][0]
    from maxp_torch.published import ChainedMaxPScheduler, MaxPScheduler

    # README, "Chaining with Other LR Schedulers".
    maxp_scheduler = MaxPScheduler(
        optimizer, model,
        parametrization="mup",
        lr_prefactor=0.1,
        solver_warmup_steps=100,
    )  # fmt: skip
    cosine_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    scheduler = ChainedMaxPScheduler(maxp_scheduler, [cosine_scheduler])
    scheduler.capture_initial(X_init)
    for X, y in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        scheduler.step(X)
    cosine = 0.5 * (1 + math.cos(math.pi * 6 / 1000))
    rates = [0.1 * 64**-c for c in (0.5, 1.0, 1.0, 0.5)]
    assert scheduler.get_last_lr() == pytest.approx([r * cosine for r in rates], rel=1e-9)
    # README, "Checkpointing".
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    assert scheduler.get_last_lr() == pytest.approx([r * cosine for r in rates], rel=1e-9)
    # README, "Accessing Scheduler State".
    lrs = scheduler.get_last_lr()
    alpha, omega, u = scheduler.get_alignment()
    layer_names = scheduler.get_layer_names()
    assert len(lrs) == 4 and (alpha, omega, u) == (None, None, None) and layer_names == ["0", "2", "4", "6"]


def test_first_release_signatures_defaults_and_errors() -> None:
    torch.manual_seed(0)
    model = four_layer_mlp()
    assert maxp.initialize_abc_weights(model, parametrization="mup", optimizer="sgd", alignment="no") is model
    groups = maxp.create_param_groups(
        model, 0.1, None, "mup", "adam", "full", 0.01, weight_decay=0.1, betas=(0.9, 0.95)
    )
    assert all(g["weight_decay"] == 0.1 and g["betas"] == (0.9, 0.95) for g in groups)
    assert groups[-1]["layer_name"] == "_other" and groups[-1]["lr"] == 0.01
    optimizer = torch.optim.AdamW(groups)
    # Positional: (optimizer, model, lr_prefactor, al, bl, parametrization, alignment_assumption, ...)
    scheduler = maxp.MaxPScheduler(optimizer, model, 0.1, None, None, "mup", "no")
    assert scheduler.param.schedule.warmup_steps == 100 and scheduler._param_name == "mup-adam-no"
    older = maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup", warmup_steps=3)
    assert older.param.schedule.warmup_steps == 3
    for call in (scheduler.step, maxp.Parametrization(nn.Sequential(
        maxp.ParametrizedModule(nn.Linear(4, 8), width_dim=8, layer_type="embedding"),
        maxp.ParametrizedModule(nn.Linear(8, 2), width_dim=8, layer_type="readout"),
    )).step):  # fmt: skip
        with pytest.raises(RuntimeError, match="capture_initial"):
            for _ in range(101):
                call()
    with pytest.raises(CallOrderError):
        maxp.Tracer(model).window(None)
    with pytest.raises(ValueError, match="Cannot specify both"):
        maxp.create_param_groups(model, 0.1, cl=[0.5] * 4, parametrization="mup")
    with pytest.raises(ValueError, match="Must provide either"):
        maxp.initialize_abc_weights(model)
    # apply_multipliers=False re-initialises only, and the scheduler does not warn about the model's own.
    plain = four_layer_mlp()
    maxp.initialize_abc_weights(plain, parametrization="mup", apply_multipliers=False)
    assert not any(isinstance(m, maxp.ScaledLinear) for m in plain.modules())


def test_the_first_release_table_is_the_lp() -> None:
    table = get_abc_parametrization(4, "mup")
    assert (table.al, table.bl, table.cl, table.name) == (
        [-0.5, 0.0, 0.0, 0.5], [0.5] * 4, [0.5, 1.0, 1.0, 0.5], "mup-adam-full"
    )  # fmt: skip
    named = named_parametrization("ntk", 3, "sgd", "no")
    assert get_abc_parametrization(3, "ntk", "sgd", "no").cl == [layer.c for layer in named]


def test_a_scheduler_without_multipliers_or_with_another_prefactor_is_warned_about() -> None:
    model = four_layer_mlp()
    optimizer = torch.optim.AdamW(maxp.create_param_groups(model, 0.1, parametrization="mup"))
    with pytest.warns(MaxPWarning, match=r"lack the output multiplier n\^-a the learning rates assume"):
        maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup")
    model, _, optimizer = readme_setup(lr=0.1)
    with pytest.warns(MaxPWarning, match=r"'0' starts at lr = 0\.0125 but lr_prefactor \* n\^-c = 0\.000125"):
        maxp.MaxPScheduler(optimizer, model, 0.001, parametrization="mup")


# --- the current release's README -----------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, width):
        from maxp_torch.published import ParametrizedModule

        super().__init__()
        self.emb = ParametrizedModule(
            nn.Linear(784, width, bias=False), width_dim=width, layer_type="embedding"
        )
        self.fc1 = ParametrizedModule(
            nn.Linear(width, width, bias=False), width_dim=width, layer_type="hidden"
        )
        self.head = ParametrizedModule(nn.Linear(width, 10, bias=False),
                                       width_dim=width, layer_type="readout")  # fmt: skip

    def forward(self, x):
        return self.head(torch.relu(self.fc1(self.emb(x))))


def test_current_release_quick_start_and_training_loop() -> None:
    train_loader = loader(110)
    criterion = nn.CrossEntropyLoss()
    X_init = train_loader[0][0]
    torch.manual_seed(0)
    from maxp_torch.published import Parametrization

    model = MLP(width=256)
    param = Parametrization(model, lr_prefactor=1e-3, warmup_steps=100, solve_interval=10)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(X_init)
    assert [(g["layer_name"], g["c"], g["fan_in"], g["maxp_managed"]) for g in param.param_groups] == [
        ("emb", 0.5, 256, True), ("fc1", 1.0, 256, True), ("head", 0.5, 256, True)
    ]  # fmt: skip
    assert (model.fc1.alpha, model.fc1.omega, model.fc1.u) == (1.0, 0.5, 1.0)  # the preset until measured
    for X, y in train_loader:
        optimizer.zero_grad()
        loss = criterion(model(X), y)
        loss.backward()
        optimizer.step()
        param.step(X, optimizer)
    assert param.solves == 1  # step 110: after the warm-up, on the interval
    measured = [(m.alpha, m.omega, m.u) for m in (model.emb, model.fc1, model.head)]
    assert measured[1] != (1.0, 0.5, 1.0)
    expected = lp_rates(1e-3, 256, [-0.5, 0.0, 0.5], [0.5] * 3, list(zip(*measured, strict=True)))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected, rel=1e-7)
    assert [g["lr"] for g in param.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["c"] for g in optimizer.param_groups] == pytest.approx(param.c.tolist())


def test_current_release_modules_signature_dag_and_pinning() -> None:
    n, vocab, n_heads = 64, 100, 4
    from maxp_torch.published import Parametrization, ParametrizedModule

    # README, "ParametrizedModule".
    fc = ParametrizedModule(nn.Linear(n, n), width_dim=n, layer_type="hidden")
    emb = ParametrizedModule(nn.Embedding(vocab, n), width_dim=n, layer_type="embedding")
    qk = ParametrizedModule(lambda q, k: q @ k.T, width_dim=n // n_heads, layer_type="readout")
    custom = ParametrizedModule(nn.Linear(n, n), width_dim=n, layer_type="hidden", a=0.0, b=0.5, c=1.5)
    assert (fc.layer_type, emb.weight.shape, qk.weight, custom.c) == ("hidden", (vocab, n), None, 1.5)
    assert ParametrizedModule(nn.Linear(n, n), width_dim=n).layer_type == "hidden"
    # README, the full signature.
    model = MLP(width=64)
    param = Parametrization(
        model,
        optimizer_type="adam",       # "adam" or "sgd" — needed for LP formulation
        alignment="full",            # "full" (worst-case) or "no" (no alignment)
        lr_prefactor=1e-3,           # base learning rate multiplier
        std_prefactor=1.0,           # weight init multiplier
        ab_overrides=None,           # dict: layer_type -> (a, b) to override defaults
        c_overrides=None,            # dict: layer_type -> c to pin c per layer type
        alignment_overrides=None,    # dict: name/suffix/type -> (align_z0_dW, align_dZ_w0, align_dZ_dW)
        sample_input=None,           # provide to trace actual data-flow DAG
        warmup_steps=0,              # steps before first dynamic LP re-solve
        solve_interval=1,            # re-solve every N steps
        sample_size=32,              # max batch size for alignment measurement
        c_ema=0.0,                   # EMA smoothing for c values (0 = instant)
        alignment_ema=0.0,           # EMA smoothing for measured alignment values
        resample_w0=False,           # re-sample w0 snapshot each solve
        use_training_activations=False,  # use activations from training forward pass
        solver=None,                 # custom PuLP solver (default: CBC)
        warm_start=False,            # warm-start LP from previous c solution
    )  # fmt: skip
    optimizer = torch.optim.AdamW(param.param_groups)
    assert param.c.tolist() == [0.5, 1.0, 0.5]
    # README, "DAG-based LP solving": the traced graph of a chain gives the chain's c.
    X_sample = torch.randn(1, 784)
    param = Parametrization(model, sample_input=X_sample, lr_prefactor=1e-3)
    assert param.c.tolist() == [0.5, 1.0, 0.5]
    # README, "Pinning alignment" (on a model that has the names it pins).
    model = nn.Sequential()
    model.add_module("emb", ParametrizedModule(nn.Linear(8, n), width_dim=n, layer_type="embedding"))
    ff = nn.ModuleDict({"fc": ParametrizedModule(nn.Linear(n, n), width_dim=n)})
    ff["out"] = ParametrizedModule(nn.Linear(n, n), width_dim=n)
    model.add_module("blocks", nn.ModuleList([nn.ModuleDict({"ff": ff})]))
    model.add_module("head", ParametrizedModule(nn.Linear(n, 2), width_dim=n, layer_type="readout"))
    param = Parametrization(
        model,
        alignment_overrides={
            "head":    (1.0, 0.5, 1.0),   # pin by exact name
            "fc":      (0.8, 0.5, 0.8),   # pin by name suffix (matches "blocks.0.ff.fc")
            "hidden":  (0.5, 0.5, 0.5),   # pin by layer_type
        },
    )  # fmt: skip
    pinned = {name: (n.alpha, n.omega, n.u) for name in param.names for n in [param.graph.node(name)]}
    assert pinned["blocks.0.ff.fc"] == (0.8, 0.5, 0.8) and pinned["blocks.0.ff.out"] == (0.5, 0.5, 0.5)
    assert optimizer is not None


def test_current_release_external_schedule_and_coordinate_check(tmp_path, capsys) -> None:
    train_loader = loader(4, in_dim=784)
    torch.manual_seed(0)
    model = MLP(width=64)
    param = maxp.Parametrization(model, lr_prefactor=1e-3)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(train_loader[0][0])
    base_lr = 1e-3

    def lr_schedule(step):
        return 1.0 / (1 + step)

    # README, "External lr_prefactor schedule": applied at the next step, re-solve or not.
    for step, (X, y) in enumerate(train_loader):
        nn.functional.cross_entropy(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        param.lr_prefactor = base_lr * lr_schedule(step)
        param.step(X, optimizer)
        factors = [64**-c for c in param.c]
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [param.lr_prefactor * f for f in factors]
        )
    # README, "Coordinate check".
    from maxp_torch.published import diagnose_axis, plot_axis, print_axis

    vocab_size, seq_len = 50, 6

    class MyModel(nn.Module):
        def __init__(self, width):
            super().__init__()
            P = maxp.ParametrizedModule
            self.tok_emb = P(nn.Embedding(vocab_size, width), width_dim=width, layer_type="embedding")
            self.fc = P(nn.Linear(width, width), width_dim=width)
            self.head = P(nn.Linear(width, vocab_size), width_dim=width, layer_type="readout")

        def forward(self, idx):
            return self.head(torch.relu(self.fc(self.tok_emb(idx))))

    widths = [64, 128, 256, 512]

    def make_model(width):
        model = MyModel(width)
        param = maxp.Parametrization(model, lr_prefactor=1e-3)
        return model, param.param_groups

    def make_input(width):
        return torch.randint(0, vocab_size, (4, seq_len))

    all_ops, affected, act_stats = diagnose_axis(make_model, make_input, widths)
    print_axis("width", all_ops, affected, act_stats, widths)
    plot_axis("width", all_ops, affected, act_stats, widths, filename=tmp_path / "coord_check.png")
    assert all_ops == ["tok_emb", "fc", "head"] and affected == []  # muP: nothing grows with width
    assert (
        "0 of 3 ops scale with width" in capsys.readouterr().out and (tmp_path / "coord_check.png").exists()
    )


def test_current_release_attention_score_module_and_traced_graph() -> None:
    # The tutorial's parameter-free score module: a readout-type multiplier head_dim^-a.
    from maxp_torch.published import ParametrizedModule, find_c, trace_pm_dag

    head_dim = 16
    score = ParametrizedModule(lambda q, k: q @ k.transpose(-2, -1), width_dim=head_dim, layer_type="readout")

    class Attention(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.emb = ParametrizedModule(nn.Linear(8, d, bias=False), width_dim=d, layer_type="embedding")
            self.qkv = ParametrizedModule(nn.Linear(d, 3 * d, bias=False), width_dim=d)
            self.attn_score = score
            self.proj = ParametrizedModule(nn.Linear(d, d, bias=False), width_dim=d)
            self.head = ParametrizedModule(nn.Linear(d, 2, bias=False), width_dim=d, layer_type="readout")

        def forward(self, x):
            h = self.emb(x)
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            out = self.attn_score(q, k).softmax(dim=-1) @ v
            return self.head(h + self.proj(out))

    model = Attention(head_dim)
    x = torch.randn(2, 5, 8)
    param = maxp.Parametrization(model, sample_input=x)
    assert score.scale == pytest.approx(head_dim**-0.5)
    solved = find_c(trace_pm_dag(model, x))
    assert {name: solved[name][0] for name in param.get_layer_names()} == pytest.approx(
        dict(zip(param.get_layer_names(), param.c.tolist(), strict=True))
    )
    with pytest.raises(CallOrderError):
        param.step()


def test_what_the_published_api_let_pass_silently_is_refused() -> None:
    model, param_groups, optimizer = readme_setup(lr=0.1)
    # A WSD warm-up under a chain would be taken as the chained schedulers' base rate.
    warming = maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup", wsd_warmup_steps=10)
    with pytest.raises(ValueError, match="chain a warm-up scheduler"):
        maxp.ChainedMaxPScheduler(warming, [])
    # A scheduler built before the MaxPScheduler started from rates it has since overwritten.
    model, param_groups, optimizer = readme_setup(lr=0.1)
    early = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)
    late = maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup")
    with pytest.raises(ValueError, match="build the chained schedulers after the MaxPScheduler"):
        maxp.ChainedMaxPScheduler(late, [early])
    # An SGD optimizer under Adam's LP.
    with pytest.raises(ValueError, match="solved for optimizer_type='adam' but the optimizer is SGD"):
        maxp.MaxPScheduler(
            torch.optim.SGD(param_groups, lr=0.1), model, 0.1, parametrization="mup", optimizer_type="adam"
        )
    # Keyword arguments that would overwrite maxP's own group keys.
    with pytest.raises(ValueError, match=r"sets \['lr'\] itself"):
        maxp.create_param_groups(model, 0.1, parametrization="mup", lr=1e-3)
    # Switching multipliers off would leave the earlier wrappers' scales in place.
    with pytest.raises(ValueError, match="apply_multipliers=False, but"):
        maxp.initialize_abc_weights(model, parametrization="ntk", apply_multipliers=False)
    # resample_w0 redraws the initial weights: with another seed they are not the model's.
    scheduler = maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup", resample_w0=True, seed=1)
    with pytest.raises(ValueError, match="resample_w0=True redraws layer '2'"):
        scheduler.capture_initial(torch.randn(8, 32))
    scheduler = maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup", resample_w0=True)
    scheduler.capture_initial(torch.randn(8, 32))  # the seed of initialize_abc_weights: the same weights


def test_a_tied_weight_is_one_group_named_by_its_first_use() -> None:
    class Tied(nn.Module):
        def __init__(self, vocab=20, d=32):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.fc = nn.Linear(d, d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(torch.relu(self.fc(self.emb(idx))))

    model = Tied()
    maxp.initialize_abc_weights(model, parametrization="sp")
    groups = maxp.create_param_groups(model, 0.1, parametrization="sp")
    assert [g["layer_name"] for g in groups] == ["emb", "fc", "_other"]
    # sp/adam/full: embedding c = 0, readout c = 1: the tied weight runs at the readout's smaller rate.
    assert groups[0]["lr"] == pytest.approx(0.1 / 32) and groups[0]["c"] == pytest.approx(1.0)
    scheduler = maxp.MaxPScheduler(torch.optim.AdamW(groups), model, 0.1, parametrization="sp")
    assert scheduler.get_layer_names() == ["emb", "fc"] and scheduler.get_last_lr()[0] == pytest.approx(
        0.1 / 32
    )


# --- the current release's own examples: call shapes written here ---------------------------


class SweepMLP(nn.Module):
    """The dynamic sweep examples' model: three wrapped linear layers."""

    def __init__(self, width: int = 64, in_dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = maxp.ParametrizedModule(nn.Linear(in_dim, width), width, "embedding")
        self.hidden = maxp.ParametrizedModule(nn.Linear(width, width), width, "hidden")
        self.readout = maxp.ParametrizedModule(nn.Linear(width, classes), width, "readout")

    def forward(self, x):
        return self.readout(torch.relu(self.hidden(torch.relu(self.embed(x)))))


def test_a_dynamic_sweep_reads_each_layer_through_pms() -> None:
    """As the dynamic sweeps do: SGD on the groups, capture, step, then per layer through
    ``param._pms`` its ``alpha, omega, u`` and the rate of its group found by ``layer_name``."""
    x, y = loader(1, in_dim=16, batch=32, classes=5)[0]
    model = SweepMLP()
    param = maxp.Parametrization(
        model, lr_prefactor=0.1, optimizer_type="sgd", alignment="full", warmup_steps=2, solve_interval=2,
        sample_size=16,
    )  # fmt: skip
    optimizer = torch.optim.SGD(param.param_groups, lr=0.1)
    param.capture_initial(x[:16])
    history = []
    for _ in range(6):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        param.step(x[:16], optimizer)
        row = {}
        for name, pm in param._pms:
            if pm.weight is not None:
                lr = next(g["lr"] for g in param.param_groups if g.get("layer_name") == name)
                row[name] = (pm.alpha, pm.omega, pm.u, lr)
        history.append(row)
    assert [name for name, _ in param._pms] == ["embed", "hidden", "readout"]
    alpha, omega, u = param.get_alignment()
    last = history[-1]
    assert [last[n][:3] for n in ("embed", "hidden", "readout")] == list(zip(alpha, omega, u, strict=True))
    assert [last[n][3] for n in ("embed", "hidden", "readout")] == param.get_last_lr()
    assert param.solves == 2 and history[0] != history[-1]  # after steps 4 and 6, as published


def test_the_published_verification_reads_the_initial_state_of_each_layer() -> None:
    """As ``docs/verify.py`` does: ``pm._z0`` are the layer's captured input rows and
    ``pm._w0`` its initial weight, shaped as the weight; ``None`` before the capture."""
    x, y = loader(1, in_dim=16, batch=32, classes=5)[0]
    for resample_w0 in (False, True):
        model = SweepMLP()
        param = maxp.Parametrization(model, lr_prefactor=0.1, resample_w0=resample_w0, seed=3)
        hidden = model.hidden
        assert hidden._z0 is None and hidden._w0 is None
        initial = hidden.weight.detach().clone()
        with torch.no_grad():
            rows = torch.relu(model.embed.inner(x[: param.sample_size]) * model.embed.scale)
        param.capture_initial(x)
        optimizer = torch.optim.AdamW(param.param_groups)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        assert hidden._w0.shape == hidden.weight.shape
        assert torch.equal(hidden._w0, initial) and not torch.equal(hidden.weight, initial)
        torch.testing.assert_close(hidden._z0, rows)
        assert model.embed._z0 is None  # an embedding's alignment is not measured


class TokenModel(nn.Module):
    """A model with the published example's ``tok_emb``: embedding, one hidden layer, readout."""

    def __init__(self, width: int, vocab: int = 32, wrapped: bool = False) -> None:
        super().__init__()

        def wrap(module, kind):
            return maxp.ParametrizedModule(module, width, kind) if wrapped else module

        self.tok_emb = wrap(nn.Embedding(vocab, width), "embedding")
        self.fc = wrap(nn.Linear(width, width), "hidden")
        self.head = wrap(nn.Linear(width, vocab, bias=False), "readout")

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.tok_emb(ids))))


def make_plain(width):
    return TokenModel(width), None


def make_parametrized(width):
    model = TokenModel(width, wrapped=True)
    return model, maxp.Parametrization(model, lr_prefactor=1.0, seed=0).param_groups


def make_tokens(width):
    return torch.randint(0, 32, (1, 8))


@pytest.mark.parametrize("make", [make_plain, make_parametrized], ids=["plain, None groups", "parametrized"])
def test_the_published_coordinate_check_call_shape(make, tmp_path, capsys) -> None:
    """As the current release's ``parameterize_example/run.py`` calls it, with its keywords."""
    widths, steps, seeds = [16, 32, 64], 3, 2
    ops, affected, act_stats = maxp.diagnose_axis(
        make_model_fn=make, make_input_fn=make_tokens, widths=widths, n_steps=steps, n_seeds=seeds
    )
    assert [op.op for op in ops] == ["embedding", "linear", "linear"]
    inner = ".inner" if make is make_parametrized else ""
    assert [maxp.op_label(op) for op in ops] == [
        f"#0 tok_emb{inner}",
        f"#1 fc{inner}",
        f"#2 head{inner}",
    ]
    assert affected == [0, 1, 2] and act_stats.shape == (3, steps, len(widths), seeds)
    # The first measurement of seed 1 at width 32, redone by hand with the published seeding.
    torch.manual_seed(1 * 1000 + 32)
    model, _ = make(32)
    torch.manual_seed(1 * 100000 + 0)
    expected = maxp.measure_activations(model, make_tokens(32))
    assert act_stats[:, 0, 1, 1].tolist() == [expected[op.index] for op in ops]
    assert not np.array_equal(act_stats[:, 0], act_stats[:, -1])  # the steps trained
    maxp.print_axis("d_model", ops, affected, act_stats, widths)
    printed = capsys.readouterr().out
    assert "d_model=64" in printed and f"{act_stats[1, 0, 2].mean():.4f}" in printed
    path = maxp.plot_axis("d_model", ops, affected, act_stats, widths, tmp_path / "c.png", plot_every=2)
    assert path.stat().st_size > 1000


def test_the_published_coordinate_check_names_what_its_default_step_needs() -> None:
    def make(width):
        model = nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2))
        return model, None

    with pytest.raises(ValueError, match=r"reads the vocabulary from model.tok_emb.*pass train_step_fn"):
        maxp.diagnose_axis(
            make_model_fn=make,
            make_input_fn=lambda w: torch.randn(2, 4),
            widths=[8, 16],
            n_steps=1,
            n_seeds=1,
        )


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (
            {"wsd_decay_type": "cosine", "wsd_stable_steps": 10},
            "needs both wsd_stable_steps and wsd_decay_steps",
        ),
        ({"wsd_decay_type": "step"}, "unknown wsd_decay_type 'step'"),
        ({"wsd_stable_steps": 5}, r"wsd_decay_type='none' has no decay phase, but \['wsd_stable_steps'\]"),
        (
            {"wsd_decay_type": "linear", "wsd_stable_steps": 5, "wsd_decay_steps": 0},
            "wsd_decay_steps must be",
        ),
        ({"wsd_min_factor": 2.0}, r"wsd_min_factor must be in \[0, 1\]"),
        ({"wsd_warmup_steps": -1}, "wsd_warmup_steps must be an integer >= 0"),
    ],
)
def test_wsd_errors_name_the_arguments_as_the_user_wrote_them(kwargs, named) -> None:
    model, _, optimizer = readme_setup(lr=0.1)
    with pytest.raises(ValueError, match=named):
        maxp.MaxPScheduler(optimizer, model, 0.1, parametrization="mup", **kwargs)


def test_the_wsd_decay_runs_on_the_rates_of_the_last_stable_step() -> None:
    model, _, optimizer = readme_setup(lr=0.1)
    scheduler = maxp.MaxPScheduler(
        optimizer, model, 0.1, parametrization="mup", solver_warmup_steps=0, solve_interval=1,
        wsd_stable_steps=6, wsd_decay_steps=4, wsd_decay_type="linear",
    )  # fmt: skip
    x, y = loader(1, in_dim=32)[0]
    scheduler.capture_initial(x)
    used = []  # the rates each optimizer step trains with, over the WSD multiplier of that step
    for step in range(10):
        used.append([lr / float(scheduler.wsd(step)) for lr in scheduler.get_last_lr()] if step < 9 else None)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step(x)
    assert scheduler.param.solves == 5  # after steps 1 to 5: the sixth and last stable step's rates
    assert used[5] != used[4]  # the last stable step trained on the last re-solve's rates
    for decayed in used[6:9]:
        assert decayed == pytest.approx(used[5], rel=1e-12)


def test_the_published_verification_solves_for_alignments_set_by_hand() -> None:
    """``param._resolve_chain()`` solves at the ``alpha, omega, u`` set on the layers, as
    ``docs/verify.py`` does, and leaves the rates alone."""
    param = maxp.Parametrization(SweepMLP(), lr_prefactor=0.1, seed=0)
    rates = param.get_last_lr()
    for (_, pm), triple in zip(param._pms, [(1.0, 0.5, 1.0), (0.6, 0.4, 0.5), (0.7, 0.3, 0.6)], strict=True):
        pm.alpha, pm.omega, pm.u = triple
    solved = param._resolve_chain()
    expected = param.lp.solve(alpha=[1.0, 0.6, 0.7], omega=[0.5, 0.4, 0.3], u=[1.0, 0.5, 0.6]).c
    assert solved == pytest.approx(dict(expected), abs=1e-12)
    assert param._resolve_dag() == solved and param.get_last_lr() == rates


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_steps": 0}, "n_steps must be an integer >= 1, got 0"),
        ({"n_seeds": 1.5}, "n_seeds must be an integer >= 1"),
        ({"train_step_fn": "adam"}, "train_step_fn must be a function"),
    ],
)
def test_the_published_coordinate_check_names_a_bad_argument(kwargs, named) -> None:
    arguments = {"make_model_fn": make_plain, "make_input_fn": make_tokens, "widths": [16, 32], **kwargs}
    with pytest.raises(ValueError, match=named):
        maxp.diagnose_axis(**arguments)
