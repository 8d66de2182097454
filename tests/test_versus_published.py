"""The side-by-side benchmark against the published maxP, driven on a stand-in checkout.

The stand-in is a folder whose ``maxp_new`` re-exports ``maxp_torch.published`` (the same API as
the published current release), so the machinery runs without the published code: both sides
then time the same library, and their figures must agree in kind.
"""

import math
import sys
from pathlib import Path

import pytest

from benchmarks import overhead, versus_published


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    package = tmp_path / "maxp_new"
    package.mkdir()
    (package / "__init__.py").write_text("from maxp_torch.published import *  # noqa: F403\n")
    yield tmp_path
    sys.modules.pop("maxp_new", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_a_checkout_without_the_published_api_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no published maxP with Parametrization"):
        versus_published.published_package(tmp_path)


def test_both_sides_are_timed_on_the_same_model_and_tabled(stand_in: Path) -> None:
    sides = versus_published.SIDES
    figures = {"mlp-4": {side: versus_published.step_costs(side, "mlp-4", 2, stand_in) for side in sides}}
    for side, numbers in figures["mlp-4"].items():
        assert set(numbers) == {"step_ms", "lp_ms", "forward_ms", "rest_ms"}, side
        assert numbers["step_ms"] > 0 and numbers["forward_ms"] > 0, side
        assert math.isclose(numbers["rest_ms"] + numbers["lp_ms"], numbers["step_ms"], rel_tol=0.5), side
    # maxp's own LP time is read from the step it took; the stand-in's through its resolve methods,
    # which maxp's step does not call.
    assert figures["mlp-4"]["maxp"]["lp_ms"] > 0
    lines = versus_published.table(figures).splitlines()
    assert lines[0].split()[:2] == ["model", "published"] and lines[2].split()[0] == "mlp-4"


def test_the_gpt_multiplies_one_hot_ids_by_its_tables_as_the_lookup_does() -> None:
    import torch

    import examples.torch_models
    import maxp_torch

    model, ids, loss, _ = versus_published.build("gpt-8", maxp_torch)
    assert examples.torch_models.ParametrizedModule is maxp_torch.ParametrizedModule  # put back
    tok, pos = model.tok.inner.weight, model.pos.inner.weight  # (d, vocab) and (d, ctx)
    positions = torch.arange(ids.shape[1])
    expected = tok.T[ids] + pos.T[positions]
    got = model.tok(torch.nn.functional.one_hot(ids, 256).float()) + model.pos(
        torch.nn.functional.one_hot(positions, 64).float()
    )
    scale = model.tok.scale
    torch.testing.assert_close(got, scale * expected if scale != 1.0 else expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(loss())


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_overhead_runs_the_published_configurations_beside_its_own(stand_in: Path, model: str) -> None:
    work = overhead.Workload(
        model=model, width=32, depth=3 if model == "mlp" else 1, batch=8, seq=8, sample=8
    )
    only = {"plain", "dynamic/1", "published dynamic/1"}
    steps, _ = overhead.torch_steps(work, "cpu", only, stand_in)
    assert set(steps) == only
    losses = {name: [step() for _ in range(3)] for name, step in steps.items()}
    assert all(math.isfinite(v) for values in losses.values() for v in values)
    if model == "mlp":  # the stand-in is maxp itself: its dynamic run trains exactly as maxp's own
        assert losses["published dynamic/1"] == losses["dynamic/1"]


def test_the_memory_columns_split_the_extra_into_code_and_the_rest() -> None:
    side = {"step_ms": 2.0, "lp_ms": 1.0, "rest_ms": 1.0, "forward_ms": 0.5}
    figures = {
        "mlp-4": {
            "published": {**side, "extra_mib": 4.0, "code_mib": 2.6},
            "maxp": {**side, "extra_mib": 7.4, "code_mib": 6.6},
        }
    }
    header, _, row = versus_published.table(figures).splitlines()
    assert "of it code MiB (pub / maxp)" in header
    assert row.split()[-6:] == ["+4", "/", "+7", "+3", "/", "+7"]
    # What the worker reads: resident file-backed pages, part of this process's resident set.
    assert 0 < versus_published.file_backed_mib() < overhead.peak_memory_mib("torch", "cpu")
