"""Parametrization on an FSDP2 (fully_shard) model: 2 gloo ranks agree with each other and one process."""

from pathlib import Path

import pytest

from tests.torch.fsdp_run import train
from tests.torch.ranks import run_ranks


def test_sharded_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    two = run_ranks("tests.torch.fsdp_run", 2, tmp_path / "two", timeout=120)
    one = train(0, 1)
    assert [r["sharded"] for r in two] == ["DTensor", "DTensor"] and one["sharded"] == "Parameter"
    assert two[0]["lr"] == two[1]["lr"]
    assert two[0]["solves"] == one["solves"] == 2  # after steps 3 and 5
    assert two[0]["lr"] == pytest.approx(one["lr"], rel=1e-6)
    for ours, single in zip(two[0]["alignment"], one["alignment"], strict=True):
        assert ours == pytest.approx(single, rel=1e-6)
    # The same initial draw and the same training: the full weights agree with one process.
    assert two[0]["weight_norms"] == pytest.approx(one["weight_norms"], rel=1e-9)
    # Ranks of 4 and 1 sequences: rank 0 shrinks to the one sequence its 8 rows come from, and
    # both run the same forward passes (a mismatch would leave one rank waiting on a gather).
    assert [r["gpt_sample"] for r in two] == [[1, 8], [1, 8]]
    assert two[0]["gpt_solves"] == two[1]["gpt_solves"] == 2
    assert two[0]["gpt_lr"] == two[1]["gpt_lr"]
    # Sharding a model after its Parametrization was built is refused by name on every rank.
    for rank in two:
        assert "no longer has" in rank["refused"] and "after fully_shard" in rank["refused"]
