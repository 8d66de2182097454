"""maxp_torch under bad input and injected faults: a clear error, or the last good rates kept."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from maxp_core import MaxPError, MaxPWarning
from maxp_torch import (
    ChainedMaxPScheduler,
    MaxPScheduler,
    Parametrization,
    ParametrizedModule,
    create_param_groups,
    get_linear_layers,
    initialize_abc_weights,
    register_optimizer,
)
from tests.torch.resume import assert_same_run, straight_and_resumed
from tests.torch.test_parametrization import MLP as BaseMLP


def MLP(**kwargs) -> nn.Module:
    """The MLP of test_parametrization at this file's sizes (inputs 8, width 32, 5 classes)."""
    return BaseMLP(**{"width": 32, "in_dim": 8, "out": 5, **kwargs})


def data(n=32, in_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, in_dim, generator=g), torch.randint(0, 5, (n,), generator=g)


def train(model, param, optimizer, x, y, steps, step_x=None):
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        param.step(x if step_x is None else step_x, optimizer)


# --- bad arguments: a clear MaxPError naming the culprit ------------------------------------

BAD_PARAMETRIZATION = [
    ({"lr_prefactor": float("nan")}, "lr_prefactor = nan"),
    ({"lr_prefactor": float("inf")}, "lr_prefactor = inf"),
    ({"lr_prefactor": -1e-3}, "lr_prefactor = -0.001 must be > 0"),
    ({"lr_prefactor": 0.0}, "lr_prefactor = 0.0 must be > 0"),
    ({"lr_prefactor": "1e-3"}, "lr_prefactor must be a real number"),
    ({"lr_prefactor": True}, "lr_prefactor must be a real number"),
    ({"lr_prefactor": 1e-3 + 0j}, "lr_prefactor must be a real number"),
    ({"std_prefactor": 0.0}, "std_prefactor = 0.0 must be > 0"),
    ({"sample_size": -5}, "sample_size must be an integer >= 1, got -5"),
    ({"sample_size": 2.7}, "sample_size must be an integer >= 1, got float 2.7"),
    ({"sample_size": 0}, "sample_size must be an integer >= 1, got 0"),
    ({"sample_size": True}, "sample_size must be an integer"),
    ({"feature_learning": "no"}, "feature_learning must be True or False, got str 'no'"),
    ({"resample_w0": 1}, "resample_w0 must be True or False"),
    ({"use_training_activations": "yes"}, "use_training_activations must be True or False"),
    ({"warm_start": None}, "warm_start must be True or False"),
    ({"alignment_ema": 2.0}, "alignment_ema = 2.0 is out of range"),
    ({"c_ema": -0.1}, "c_ema = -0.1 is out of range"),
    ({"c_ema": float("nan")}, "c_ema = nan is not a finite number"),
    ({"norm_mode": "l2"}, "unknown norm_mode 'l2'"),
    ({"optimizer_type": "adagrad"}, "unknown optimizer 'adagrad'"),
    ({"parametrization": "mu"}, "unknown parametrization 'mu'"),
    ({"alignment": "partial"}, "unknown alignment preset 'partial'"),
    ({"alignment_overrides": {"nope": (0.5, 0.5, 0.5)}}, r"keys \['nope'\] match no layer"),
    ({"alignment_overrides": {"hidden": (0.5, 0.5)}}, r"alignment_overrides\['hidden'\] must be three"),
    ({"alignment_overrides": {"hidden": (1.5, 0.5, 0.5)}}, r"'hidden'\]: alpha = 1.5 is out of range"),
    ({"alignment_overrides": {"hidden": (0.5, -0.1, 0.5)}}, r"'hidden'\]: omega = -0.1 is out of range"),
    ({"alignment_overrides": {"hidden": "abc"}}, r"alignment_overrides\['hidden'\] must be three"),
    ({"alignment_overrides": [("hidden", (0.5, 0.5, 0.5))]}, "alignment_overrides must be a mapping"),
    ({"ab_overrides": {"hidden": (0.0, 0.5, 1.0)}}, r"ab_overrides\['hidden'\] must be a pair"),
    ({"ab_overrides": {"hidden": (float("nan"), 0.5)}}, r"ab_overrides\['hidden'\]: a = nan"),
    ({"ab_overrides": {"middle": (0.0, 0.5)}}, "unknown key 'middle'"),
    ({"ab_overrides": {"hidden": (0.0, 1.0)}}, r"layer 'layers.1' \(hidden\): a \+ b"),
    ({"c_overrides": {"hidden": None}}, r"c_overrides\['hidden'\] must be a real number"),
    ({"c_overrides": {"hidden": 1e20}}, r"c_overrides\['hidden'\] = 1e\+20 is out of range"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
    ({"solve_interval": 0}, "solve_interval must be an integer >= 1"),
    ({"solve_interval": 1.5}, "solve_interval must be an integer"),
    ({"solver": "gurobi"}, "unknown solver 'gurobi'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_PARAMETRIZATION)
def test_bad_parametrization_arguments_name_the_culprit(kwargs, message) -> None:
    with pytest.raises(MaxPError, match=message):
        Parametrization(MLP(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width_dim": 0}, "width_dim must be a positive integer"),
        ({"width_dim": 32.0}, "width_dim must be a positive integer"),
        ({"layer_type": "middle"}, "unknown layer_type 'middle'"),
        ({"a": float("nan")}, "a = nan is not a finite number"),
        ({"b": "0.5"}, "b must be a real number"),
        ({"c": 1e30}, "c = 1e\\+30 is out of range"),
    ],
)
def test_bad_parametrized_module_arguments(kwargs, message) -> None:
    args = {"width_dim": 32, "layer_type": "hidden", **kwargs}
    with pytest.raises(MaxPError, match=message):
        ParametrizedModule(nn.Linear(32, 32), **args)


def test_numpy_scalars_are_valid_numbers() -> None:
    param = Parametrization(MLP(), lr_prefactor=np.float32(0.01), sample_size=np.int64(8), seed=np.int64(0))
    assert param.sample_size == 8 and param.lr_prefactor == pytest.approx(0.01)


def plain_mlp():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def test_unknown_optimizer_class_is_refused_not_treated_as_adam() -> None:
    model = plain_mlp()
    initialize_abc_weights(model, parametrization="mup")
    optimizer = torch.optim.Adagrad(create_param_groups(model, lr_prefactor=0.1, parametrization="mup"))
    with pytest.raises(MaxPError, match="does not know whether Adagrad behaves like Adam"):
        MaxPScheduler(optimizer, model, lr_prefactor=0.1, parametrization="mup")
    # Declaring it explicitly is the way out.
    assert (
        MaxPScheduler(
            optimizer, model, lr_prefactor=0.1, parametrization="mup", optimizer_type="adam"
        ).param.optimizer_type
        == "adam"
    )


def test_registered_optimizer_class_is_accepted() -> None:
    class Lion(torch.optim.SGD):  # a stand-in subclass: not SGD-like for the LP
        pass

    register_optimizer(Lion, "adam")
    model = plain_mlp()
    initialize_abc_weights(model, parametrization="mup")
    optimizer = Lion(create_param_groups(model, lr_prefactor=0.1, parametrization="mup"), lr=0.1)
    assert (
        MaxPScheduler(optimizer, model, lr_prefactor=0.1, parametrization="mup").param.optimizer_type
        == "adam"
    )
    with pytest.raises(MaxPError, match=r"register_optimizer takes a torch\.optim\.Optimizer subclass"):
        register_optimizer(dict, "adam")


def test_optimizer_of_the_wrong_kind_for_the_lp_is_refused() -> None:
    model = MLP()
    param = Parametrization(model, optimizer_type="adam", warmup_steps=100)
    optimizer = torch.optim.SGD(param.param_groups, lr=0.1)
    with pytest.raises(MaxPError, match=r"solved for optimizer_type='adam' but the optimizer is SGD"):
        param.step(None, optimizer)


def test_capture_initial_twice_or_after_resume_is_refused() -> None:
    x, y = data()
    model = MLP()
    param = Parametrization(model)
    with pytest.raises(MaxPError, match="input batch is empty"):
        param.capture_initial(x[:0])
    param.capture_initial(x)
    with pytest.raises(MaxPError, match="capture_initial after an earlier capture"):
        param.capture_initial(x)
    optimizer = torch.optim.AdamW(param.param_groups)
    train(model, param, optimizer, x, y, 2)
    state = param.state_dict()
    fresh = Parametrization(model)
    fresh.load_state_dict(state)
    with pytest.raises(MaxPError, match="capture_initial after a loaded state"):
        fresh.capture_initial(x)


# --- injected faults in training: rates finite and equal to the last good ones ----------------


def dynamic_run(**kwargs):
    torch.manual_seed(0)
    model = MLP(dropout=kwargs.pop("dropout", 0.0), bias=kwargs.pop("bias", True))
    param = Parametrization(model, lr_prefactor=1e-2, warmup_steps=0, solve_interval=1, **kwargs)
    return model, param, torch.optim.AdamW(param.param_groups)


def test_nan_gradients_keep_the_last_good_rates_and_warn() -> None:
    x, y = data()
    model, param, optimizer = dynamic_run()
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 3)
    good, failures = param.get_last_lr(), param.failures
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        p.grad.fill_(float("nan"))
    optimizer.step()  # the weights are NaN from here on: the run diverged
    with pytest.warns(MaxPWarning, match=r"re-solve failed .* are not finite") as told:
        param.step(x, optimizer)
    assert told[0].filename == __file__
    assert param.get_last_lr() == good
    assert all(np.isfinite(param.get_last_lr()))
    assert param.failures == failures + 1
    assert [g["lr"] for g in optimizer.param_groups[:4]] == good


def test_all_zero_sample_is_missing_and_keeps_the_preset_rates() -> None:
    x, y = data()
    model, param, optimizer = dynamic_run(bias=False)
    preset = param.get_last_lr()
    param.capture_initial(torch.zeros_like(x))  # every layer's input is zero: no information at all
    with pytest.warns(MaxPWarning, match=r"layer 'layers\.1' carried no information") as told:
        train(model, param, optimizer, x, y, 3)
    assert param.get_last_lr() == preset  # not 10-25x larger, as alignment 0 would give
    assert param.missing == 3 * 3 * 3  # three measured layers, three numbers, three re-solves
    assert sum("layers.1" in str(w.message) for w in told) == 1  # once per layer and reason


def test_weights_that_do_not_move_are_missing_not_zero() -> None:
    x, _ = data()
    _, param, optimizer = dynamic_run()
    preset = param.get_last_lr()
    param.capture_initial(x)
    with pytest.warns(MaxPWarning, match="has changed since initialisation"):
        for _ in range(2):
            param.step(x, optimizer)  # no optimizer step: nothing moved
    assert param.get_last_lr() == preset
    assert param.solves == 2 and param.missing > 0


def test_nan_training_batch_with_training_activations_keeps_the_rates() -> None:
    x, y = data()
    model, param, optimizer = dynamic_run(use_training_activations=True)
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 2)
    good = param.get_last_lr()
    bad = torch.full_like(x, float("nan"))
    with pytest.warns(MaxPWarning, match="not finite"):
        model(bad)  # the training forward the step measures
        param.step(bad, optimizer)
    assert param.get_last_lr() == good
    assert param.failures == 1


def test_measurement_runs_in_eval_mode_and_leaves_the_rng_alone() -> None:
    x, y = data()
    noisy_model, noisy, optimizer = dynamic_run(dropout=0.5)
    clean_model, clean, _ = dynamic_run(dropout=0.0)
    clean_model.load_state_dict(noisy_model.state_dict())
    noisy.capture_initial(x)
    clean.capture_initial(x)
    train(noisy_model, noisy, optimizer, x, y, 1)
    with torch.no_grad():
        for p, q in zip(clean_model.parameters(), noisy_model.parameters(), strict=True):
            p.copy_(q)
    rng = torch.get_rng_state()
    assert noisy_model.training
    noisy.step(x, optimizer)
    clean.step(x, None)
    assert torch.equal(rng, torch.get_rng_state())  # maxP drew no random numbers
    assert noisy_model.training and noisy_model.drop.training  # train mode restored
    # Dropout noise did not enter the measurement: the same alignments as without dropout.
    np.testing.assert_allclose(noisy.get_alignment(), clean.get_alignment(), rtol=0, atol=1e-6)


def test_turning_maxp_on_does_not_change_the_dropout_sequence() -> None:
    x, y = data()
    losses = {}
    for dynamic in (False, True):
        model, param, optimizer = dynamic_run(dropout=0.5)
        param.capture_initial(x)
        torch.manual_seed(123)
        masks = []
        for _ in range(3):
            optimizer.zero_grad()
            out = model(x)
            masks.append(torch.rand(3))
            nn.functional.cross_entropy(out, y).backward()
            optimizer.step()
            if dynamic:
                param.step(x, optimizer)
        losses[dynamic] = torch.stack(masks)
    assert torch.equal(losses[False], losses[True])


# --- chained schedulers: each group = outside factor x maxP's per-layer rate ------------------


def reference_factors(make_schedulers, steps):
    """The factors torch's own schedulers give a plain single-group optimizer at lr 1."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedulers = make_schedulers(optimizer)
    factors = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        for s in schedulers:
            s.step()
        factors.append(optimizer.param_groups[0]["lr"])
    return factors


SCHEDULES = {
    "linear warm-up": lambda opt: [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)],
    "cosine": lambda opt: [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)],
    "warm-up then cosine": lambda opt: [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    ],
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_chained_schedulers_multiply_every_layer_rate_by_their_factor(name) -> None:
    model = plain_mlp()
    initialize_abc_weights(model, parametrization="mup")
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=0.1, parametrization="mup"))
    maxp = MaxPScheduler(
        optimizer, model, lr_prefactor=0.1, parametrization="mup", solver_warmup_steps=10_000
    )
    layer_rates = maxp.get_last_lr()
    chained = ChainedMaxPScheduler(maxp, SCHEDULES[name](optimizer))
    x = torch.randn(16, 8)
    chained.capture_initial(x)
    expected = reference_factors(SCHEDULES[name], 12)
    seen = [chained.get_last_lr()]
    for _ in range(12):
        optimizer.step()
        chained.step(x)
        seen.append(chained.get_last_lr())
    for factor, rates in zip(expected, seen, strict=True):
        np.testing.assert_allclose(rates, [factor * r for r in layer_rates], rtol=1e-12)
    assert expected[0] == pytest.approx(0.1 if "warm-up" in name else 1.0)


# --- resume: bit-exact over 20 steps in every mode ---------------------------------------------

MODES = {
    "static": {"warmup_steps": 10_000},
    "dynamic": {"warmup_steps": 1, "solve_interval": 2},
    "dynamic with EMAs": {"warmup_steps": 1, "solve_interval": 1, "alignment_ema": 0.5, "c_ema": 0.3},
    "resample_w0": {"warmup_steps": 1, "solve_interval": 1, "resample_w0": True},
    "training activations": {"warmup_steps": 1, "solve_interval": 1, "use_training_activations": True},
    "spectral": {"warmup_steps": 1, "solve_interval": 3, "norm_mode": "spectral"},
}


class ResidualMLP(nn.Module):
    """A traced graph: residual adds become merge nodes, so the graph has more nodes than layers."""

    def __init__(self, width=32, depth=3, dropout=0.1):
        super().__init__()
        self.inp = ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding")
        self.hidden = nn.ModuleList(
            ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden")
            for _ in range(depth)
        )
        self.out = ParametrizedModule(nn.Linear(width, 5), width_dim=width, layer_type="readout")
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        h = self.inp(x)
        for layer in self.hidden:
            h = h + self.drop(torch.relu(layer(h)))
        return self.out(h)


RESUMED_MODELS = {
    "chain": lambda x: (MLP(dropout=0.1), {}),
    "traced residual": lambda x: (ResidualMLP(), {"sample_input": x}),
}


@pytest.mark.parametrize("kind", list(RESUMED_MODELS))
@pytest.mark.parametrize("mode", list(MODES))
def test_resume_is_bit_exact_over_20_steps(mode, kind) -> None:
    x, y = data(seed=3)

    def make():
        torch.manual_seed(5)
        model, traced = RESUMED_MODELS[kind](x)
        param = Parametrization(model, lr_prefactor=1e-2, **MODES[mode], **traced)
        return model, param, torch.optim.AdamW(param.param_groups)

    def run(model, param, optimizer, steps, seed):
        torch.manual_seed(seed)
        train(model, param, optimizer, x, y, steps)

    straight, resumed = straight_and_resumed(make, run, x)
    assert_same_run(straight, resumed)
    if mode != "static":
        assert straight[1].solves > 5


def test_resume_with_training_activations_needs_the_initial_model() -> None:
    x, y = data()
    model, param, optimizer = dynamic_run(use_training_activations=True)
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 2)
    state = param.state_dict()
    state["initial_model"] = None
    with pytest.raises(MaxPError, match="needs the initial model's weights"):
        Parametrization(model, use_training_activations=True).load_state_dict(state)


def test_warnings_point_at_the_users_line() -> None:
    x, _ = data()
    _, param, optimizer = dynamic_run()
    param.capture_initial(torch.zeros_like(x))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        param.step(x, optimizer)  # this line
    assert caught and all(w.filename == __file__ for w in caught)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"al": [0.0, float("nan"), 0.5], "bl": [0.0, 0.5, 0.5]}, "al of layer '2' = nan is not a finite"),
        ({"al": [0.0, 0.5, 0.5], "bl": [0.5, "x", 0.5]}, "bl of layer '2' must be a real number"),
        ({"al": 0.5, "bl": [0.0, 0.5, 0.5]}, "al must be a sequence of one value per layer"),
        (
            {"al": [0.0, 0.5, 0.5], "bl": [0.5, 0.5]},
            r"Length of bl \(2\) must match number of Linear layers \(3\)",
        ),
    ],
)
def test_first_release_exponent_lists_are_checked(kwargs, message) -> None:
    with pytest.raises(MaxPError, match=message):
        initialize_abc_weights(plain_mlp(), **kwargs)


@pytest.mark.parametrize("lr", [float("nan"), -0.1, 0.0, "0.1"])
def test_first_release_learning_rates_are_checked(lr) -> None:
    model = plain_mlp()
    with pytest.raises(MaxPError, match="lr_prefactor"):
        create_param_groups(model, lr_prefactor=lr, parametrization="mup")


def test_a_foreign_or_mismatched_state_is_refused_by_name() -> None:
    x, y = data()
    model, param, optimizer = dynamic_run()
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 2)
    state = param.state_dict()
    fresh = Parametrization(MLP())
    with pytest.raises(MaxPError, match=r"expected the mapping Parametrization.state_dict returns, got list"):
        fresh.load_state_dict([state])
    with pytest.raises(MaxPError, match=r"the state lacks \['z0', 'w0'\]; it is not a Parametrization"):
        fresh.load_state_dict({k: v for k, v in state.items() if k not in ("z0", "w0")})
    with pytest.raises(
        MaxPError, match=r"the state's c has shape \(2,\), this model's 4 weighted layers need \(4,\)"
    ):
        fresh.load_state_dict({**state, "c": state["c"][:2]})
    with pytest.raises(MaxPError, match=r"holds layers \['nowhere'\] that this model does not have"):
        fresh.load_state_dict({**state, "w0": {**state["w0"], "nowhere": torch.zeros(2, 2)}})
    fresh.load_state_dict(state)  # the state itself still loads
    assert fresh.c.tolist() == param.c.tolist()


CORRUPT_STATES = [
    (lambda s: {**s, "c": [float("nan"), *s["c"][1:]]}, r"c of layer 'layers.0' = nan is not a finite"),
    (lambda s: {**s, "c": [*s["c"][:3], 1e6]}, r"c of layer 'layers.3' = 1000000.0 is out of range"),
    (
        lambda s: {**s, "alignment": [[5.0, 0.5, 1.0], *s["alignment"][1:]]},
        r"alignment of 'layers.0': alpha = 5.0 is out of range",
    ),
    (
        lambda s: {**s, "alignment": [*s["alignment"][:2], [0.5, float("inf"), 0.5], *s["alignment"][3:]]},
        r"alignment of 'layers.2': omega = inf is not a finite",
    ),
    (
        lambda s: {**s, "alignment": [[0.5, 0.5], *s["alignment"][1:]]},
        r"alignment is ragged \(rows of unequal length\)",
    ),
    (lambda s: {**s, "step_count": "abc"}, r"the state's step_count must be an integer >= 0, got str 'abc'"),
    (lambda s: {**s, "step_count": 2.5}, r"the state's step_count must be an integer >= 0"),
    (lambda s: {**s, "solves": -1}, r"the state's solves must be an integer >= 0, got -1"),
    (lambda s: {**s, "failures": None}, r"the state's failures must be an integer >= 0"),
    (lambda s: {**s, "missing": True}, r"the state's missing must be an integer"),
    (lambda s: {**s, "lr_prefactor": float("nan")}, r"load_state_dict: lr_prefactor = nan"),
    (lambda s: {**s, "lr_prefactor": 0.0}, r"load_state_dict: lr_prefactor = 0.0 must be > 0"),
    (lambda s: {**s, "seed": -1}, r"load_state_dict: the state's seed must be an integer >= 0, got -1"),
    (lambda s: {**s, "c": "abc"}, r"the state's c has shape \(\), this model's 4 weighted layers"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPT_STATES)
def test_a_checkpoint_with_a_bad_number_is_refused_and_nothing_is_restored(corrupt, message) -> None:
    """Numbers read from a checkpoint are checked as strictly as numbers passed in code."""
    x, y = data()
    model, param, optimizer = dynamic_run()
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 3)
    state = param.state_dict()
    state = {**state, "c": list(state["c"]), "alignment": [list(row) for row in state["alignment"]]}
    fresh = Parametrization(MLP())
    before = (fresh.c.copy(), fresh.alignment.copy(), fresh.step_count, fresh.lr_prefactor)
    with pytest.raises(MaxPError, match=message):
        fresh.load_state_dict(corrupt(state))
    np.testing.assert_array_equal(fresh.c, before[0])
    np.testing.assert_array_equal(fresh.alignment, before[1])
    assert (fresh.step_count, fresh.lr_prefactor) == before[2:]


def test_step_without_the_optimizer_still_moves_the_optimizers_rates() -> None:
    """The Hugging Face Trainer steps a scheduler without arguments: the rates must still reach it."""
    x, y = data()
    model, param, optimizer = dynamic_run()
    param.capture_initial(x)
    first = [g["lr"] for g in optimizer.param_groups]
    for _ in range(4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        param.step(x)  # no optimizer
        assert [g["lr"] for g in optimizer.param_groups[: len(param.groups)]] == param.get_last_lr()
    assert param.solves >= 2 and param.get_last_lr() != first[: len(param.groups)]


# --- seeds: the initial weights follow torch.manual_seed unless seed= pins them -------------------


def _initial_weights(global_seed, **kwargs):
    torch.manual_seed(global_seed)
    model = MLP()
    Parametrization(model, **kwargs)
    return [m.weight.detach().clone() for m in model.layers]


def test_initial_weights_follow_torch_manual_seed() -> None:
    first, again, other = _initial_weights(0), _initial_weights(0), _initial_weights(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # The two hidden layers have the same shape and still get different draws.
    assert first[1].shape == first[2].shape and not torch.equal(first[1], first[2])
    # An explicit seed pins the draw whatever the global state.
    pinned = _initial_weights(0, seed=7), _initial_weights(1, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(*pinned, strict=True))
    assert not torch.equal(pinned[0][1], first[1])


def test_resample_w0_redraws_exactly_under_the_default_seed_and_after_a_resume() -> None:
    x, y = data()
    torch.manual_seed(11)
    model = MLP()
    param = Parametrization(model, lr_prefactor=1e-2, warmup_steps=0, solve_interval=1, resample_w0=True)
    optimizer = torch.optim.AdamW(param.param_groups)
    initial = [m.weight.detach().clone() for m in model.layers]
    param.capture_initial(x)  # refuses weights it could not redraw
    train(model, param, optimizer, x, y, 3)
    state = param.state_dict()
    torch.manual_seed(12)  # a resumed process starts from another global state
    fresh = Parametrization(MLP(), lr_prefactor=1e-2, warmup_steps=0, solve_interval=1, resample_w0=True)
    fresh.load_state_dict(state)
    for k, weight in enumerate(initial):
        assert torch.equal(fresh._initial_weight(k), weight)


def test_first_release_redraws_what_initialize_abc_weights_drew() -> None:
    x, _ = data()
    torch.manual_seed(4)
    model = plain_mlp()
    initialize_abc_weights(model, parametrization="mup")
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=1e-2, parametrization="mup"))
    scheduler = MaxPScheduler(optimizer, model, 1e-2, parametrization="mup", resample_w0=True, warmup_steps=0)
    scheduler.capture_initial(x)  # raises if the redraw differs from the weights
    other = plain_mlp()
    torch.manual_seed(5)
    initialize_abc_weights(other, parametrization="mup")
    assert not torch.equal(get_linear_layers(model)[0][1].weight, get_linear_layers(other)[0][1].weight)


@pytest.mark.parametrize(
    ("layer", "width", "shape"),
    [
        (nn.Linear(64, 64), 4096, r"\(64, 64\) that can grow with width \(64, 64\)"),
        (nn.Linear(16, 64), 32, r"\(64, 16\)"),
        (nn.Embedding(100, 64), 128, r"\(100, 64\)"),
        (nn.Conv2d(8, 16, 3), 3, r"\(16, 8, 3, 3\)"),
        (nn.Conv2d(64, 128, 3, groups=2), 32, r"\(128, 32, 3, 3\) that can grow with width \(128, 64\)"),
    ],
)
def test_a_width_dim_that_is_none_of_the_layers_axes_is_refused(layer, width, shape) -> None:
    model = nn.Sequential(
        ParametrizedModule(nn.Linear(8, 64), width_dim=64, layer_type="embedding"),
        ParametrizedModule(layer, width_dim=width, layer_type="hidden"),
    )
    with pytest.raises(
        MaxPError, match=rf"layer '1': width_dim={width} is none of its weight's axes {shape}"
    ):
        Parametrization(model)


def test_an_evaluation_between_the_step_and_param_step_does_not_change_training_activations() -> None:
    """Validate-then-step: only training forwards feed use_training_activations."""
    x, y = data()
    x_val = torch.randn(32, 8, generator=torch.Generator().manual_seed(9))
    runs = []
    for evaluate in (False, True):
        model, param, optimizer = dynamic_run(use_training_activations=True, dropout=0.1)
        param.capture_initial(x)
        for _ in range(4):
            torch.manual_seed(1)
            model.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if evaluate:
                model.eval()
                with torch.no_grad():
                    model(x_val)  # a validation pass
                model.train()
                with torch.no_grad():
                    model(x_val)  # train mode, gradients off: not a training forward either
            param.step(x, optimizer)
        runs.append(param.alignment.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


def test_a_model_on_the_meta_device_is_refused_with_what_to_do() -> None:
    with torch.device("meta"):
        model = MLP()
    with pytest.raises(
        MaxPError, match=r"layers.0.inner.weight, .* are on the 'meta' device .* model.to_empty"
    ):
        Parametrization(model)
    model.to_empty(device="cpu")
    param = Parametrization(model, seed=0)  # materialised: maxP draws the layers' weights
    assert all(torch.isfinite(m.weight).all() and m.weight.std() > 0 for m in model.layers)
    assert param.c.shape == (4,)


def test_a_state_saved_before_seeds_were_kept_redraws_from_the_old_fixed_seed() -> None:
    x, y = data()
    model = MLP()
    param = Parametrization(model, warmup_steps=0, solve_interval=1, resample_w0=True, seed=0)
    optimizer = torch.optim.AdamW(param.param_groups)
    initial = [m.weight.detach().clone() for m in model.layers]
    param.capture_initial(x)
    train(model, param, optimizer, x, y, 2)
    old_state = {k: v for k, v in param.state_dict().items() if k != "seed"}
    torch.manual_seed(3)
    fresh = Parametrization(MLP(), warmup_steps=0, solve_interval=1, resample_w0=True)
    fresh.load_state_dict(old_state)
    assert fresh.seed == 0
    assert all(torch.equal(fresh._initial_weight(k), w) for k, w in enumerate(initial))
    pinned = Parametrization(MLP(), warmup_steps=0, solve_interval=1, resample_w0=True, seed=5)
    pinned.load_state_dict(old_state)
    assert pinned.seed == 5  # a seed the caller gave is theirs to keep


def test_a_grouped_convolution_takes_its_input_channels_as_width() -> None:
    model = nn.Sequential(
        ParametrizedModule(nn.Linear(8, 64), width_dim=64, layer_type="embedding"),
        ParametrizedModule(nn.Conv2d(64, 128, 3, groups=2), width_dim=64, layer_type="hidden"),
        ParametrizedModule(nn.Linear(128, 4), width_dim=128, layer_type="readout"),
    )
    assert Parametrization(model).c.shape == (3,)


def _chained_first_release_run():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    initialize_abc_weights(model, parametrization="mup", seed=0)
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=1e-2, parametrization="mup"))
    maxp = MaxPScheduler(
        optimizer, model, 1e-2, parametrization="mup", solver_warmup_steps=1, solve_interval=1
    )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    return model, optimizer, maxp, ChainedMaxPScheduler(maxp, [cosine])


def _trained_scheduler_states():
    x, y = data()
    model, optimizer, _, chained = _chained_first_release_run()
    chained.capture_initial(x)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        chained.step()
    return chained.state_dict()


CORRUPT_SCHEDULER_STATES = [
    (lambda s: {**s, "base_lr": float("nan")}, r"load_state_dict: base_lr = nan"),
    (lambda s: {**s, "base_lr": float("inf")}, r"load_state_dict: base_lr = inf"),
    (lambda s: {**s, "base_lr": -0.1}, r"load_state_dict: base_lr = -0.1 must be > 0"),
    (lambda s: {**s, "base_lr": 0.0}, r"load_state_dict: base_lr = 0.0 must be > 0"),
    (lambda s: {**s, "base_lr": "0.01"}, r"load_state_dict: base_lr must be a real number"),
    (
        lambda s: {k: v for k, v in s.items() if k != "base_lr"},
        r"with 'base_lr' and 'param'; got \['param'\]",
    ),
    (lambda s: [s], r"MaxPScheduler.state_dict returns.*got list"),
    (lambda s: {**s, "param": {**s["param"], "c": [float("nan")] * 3}}, r"c of layer '0' = nan"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPT_SCHEDULER_STATES)
def test_a_maxp_scheduler_checkpoint_with_a_bad_entry_is_refused_and_nothing_is_restored(
    corrupt, message
) -> None:
    state = _trained_scheduler_states()["maxp"]
    _, optimizer, maxp, _ = _chained_first_release_run()
    before = ([g["lr"] for g in optimizer.param_groups], maxp.base_lr, maxp.param.step_count)
    with pytest.raises(MaxPError, match=message):
        maxp.load_state_dict(corrupt(state))
    assert ([g["lr"] for g in optimizer.param_groups], maxp.base_lr, maxp.param.step_count) == before


CORRUPT_CHAIN_STATES = [
    (lambda s: {**s, "shadow": [float("nan"), *s["shadow"][1:]]}, r"the state's shadow\[0\] = nan"),
    (lambda s: {**s, "shadow": [-1.0, *s["shadow"][1:]]}, r"the state's shadow\[0\] = -1.0 must be >= 0"),
    (lambda s: {**s, "shadow": s["shadow"][:2]}, r"'shadow' must list 4 rates, one per group"),
    (lambda s: {**s, "shadow": "0.1"}, r"'shadow' must list 4 rates"),
    (
        lambda s: {**s, "reference": [0.0, *s["reference"][1:]]},
        r"the state's reference\[0\] = 0.0 must be > 0",
    ),
    (lambda s: {**s, "reference": [float("inf")] * 3}, r"the state's reference\[0\] = inf"),
    (lambda s: {**s, "step_count": "x"}, r"the state's step_count must be an integer >= 1"),
    (lambda s: {**s, "schedulers": []}, r"the state holds 0 chained schedulers but this chain has 1"),
    (lambda s: {k: v for k, v in s.items() if k != "maxp"}, r"not a ChainedMaxPScheduler state"),
    (lambda s: {**s, "maxp": {**s["maxp"], "base_lr": -1}}, r"load_state_dict: base_lr = -1"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORRUPT_CHAIN_STATES)
def test_a_chained_scheduler_checkpoint_with_a_bad_entry_is_refused_and_nothing_is_restored(
    corrupt, message
) -> None:
    state = _trained_scheduler_states()
    _, optimizer, maxp, chained = _chained_first_release_run()
    before = ([g["lr"] for g in optimizer.param_groups], maxp.param.step_count, chained.factor)
    with pytest.raises(MaxPError, match=message):
        chained.load_state_dict(corrupt(state))
    assert ([g["lr"] for g in optimizer.param_groups], maxp.param.step_count, chained.factor) == before


def test_resume_is_bit_exact_while_a_chunk_is_measured_scaled_after_a_miss(monkeypatch) -> None:
    """Plain and scaled norms may differ in the last bit: a chunk measured scaled directly after a
    miss (step 8 here) is measured so after a resume too (steps 11 to 20), as in the uninterrupted
    run."""
    import maxp_torch.measurement as measurement

    real = measurement.plain_norms_of_l2

    def missing_now(*args, **kwargs):
        norms, held = real(*args, **kwargs)
        return norms, held & (not miss_now[0])

    miss_now = [False]
    monkeypatch.setattr(measurement, "plain_norms_of_l2", missing_now)
    x, y = data(seed=3)

    def make():
        torch.manual_seed(5)
        model = MLP(dropout=0.0)
        param = Parametrization(model, lr_prefactor=1e-2, warmup_steps=1, solve_interval=1)
        return model, param, torch.optim.AdamW(param.param_groups)

    def run(model, param, optimizer, steps, seed):
        torch.manual_seed(seed)
        for _ in range(steps):
            miss_now[0] = param.step_count == 8
            train(model, param, optimizer, x, y, 1)

    straight, resumed = straight_and_resumed(make, run, x)
    assert straight[1]._measurement.scaled_left() == resumed[1]._measurement.scaled_left() != {}
    assert_same_run(straight, resumed)
    bad = resumed[1].state_dict() | {"scaled_after_miss": [[["no such layer"], 3]]}
    with pytest.raises(MaxPError, match=r"scaled_after_miss holds .*no such layer"):
        resumed[1].load_state_dict(bad)
