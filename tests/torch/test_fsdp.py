"""Parametrization on an FSDP2 (fully_shard) model: 2 gloo ranks agree with each other and one process."""

from pathlib import Path

import pytest

from tests.torch.ranks import run_ranks


def results(world: int, out_dir: Path, order: str) -> list[dict]:
    return run_ranks("tests.torch.fsdp_run", world, out_dir, order)


def test_sharded_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    two = results(2, tmp_path / "two", "shard-first")
    one = results(1, tmp_path / "one", "shard-first")[0]
    assert [r["sharded"] for r in two] == ["DTensor", "DTensor"] and one["sharded"] == "Parameter"
    assert two[0]["lr"] == two[1]["lr"]
    assert two[0]["solves"] == one["solves"] == 2  # after steps 3 and 5
    assert two[0]["lr"] == pytest.approx(one["lr"], rel=1e-6)
    for ours, single in zip(two[0]["alignment"], one["alignment"], strict=True):
        assert ours == pytest.approx(single, rel=1e-6)
    # The same initial draw and the same training: the full weights agree with one process.
    assert two[0]["weight_norms"] == pytest.approx(one["weight_norms"], rel=1e-9)


def test_sharding_after_the_parametrization_is_refused_by_name(tmp_path: Path) -> None:
    for rank in results(2, tmp_path / "two", "parametrize-first"):
        assert "no longer has" in rank["error"] and "after fully_shard" in rank["error"]
