"""The batched measurement in PyTorch: stacks of equally shaped layers, the shrunk sample, finiteness."""

import copy
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import maxp_torch.measurement as measurement
from examples.torch_models import GPT
from maxp_core import layer_alignment, stacking
from maxp_torch import Parametrization, ParametrizedModule

VOCAB, CTX = 50, 16


def trained_gpt(steps: int = 3, **kwargs) -> tuple[Parametrization, torch.Tensor, nn.Module]:
    """A GPT after a few AdamW steps; its Parametrization, batch and a copy of the initial model."""
    torch.manual_seed(0)
    model = GPT(d=32, blocks=2, vocab=VOCAB, ctx=CTX)
    ids = torch.randint(0, VOCAB, (8, CTX))
    param = Parametrization(model, lr_prefactor=0.02, sample_input=ids[:1], **kwargs)
    initial = copy.deepcopy(model)
    opt = torch.optim.AdamW(param.param_groups)
    param.capture_initial(ids)
    for _ in range(steps):
        opt.zero_grad()
        logits = model(ids)
        nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids.reshape(-1)).backward()
        opt.step()
    return param, ids, initial


def inputs_on(model: nn.Module, ids: torch.Tensor, name: str) -> torch.Tensor:
    """``name``'s input rows on ``ids``, by a forward hook of its own (eval mode, no grad)."""
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    model.eval()
    with torch.no_grad():
        model(ids)
    handle.remove()
    model.train()
    return seen[0].reshape(-1, seen[0].shape[-1])


def test_a_sequence_sample_shrinks_to_the_sequences_its_rows_come_from() -> None:
    param, ids, initial = trained_gpt(sample_size=40)
    assert param._sample.shape == (3, CTX)  # 40 token rows: three sequences of 16, not all eight
    measured, nonfinite = param._measure(ids)
    assert not nonfinite.any()
    # The definition on the full batch: each layer's first 40 input rows, now and at initialization.
    for name in ("blocks.0.q", "blocks.1.down", "head"):
        z0 = inputs_on(initial, ids, name)[:40].double().numpy()
        z = inputs_on(param.model, ids, name)[:40].double().numpy()
        w0, w = (m.get_submodule(name).inner.weight.detach().double().numpy() for m in (initial, param.model))
        expected = layer_alignment(z0, z, w0, w)
        np.testing.assert_allclose(measured[param.graph.index(name)], expected, atol=2e-5)  # float32


def test_rows_of_one_per_sample_keep_the_whole_sample() -> None:
    model = nn.Sequential(
        ParametrizedModule(nn.Linear(8, 32), width_dim=32, layer_type="embedding"),
        nn.ReLU(),
        ParametrizedModule(nn.Linear(32, 4), width_dim=32, layer_type="readout"),
    )
    param = Parametrization(model, sample_size=16)
    param.capture_initial(torch.randn(24, 8))
    assert param._sample.shape == (16, 8)


def test_chunked_stacks_measure_what_one_stack_does(monkeypatch: pytest.MonkeyPatch) -> None:
    param, ids, _ = trained_gpt()
    whole = param._measure(ids)[0]
    monkeypatch.setattr(stacking, "STACK_BYTES", 1)  # one layer per stack
    np.testing.assert_allclose(param._measure(ids)[0], whole, atol=1e-6)


def test_a_non_finite_weight_marks_its_layer_and_those_it_feeds() -> None:
    param, ids, _ = trained_gpt()
    with torch.no_grad():  # blocks.1.down shares a stack with blocks.0.down and feeds the head only
        param.model.get_submodule("blocks.1.down").inner.weight[3, 5] = float("inf")
    _, nonfinite = param._measure(ids)
    assert [param.graph.names[i] for i in np.flatnonzero(nonfinite)] == ["blocks.1.down", "head"]


def test_a_non_finite_weight_measured_on_its_own_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stacking, "CPU_SOLO_BYTES", 1)  # every layer measured alone, on views
    param, ids, _ = trained_gpt()
    with torch.no_grad():
        param.model.get_submodule("blocks.0.up").inner.weight[1, 2] = float("nan")
    _, nonfinite = param._measure(ids)
    assert "blocks.0.up" in [param.graph.names[i] for i in np.flatnonzero(nonfinite)]


def test_the_initial_weights_norms_are_taken_once_per_capture_or_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    param, ids, _ = trained_gpt()
    first = param._measure(ids)[0]
    taken = []
    real = measurement.weight_norms
    monkeypatch.setattr(measurement, "weight_norms", lambda w, xp: taken.append(1) or real(w, xp))
    np.testing.assert_array_equal(param._measure(ids)[0], first)
    assert not taken  # kept from the first measurement
    state = param.state_dict()
    state["w0"] = {name: 3.0 * w + 0.01 for name, w in state["w0"].items()}  # another run's initial weights
    param.load_state_dict(state)
    restored = param._measure(ids)[0]
    once = len(taken)
    assert 0 < once <= len(param._measured())  # once per stack of layers
    np.testing.assert_array_equal(param._measure(ids)[0], restored)
    assert len(taken) == once
    assert not np.allclose(restored, first)
    # The same numbers as when the norms are taken from the weights at every measurement.
    real_stacks = measurement.Measurement.initial_stacks

    def without_norms(self: Any, chunk: list[int], initial: Any) -> Any:
        z0, w0, _ = real_stacks(self, chunk, initial)
        return z0, w0.clone(), None  # the measurement then scales its own copy in place

    monkeypatch.setattr(measurement.Measurement, "initial_stacks", without_norms)
    np.testing.assert_allclose(param._measure(ids)[0], restored, atol=1e-6)


def test_recorded_inputs_hold_only_the_rows_measured() -> None:
    param, _, _ = trained_gpt(sample_size=8)  # 8 of each sequence's 16 token rows
    inputs = param._inputs(param.model, param._sample)
    for k in param._measured():
        rows = inputs[k]
        assert rows.shape[0] == 8, param.names[k]
        # A view of the whole input would keep all 16 rows (and the tensor they belong to) alive.
        assert rows.untyped_storage().nbytes() == rows.numel() * rows.element_size(), param.names[k]


def test_importing_leaves_the_dtensor_machinery_unloaded() -> None:
    program = "import sys, maxp_torch; print('torch.distributed.tensor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


def test_measurement_mode_sets_eval_and_restores_each_flag_calling_overridden_train() -> None:
    class FrozenNorm(nn.Module):
        """Keeps its batch norm in eval mode whatever it is told, as fine-tuning code does."""

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm1d(4)
            self.calls: list[bool] = []

        def train(self, mode: bool = True) -> "FrozenNorm":
            self.calls.append(mode)
            super().train(mode)
            self.norm.eval()
            return self

    model = nn.Sequential(nn.Linear(4, 4), FrozenNorm(), nn.Dropout(0.5))
    model.train()
    model[2].eval()  # one module already in eval mode
    before = [m.training for m in model.modules()]
    model[1].calls.clear()
    with measurement.measurement_mode(model, []):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    assert model[1].calls == [False, True]  # its own train() ran, both ways


def test_the_walk_of_measurement_mode_finds_each_module_once_parents_first() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), shared, GPT(d=8, blocks=2, vocab=5, ctx=4))
    walked = measurement._modules_of(model)
    assert len(walked) == len({id(m) for m in walked}) == len(list(model.modules()))
    assert {id(m) for m in walked} == {id(m) for m in model.modules()}
    position = {id(m): i for i, m in enumerate(walked)}
    for parent in model.modules():
        children = [child for child in parent.children() if child is not shared]
        assert all(position[id(parent)] < position[id(child)] for child in children)


def held_bytes(measurement: measurement.Measurement) -> tuple[int, int]:
    """``(bytes of the distinct memory holding the initial inputs and weights (their stacks
    included), bytes of the inputs and weights themselves)``."""
    kept = [*measurement.z0.values(), *measurement.w0.values()]
    kept += [t for entry in measurement._initial_stacks.values() for t in entry[:2] if t is not None]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    own = sum(t.numel() * t.element_size() for t in [*measurement.z0.values(), *measurement.w0.values()])
    return sum(storages.values()), own


def test_initial_inputs_and_weights_are_held_once_and_saved_as_their_own() -> None:
    param, ids, _ = trained_gpt()
    param._measure(ids)
    held, own = held_bytes(param._measurement)
    assert held == own  # the stacks are the layers' copies, not a second one
    assert any(len(chunk) > 1 for chunk in param._measurement._initial_stacks)
    state = param.state_dict()
    for name, tensor in [*state["z0"].items(), *state["w0"].items()]:
        # Saved one by one (or by safetensors), each entry holds only itself.
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
    # A state of such copies restores to the same measurement.
    again = param._measure(ids)[0]
    param.load_state_dict(state)
    np.testing.assert_array_equal(param._measure(ids)[0], again)
    held, own = held_bytes(param._measurement)
    assert held == own


def count_scaled_stacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each stack measured with powers of two appends its number of layers."""
    scaled: list[int] = []
    original = measurement.stack_norms

    def counting(z0: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        scaled.append(z0.shape[0])
        return original(z0, *args, **kwargs)

    monkeypatch.setattr(measurement, "stack_norms", counting)
    return scaled


def test_float32_stacks_are_measured_once_without_powers_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    param, ids, _ = trained_gpt()
    scaled = count_scaled_stacks(monkeypatch)
    plain, plain_nonfinite = param._measure(ids)
    assert scaled == []
    monkeypatch.setattr(measurement, "plain_suits", lambda finfo: False)
    expected, expected_nonfinite = param._measure(ids)
    assert len(scaled) > 1
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-6)
    assert not plain_nonfinite.any() and not expected_nonfinite.any()


def test_a_stack_whose_plain_norms_do_not_hold_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer that did not change since the capture (frozen): its weight change is zero, which a
    plain RMS cannot tell from an underflow; its stack alone is measured again, and every layer
    comes out as measured with powers of two throughout (its alpha and u missing)."""
    param, ids, initial = trained_gpt()
    with torch.no_grad():
        param.model.get_submodule("blocks.1.down").inner.weight.copy_(
            initial.get_submodule("blocks.1.down").inner.weight
        )
    scaled = count_scaled_stacks(monkeypatch)
    got, _ = param._measure(ids)
    assert scaled == [2]  # the two blocks' down projections, stacked
    monkeypatch.setattr(measurement, "plain_suits", lambda finfo: False)
    expected, _ = param._measure(ids)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    row = param.graph.names.index("blocks.1.down")
    assert np.isnan(got[row, 0]) and np.isnan(got[row, 2])


def test_a_layer_s_weight_is_read_as_its_module_reads_it() -> None:
    """Through a parametrization (the weight a property computed from others) and a wrapper whose
    class defines ``weight``, the measurement reads what ``module.weight`` gives, not a raw
    parameter."""
    from torch.nn.utils import parametrize

    from maxp_torch import ScaledLinear

    class Doubled(nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return 2 * weight

    torch.manual_seed(0)
    parametrized = nn.Linear(8, 8)
    parametrize.register_parametrization(parametrized, "weight", Doubled())
    layers = [
        ParametrizedModule(nn.Linear(4, 8), width_dim=8, layer_type="embedding"),
        ParametrizedModule(parametrized, width_dim=8, layer_type="hidden"),
        ParametrizedModule(ScaledLinear(nn.Linear(8, 8), 0.5), width_dim=8, layer_type="hidden"),
        ParametrizedModule(nn.Linear(8, 8), width_dim=8, layer_type="hidden"),
        ParametrizedModule(nn.Linear(8, 2), width_dim=8, layer_type="readout"),
    ]
    param = Parametrization(nn.Sequential(*layers), lr_prefactor=0.1, sample_input=torch.randn(2, 4))
    m = param._measurement
    for k, module in enumerate(m.layers.modules):
        assert torch.equal(m.live_weight(k), module.weight)
    assert torch.equal(m.live_weight(1), 2 * parametrized.parametrizations.weight.original)


def test_a_chunk_whose_plain_norms_missed_is_measured_scaled_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frozen layer's chunk, once its plain norms did not hold, is measured scaled directly for
    the next SCALED_AFTER_MISS measurements (not twice each time), then tried plain again; the
    initial stacks are taken once per chunk and measurement, whichever way it is measured (a
    second taking would gather sharded weights again on some ranks only)."""
    monkeypatch.setattr(measurement, "SCALED_AFTER_MISS", 2)
    param, ids, initial = trained_gpt()
    with torch.no_grad():
        frozen = param.model.get_submodule("blocks.1.down").inner.weight
        frozen.copy_(initial.get_submodule("blocks.1.down").inner.weight)
    scaled = count_scaled_stacks(monkeypatch)
    plain: list[int] = []
    real_plain = measurement.plain_stack_l2
    monkeypatch.setattr(
        measurement,
        "plain_stack_l2",
        lambda z0, *a, **k: plain.append(z0.shape[0]) or real_plain(z0, *a, **k),
    )
    taken: list[tuple[int, ...]] = []
    real_stacks = measurement.Measurement.initial_stacks
    monkeypatch.setattr(
        measurement.Measurement,
        "initial_stacks",
        lambda self, chunk, initial: taken.append(tuple(chunk)) or real_stacks(self, chunk, initial),
    )
    counts = []
    for _ in range(4):
        scaled.clear(), plain.clear(), taken.clear()
        param._measure(ids)
        counts.append((plain.count(2), scaled.count(2)))
        assert len(taken) == len(set(taken))
    # plain then scaled; scaled directly twice; plain again, missed, scaled
    assert counts == [(1, 1), (0, 1), (0, 1), (1, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_plain_measurement_equals_the_scaled_one_in_other_types(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(6):
        role = "embedding" if i == 0 else "readout" if i == 5 else "hidden"
        layers += [ParametrizedModule(nn.Linear(32, 32), width_dim=32, layer_type=role), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
    x = torch.randn(16, 32, dtype=dtype)
    param = Parametrization(model, lr_prefactor=0.02)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).float().pow(2).mean().backward()
        optimizer.step()
    scaled = count_scaled_stacks(monkeypatch)
    plain, _ = param._measure(x)
    assert scaled == []
    monkeypatch.setattr(measurement, "plain_suits", lambda finfo: False)
    expected, _ = param._measure(x)
    assert np.isfinite(expected[1:]).all()
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-9 if dtype == torch.float64 else 1e-3)
