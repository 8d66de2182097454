"""Measure-only runs and alignment tables in PyTorch: rates untouched, numbers a dynamic run sees."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import maxp_core as mc
from maxp_core.metrics import read_metrics
from maxp_core.tables import AlignmentTable, measure_table
from maxp_torch import Parametrization, ParametrizedModule


def _mlp(width: int) -> nn.Sequential:
    roles = ["embedding", "hidden", "hidden", "readout"]
    sizes = [8, width, width, width, 4]
    layers: list[nn.Module] = []
    for k, role in enumerate(roles):
        layers.append(ParametrizedModule(nn.Linear(sizes[k], sizes[k + 1]), width_dim=width, layer_type=role))
        if k < len(roles) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _train(model: nn.Module, param: Parametrization, steps: int, log=None, twin=None) -> list[list[float]]:
    """Train with AdamW; return the rates after every step. ``twin`` (a dynamic Parametrization
    of a copy) re-measures the same weights each step."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=generator)
    y = torch.randint(0, 4, (64,), generator=generator)
    optimizer = torch.optim.AdamW(param.param_groups)
    param.capture_initial(x[:16])
    if twin is not None:
        twin.capture_initial(x[:16])
    rates = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        param.step(x, optimizer)
        rates.append([group["lr"] for group in optimizer.param_groups])
        if twin is not None:
            twin.model.load_state_dict(model.state_dict())
            twin.step(x)
            np.testing.assert_array_equal(param.alignment, twin.alignment)
        if log is not None:
            log.write(param.metrics(), loss=loss.item())
    return rates


def test_measure_only_keeps_the_rates_and_measures_what_a_dynamic_run_sees() -> None:
    torch.manual_seed(0)
    model = _mlp(32)
    settings = {"lr_prefactor": 0.05, "warmup_steps": 1, "solve_interval": 2, "seed": 0}
    passive = Parametrization(model, measure_only=True, **settings)
    dynamic = Parametrization(copy.deepcopy(model), **settings)
    initial = [group["lr"] for group in passive.param_groups]
    rates = _train(model, passive, 8, twin=dynamic)
    assert all(r == initial for r in rates)
    assert passive.solves == dynamic.solves == 3  # after steps 3, 5, 7
    assert not np.allclose(passive.alignment[1:], mc.alignment_preset("full"))  # it measured
    assert dynamic.get_last_lr() != initial[: len(dynamic.get_last_lr())]  # the dynamic run moved


def test_a_table_measured_at_one_width_gives_the_lp_c_at_another(tmp_path) -> None:
    torch.manual_seed(0)
    model = _mlp(32)
    param = Parametrization(model, alignment="no", measure_only=True, warmup_steps=1, solve_interval=1)
    with param.metrics_log(tmp_path / "run.jsonl") as log:
        _train(model, param, 12, log=log)
    measure_table(read_metrics(tmp_path / "run.jsonl")).write(tmp_path / "table.json")
    table = AlignmentTable.read(tmp_path / "table.json")
    assert set(table.alignments) == {"hidden", "readout"} and table.layers["hidden"] == 2
    wide = Parametrization(_mlp(128), alignment="no", alignment_overrides=table)
    hidden, readout = table.alignments["hidden"], table.alignments["readout"]
    graph = mc.chain(4, alignment=[mc.alignment_preset("no"), hidden, hidden, readout])
    expected = mc.StabilityLP(graph, "adam", reference_alignment=mc.alignment_preset("no")).solve().c
    np.testing.assert_allclose(wide.c, list(expected.values()), atol=1e-9)
    assert wide.get_alignment()[0][1:] == [hidden[0], hidden[0], readout[0]]


def test_a_table_without_an_entry_for_a_layer_says_which() -> None:
    with pytest.warns(mc.MaxPWarning, match=r"no entry for layers \['6 \(readout\)'\]"):
        Parametrization(_mlp(16), alignment_overrides=AlignmentTable({"hidden": (0.7, 0.5, 0.7)}))


def test_the_cli_prints_the_c_a_table_trains_with(tmp_path, capsys) -> None:
    """``python -m maxp_core table --alignments`` and Parametrization agree where the LP has a tie."""
    from maxp_core.cli import main

    table = AlignmentTable({"hidden": (0.8, 0.515, 0.835), "readout": (0.595, 0.542, 0.706)})
    table.write(tmp_path / "t.json")
    assert main(["table", "--alignments", str(tmp_path / "t.json"), "--layers", "4"]) == 0
    printed = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()[3:]]
    trained = Parametrization(_mlp(64), alignment_overrides=table).c
    np.testing.assert_allclose(printed, trained, atol=5e-5)
    later = Parametrization(_mlp(64), alignment_overrides=table, tie_rule="later").c
    assert np.abs(later - trained).max() > 1e-3  # the tie is real: the rule decides
