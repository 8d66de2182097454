"""Parametrization under DistributedDataParallel: 2 gloo ranks agree with each other and one process."""

from pathlib import Path

import pytest

from tests.torch.ranks import run_ranks


def rates(world: int, out_dir: Path) -> list[dict]:
    return run_ranks("tests.torch.ddp_run", world, out_dir)


def test_two_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    two = rates(2, tmp_path / "two")
    one = rates(1, tmp_path / "one")
    assert [r["rank"] for r in two] == [0, 1]
    assert two[0]["lr"] == two[1]["lr"]
    assert two[0]["solves"] == one[0]["solves"] == 2  # after steps 3 and 5
    assert two[0]["lr"] == pytest.approx(one[0]["lr"], rel=1e-9)
    # Seeded apart, the ranks still start from rank 0's draw (the one process seeds as rank 0).
    assert two[0]["initial"] == two[1]["initial"] == one[0]["initial"]
