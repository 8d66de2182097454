"""Parametrization under DistributedDataParallel: 2 gloo ranks agree with each other and one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rates(world: int, out_dir: Path) -> list[dict]:
    out_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-m", "tests.torch.ddp_run", str(world), str(out_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


def test_two_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    two = rates(2, tmp_path / "two")
    one = rates(1, tmp_path / "one")
    assert [r["rank"] for r in two] == [0, 1]
    assert two[0]["lr"] == two[1]["lr"]
    assert two[0]["solves"] == one[0]["solves"] == 2  # after steps 3 and 5
    assert two[0]["lr"] == pytest.approx(one[0]["lr"], rel=1e-9)
